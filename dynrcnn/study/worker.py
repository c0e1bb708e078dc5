"""One study job in its own process: `python -m dynrcnn.study.worker RUN_DIR`.

Reads RUN_DIR/job.json (a TrainConfig written by the runner), trains with one thread (or
DYNRCNN_STUDY_THREADS), resuming from RUN_DIR's last checkpoint when there is one, and makes
sure the final evaluation exists: a run killed between its last checkpoint and its metrics
is evaluated from model_final.pth instead of being trained again.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Optional, Sequence

from dynrcnn.study.layout import JOB_FILE, final_metrics_path


def run_job(run_dir: str) -> int:
    import torch

    from dynrcnn.engine import TrainConfig, Trainer
    from dynrcnn.engine.config import load_config

    torch.set_num_threads(int(os.environ.get("DYNRCNN_STUDY_THREADS", "1")))
    # resume: a run directory with checkpoints continues from the last one (exactly)
    config = dataclasses.replace(load_config(TrainConfig, os.path.join(run_dir, JOB_FILE)),
                                 resume=True)
    trainer = Trainer(config)
    if trainer.resumed_from:  # says in train.log where this invocation started
        print(f"study worker: resumed from {trainer.resumed_from} at iteration "
              f"{trainer.start_iter}", flush=True)
    try:
        trainer.train()
        if not os.path.isfile(final_metrics_path(run_dir, config.iterations)):
            trainer.evaluate(config.iterations)
    finally:
        trainer.close()
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1 or not os.path.isfile(os.path.join(args[0], JOB_FILE)):
        print(f"usage: python -m dynrcnn.study.worker RUN_DIR (with RUN_DIR/{JOB_FILE})",
              file=sys.stderr)
        return 2
    return run_job(args[0])


if __name__ == "__main__":
    sys.exit(main())
