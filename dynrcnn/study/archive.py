"""The archive of a study: the small files of every finished run, committed beside its
report so that the report can be rebuilt and the study continued without the checkpoints."""

from __future__ import annotations

import glob
import os
import shutil
from typing import Any, List, Sequence

from dynrcnn.study.layout import RUN_FILE

# What a finished run keeps in the archive: enough to rebuild the report and to count as
# finished when copied back into a study directory (no checkpoints: 6 MB each).
ARCHIVED_FILES = ("job.json", "config.json", "log.jsonl", "eval.jsonl", "train.log", RUN_FILE)
ARCHIVED_STUDY_FILES = ("study.json", "study.log")


def archive_runs(jobs: Sequence[Any], out_dir: str, dest: str) -> List[str]:
    """Copy the small files of every finished job (runner.Job) of the study in `out_dir`
    to `dest`, in the study's own layout (<arm>/seed<s>/...), so that the committed results
    keep their raw data: copying `dest` back into an --out directory restores the finished
    runs (`cp -r dest/. runs/study/`) and the report can be rebuilt without retraining.
    Returns the run directories archived."""
    done = []
    for job in jobs:
        if not job.finished():
            continue
        rel = os.path.relpath(job.run_dir, out_dir)
        if rel.startswith(os.pardir):
            raise ValueError(f"run {job.run_dir} is not inside the study directory {out_dir}")
        target = os.path.join(dest, rel)
        os.makedirs(target, exist_ok=True)
        for name in ARCHIVED_FILES:
            if os.path.isfile(os.path.join(job.run_dir, name)):
                shutil.copy2(os.path.join(job.run_dir, name), os.path.join(target, name))
        # the final evaluation and those at other test settings / on the test split
        for metrics in glob.glob(os.path.join(job.run_dir, "eval_*", "metrics.json")):
            metrics_copy = os.path.join(target, os.path.relpath(metrics, job.run_dir))
            os.makedirs(os.path.dirname(metrics_copy), exist_ok=True)
            shutil.copy2(metrics, metrics_copy)
        done.append(rel)
    for name in ARCHIVED_STUDY_FILES:
        if done and os.path.isfile(os.path.join(out_dir, name)):
            shutil.copy2(os.path.join(out_dir, name), os.path.join(dest, name))
    return done
