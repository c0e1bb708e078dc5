"""Runs of a study on the user's data (`dynrcnn study`): each run's TrainConfig from the
user's common flags and the arm, and the files that tell the worker where to evaluate it.
The runner schedules them like any other run (dynrcnn.study.runner)."""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any, Dict

from dynrcnn.engine.checkpoint import atomic_write_text
from dynrcnn.engine.config import TrainConfig, UsageError, config_from_dict, save_config
from dynrcnn.study.arms import Arm
from dynrcnn.study.layout import JOB_FILE, RUN_FILE
from dynrcnn.study.settings import OWN

if TYPE_CHECKING:
    from dynrcnn.study.runner import Job, StudySpec


def user_config(spec: StudySpec, arm: Arm, seed: int, run_dir: str,
                overrides: Dict[str, Any]) -> TrainConfig:
    """The TrainConfig of one run of a study on the user's data: the user's common fields
    (spec.base) with the arm's detector, RPN and DLA / DSL settings and the run's seed.
    The protocol's RPN and KI / Kbeta lie under the user's fields, the arm's own fields
    over them; a user field the arm fixes is refused, never silently replaced."""
    base = dict(spec.base or {})
    fields = arm.dynamic_config(base.get("dynamic", {}).get("interval", spec.interval),
                                spec.protocol)
    user_dynamic = dict(base.get("dynamic", {}))
    clash = sorted(set(user_dynamic) & set(arm.dynamic))
    if clash:
        flags = ", ".join("--dynamic-" + k.replace("_", "-") for k in clash)
        raise UsageError(f"{flags}: arm {arm.name} sets it itself ({arm.description}); "
                         "leave it out or choose other --arms")
    dynamic = None if fields is None else {**fields, **user_dynamic, **arm.dynamic}
    protocol_model = arm.model_kwargs(spec.protocol)
    model = {**protocol_model, **base.get("model_kwargs", {}), **arm.model}
    iterations = max(1, round(int(base.get("iterations", TrainConfig.iterations))
                              * arm.schedule))
    values = {**base, "arch": arm.arch, "out_dir": run_dir, "seed": seed,
              "iterations": iterations, "model_kwargs": model, "resume": True,
              "overwrite": False, "progress": False, "plot": spec.plot,
              "eval_period": base.get("eval_period") or iterations,
              "init_weights": spec.init_weights_of(seed), **overrides}
    if dynamic is not None:
        values["dynamic"] = dynamic
    else:
        values.pop("dynamic", None)
    return config_from_dict(TrainConfig, values)


def run_file(spec: StudySpec, config: TrainConfig) -> Dict[str, Any]:
    """The study_run.json of a run on the user's data: its held-out splits (val, and test
    when given) and the test settings it is evaluated at (its own RPN, or with
    --best-vs-best every candidate setting)."""
    paths = config.data_paths()
    splits = {"val": [paths["val_images"], paths["val_ann"]]}
    if spec.test_ann:
        splits["test"] = [spec.test_images, spec.test_ann]
    return {"splits": splits, "settings": list(spec.test_settings or [OWN])}


def write_run_files(job: Job, spec: StudySpec) -> None:
    """job.json (and study_run.json for the user's data) into the job's run directory."""
    os.makedirs(job.run_dir, exist_ok=True)
    save_config(job.config, os.path.join(job.run_dir, JOB_FILE))
    if spec.base is not None:
        atomic_write_text(json.dumps(run_file(spec, job.config), indent=1),
                          os.path.join(job.run_dir, RUN_FILE))
