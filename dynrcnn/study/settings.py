"""Test-time RPN settings and the evaluations a study run gets beyond its own (issue 18).

A detector is trained in one proposal setting (the study's protocol) but a user may run it
in another: the baseline trained with 1000 proposals after NMS 0.85 may do better at test
time with NMS 0.7. The user's comparison (each detector at its best setting) therefore
chooses among (training protocol, test setting) pairs, on the val split, and reports the
choice on the held-out test split. So every finished run is evaluated at each setting of
`STUDY_SETTINGS` on each held-out split its data set has; those evaluations are cheap
(~1 min each with one thread) next to training (15-45 min).

Layout in a run directory: `eval_<split>_<setting>/metrics.json`; the trainer's own final
evaluation (`eval_<iterations>/metrics.json`, val split, the run's own setting) stands for
(val, its setting) and is not repeated. A run of a study on the user's data carries its
held-out splits and test settings in `study_run.json` (layout.RUN_FILE; the setting "own":
the run's own RPN); runs without it use make_synthetic_coco's layout and STUDY_SETTINGS.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from dynrcnn.study.layout import RUN_FILE, final_metrics_path

# The test-time RPN of each setting: proposals kept per image after NMS, and the NMS IoU.
TEST_SETTINGS: Dict[str, Dict[str, Any]] = {
    "300_nms070": {"rpn_pre_nms_top_n_test": 300, "rpn_post_nms_top_n_test": 300,
                   "rpn_nms_thresh": 0.7},
    "1000_nms085": {"rpn_pre_nms_top_n_test": 1000, "rpn_post_nms_top_n_test": 1000,
                    "rpn_nms_thresh": 0.85},
    "1000_nms070": {"rpn_pre_nms_top_n_test": 1000, "rpn_post_nms_top_n_test": 1000,
                    "rpn_nms_thresh": 0.7},
}
OWN = "own"  # the run's own RPN setting, whatever it is (a study on the user's data)
SETTING_TEXT = {"300_nms070": "300 @ NMS 0.7", "1000_nms085": "1000 @ NMS 0.85",
                "1000_nms070": "1000 @ NMS 0.7", OWN: "its own RPN setting"}
# Evaluated for every run of a study: the two protocols' own settings (cpu, paper).
STUDY_SETTINGS: Tuple[str, ...] = ("300_nms070", "1000_nms085")
HELD_OUT_SPLITS: Tuple[str, ...] = ("val", "test")
# `dynrcnn study --best-vs-best`: every run (trained in either) is tested in both
BEST_VS_BEST_SETTINGS: Tuple[str, ...] = ("1000_nms085", "1000_nms070")


def own_setting(model_kwargs: Mapping[str, Any]) -> Optional[str]:
    """The named setting a run was trained (and evaluated by the trainer) in, from its
    detector kwargs; None if it is none of TEST_SETTINGS."""
    for name, values in TEST_SETTINGS.items():
        if all(model_kwargs.get(k) == v for k, v in values.items()):
            return name
    return None


def split_files(data_dir: str, split: str) -> Tuple[str, str]:
    """(images folder, annotation file) of a split in make_synthetic_coco's layout."""
    return (os.path.join(data_dir, split),
            os.path.join(data_dir, "annotations", f"instances_{split}.json"))


def run_plan(run_dir: Optional[str]) -> Optional[Dict[str, Any]]:
    """The run's study_run.json ({"splits": {split: [images, ann]}, "settings": [...]}), or
    None for a run of the synthetic studies."""
    path = os.path.join(run_dir, RUN_FILE) if run_dir else None
    if not path or not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def held_out_splits(config: Any, run_dir: Optional[str] = None
                    ) -> Dict[str, Tuple[str, str]]:
    """{split: (images folder, annotation file)} a run is evaluated on: its study_run.json's,
    else every split of make_synthetic_coco's layout under config.data_dir that exists."""
    plan = run_plan(run_dir)
    if plan is not None:
        return {split: (paths[0], paths[1]) for split, paths in plan["splits"].items()}
    if config.data_dir is None:  # explicit paths, before the runner wrote study_run.json
        return {"val": (config.val_images, config.val_ann)}
    return {split: split_files(config.data_dir, split) for split in HELD_OUT_SPLITS
            if os.path.isfile(split_files(config.data_dir, split)[1])}


