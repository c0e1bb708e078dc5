"""Where a study run keeps its files (shared by the runner, its worker and the report)."""

from __future__ import annotations

import os

JOB_FILE = "job.json"  # the run's TrainConfig, written by the runner, read by the worker
# held-out splits and test settings of a run on the user's data (dynrcnn.study.settings)
RUN_FILE = "study_run.json"


def final_metrics_path(run_dir: str, iterations: int) -> str:
    """Where the trainer writes the metrics of a run's final evaluation: a run is finished
    when this file exists."""
    return os.path.join(run_dir, f"eval_{iterations:07d}", "metrics.json")
