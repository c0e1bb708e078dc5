"""One study job in its own process: `python -m dynrcnn.study.worker RUN_DIR`.

Reads RUN_DIR/job.json (a TrainConfig written by the runner), trains with one thread (or
DYNRCNN_STUDY_THREADS), resuming from RUN_DIR's last checkpoint when there is one, and makes
sure the final evaluation exists: a run killed between its last checkpoint and its metrics
is evaluated from model_final.pth instead of being trained again. Then the run's model is
evaluated on each held-out split at each test setting of dynrcnn.study.settings (the
best-against-best comparison's data); a run whose metrics were kept but whose checkpoints
were not (an archived run copied back) is trained again for them: training is
deterministic, and its new val metrics must equal the archived ones.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Optional, Sequence

from dynrcnn.study.layout import JOB_FILE, final_metrics_path
from dynrcnn.study.settings import evaluate_setting, pending_evals


def run_job(run_dir: str) -> int:
    import torch

    from dynrcnn.engine import TrainConfig, Trainer
    from dynrcnn.engine.config import load_config

    torch.set_num_threads(int(os.environ.get("DYNRCNN_STUDY_THREADS", "1")))
    # resume: a run directory with checkpoints continues from the last one (exactly)
    config = dataclasses.replace(load_config(TrainConfig, os.path.join(run_dir, JOB_FILE)),
                                 resume=True)
    final = final_metrics_path(run_dir, config.iterations)
    model = os.path.join(run_dir, "model_final.pth")
    if os.path.isfile(final) and (os.path.isfile(model) or not pending_evals(run_dir, config)):
        evaluate_pending(run_dir, config)
        return 0
    archived = _read(final)  # metrics of an archived run, which is trained again
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
    if archived is not None and _read(final) != archived:
        print(f"study worker: WARNING the retrained run's val metrics differ from the "
              f"archived ones ({final}): training is not reproducible here", flush=True)
    evaluate_pending(run_dir, config)
    return 0


def evaluate_pending(run_dir: str, config: object) -> None:
    for split, setting in pending_evals(run_dir, config):
        metrics = evaluate_setting(run_dir, config, split, setting)
        print(f"study worker: {split} at {setting}: AP {100 * metrics['bbox']['AP']:.1f}",
              flush=True)


def _read(path: str) -> Optional[str]:
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return f.read()


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1 or not os.path.isfile(os.path.join(args[0], JOB_FILE)):
        print(f"usage: python -m dynrcnn.study.worker RUN_DIR (with RUN_DIR/{JOB_FILE})",
              file=sys.stderr)
        return 2
    return run_job(args[0])


if __name__ == "__main__":
    sys.exit(main())