def metrics_path(run_dir: str, config: Any, split: str, setting: str) -> str:
    """Where the metrics of a run (config: its TrainConfig) on `split` at `setting` are.

    A run's own setting has two names, OWN and its TEST_SETTINGS name: a study on the
    user's data evaluates at OWN, the same study with --best-vs-best at the names. The
    evaluation is the same, so it is done once and found under either name (a study that
    adds --best-vs-best later reuses its test evaluations)."""
    own = own_setting(config.model_kwargs)
    if setting == OWN or (own is not None and setting == own):
        if split == "val":
            return final_metrics_path(run_dir, config.iterations)
        other = own if setting == OWN else OWN
        path, alias = (_eval_path(run_dir, split, name) for name in (setting, other))
        if other is not None and os.path.isfile(alias) and not os.path.isfile(path):
            return alias
    return _eval_path(run_dir, split, setting)


def _eval_path(run_dir: str, split: str, setting: Optional[str]) -> str:
    return os.path.join(run_dir, f"eval_{split}_{setting}", "metrics.json")


def planned_evals(config: Any, settings: Optional[Sequence[str]] = None,
                  run_dir: Optional[str] = None) -> List[Tuple[str, str]]:
    """(split, setting) pairs a run of `config` gets: every held-out split, at every setting
    (`settings`, else the run's study_run.json's, else STUDY_SETTINGS)."""
    if settings is None:
        plan = run_plan(run_dir)
        settings = plan["settings"] if plan is not None else STUDY_SETTINGS
    return [(split, setting) for split in held_out_splits(config, run_dir)
            for setting in settings]


def pending_evals(run_dir: str, config: Any, settings: Optional[Sequence[str]] = None
                  ) -> List[Tuple[str, str]]:
    """The planned evaluations whose metrics do not exist yet (the trainer's own final
    evaluation included)."""
    return [(split, setting) for split, setting in planned_evals(config, settings, run_dir)
            if not os.path.isfile(metrics_path(run_dir, config, split, setting))]


def evaluate_setting(run_dir: str, config: Any, split: str, setting: str,
                     weights: Optional[str] = None) -> Dict[str, Dict[str, float]]:
    """Evaluate the run's final model on `split` at `setting`; writes metrics_path(...)."""
    from dynrcnn.engine import EvalConfig, run_evaluation

    if setting not in TEST_SETTINGS and setting != OWN:
        raise ValueError(f"unknown test setting {setting!r}; expected one of "
                         f"{', '.join(TEST_SETTINGS)} or {OWN}")
    images, ann = held_out_splits(config, run_dir)[split]
    out = os.path.dirname(metrics_path(run_dir, config, split, setting))
    # the synthetic studies evaluate on the CPU as they trained; a user's run where it trained
    device = "cpu" if run_plan(run_dir) is None else config.device
    return run_evaluation(EvalConfig(
        weights=weights or os.path.join(run_dir, "model_final.pth"), val_images=images,
        val_ann=ann, model_kwargs=dict(TEST_SETTINGS.get(setting, {})), out_dir=out,
        batch_size=2, num_workers=0, device=device, progress=False))


def read_percent(path: str) -> Optional[Dict[str, float]]:
    """The bbox metrics of a metrics.json in percent (SEGM_COLUMNS added when present)."""
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        data = json.load(f)
    bbox = data.get("bbox", data)
    out = {k: 100.0 * float(v) for k, v in bbox.items() if isinstance(v, (int, float))}
    out.update({k: 100.0 * v for k, v in _segm_columns(data).items()})
    return out


def _segm_columns(data: Mapping[str, object]) -> Dict[str, float]:
    """The SEGM_COLUMNS of a metrics.json's contents as fractions (as COCOeval gives them;
    empty without segm metrics)."""
    segm = data.get("segm")
    if not isinstance(segm, Mapping):
        return {}
    return {f"segm {k}": float(segm[k]) for k in ("AP", "AP50", "AP75")
            if isinstance(segm.get(k), (int, float))}
