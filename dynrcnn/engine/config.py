"""Run configurations (dataclasses) and their JSON form; the CLI's argparse bridge is
dynrcnn.engine.config_args.

Learning rate and linear scaling: `lr` is the learning rate for a TOTAL batch of
`lr_reference_batch` images (0.02 for 16 images, the paper's 1x setting). With
`scale_lr=True` the trainer uses lr * (batch_size * world_size) / lr_reference_batch
(Goyal et al.'s linear scaling rule); with `scale_lr=False` it uses `lr` as given.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple, Type, TypeVar

from dynrcnn.dynamic import DynamicConfig
from dynrcnn.engine.checkpoint import atomic_write_text
from dynrcnn.engine.errors import UsageError

T = TypeVar("T")


def flag_name(field_name: str) -> str:
    """The command-line flag of a config field: iterations -> --iterations,
    dynamic.k_iou (or dynamic__k_iou) -> --dynamic-k-iou."""
    return "--" + field_name.replace(".", "-").replace("__", "-").replace("_", "-")

# The paper's 1x schedule (mmdetection's 12 epochs): x0.1 after 8/12 and 11/12 of the run.
DEFAULT_STEPS: Tuple[float, ...] = (8 / 12, 11 / 12)


@dataclass
class TrainConfig:
    """Everything a training run needs; saved as config.json in the run directory.

    Data: `data_dir` in make_synthetic_coco's layout ({train,val}/ images and
    annotations/instances_{train,val}.json) fills any of train_images/train_ann/val_images/
    val_ann left empty. `num_classes` (background included) defaults to the dataset's.
    Schedule: linear warmup from warmup_factor * lr over warmup_iters, then x`gamma` at
    each fraction of `iterations` in `steps`. `batch_size` is per process.
    Run directory: a run refuses an out_dir that already holds files unless `resume`
    (continue from its last checkpoint) or `overwrite` (delete the previous run's files);
    these two describe one invocation and are never saved in config.json. Only the last
    `keep_checkpoints` periodic checkpoints are kept (0: all); model_final.pth always is.
    Output: a progress bar on a terminal (`progress`); otherwise, or with progress=False,
    one line per log iteration at most every `log_seconds` seconds (0: every one).

    data_dir: folder in make_synthetic_coco's layout; fills the four paths below

    train_images: folder the train annotation file's file_names are relative to

    train_ann: COCO-format annotation file of the training split

    val_images: folder the val annotation file's file_names are relative to

    val_ann: COCO-format annotation file of the validation split

    arch: the detector

    backbone: the detector's backbone

    num_classes: classes including background (none: the training set's + 1)

    weights: local detector checkpoint or state_dict of this very model (strict)

    init_weights: local detector checkpoint to fine-tune from (torchvision's too): what fits
        loads, a predictor for other classes is re-initialized, one line says which

    backbone_weights: local file with the backbone's weights (e.g. ImageNet ResNet)

    min_size: images are resized so that their short side is this long

    max_size: ... and their long side at most this long

    model_kwargs: further build_detector / torchvision arguments, as a JSON object

    dynamic: DynamicConfig of the dynamic detectors (each field its own --dynamic-* option)

    out_dir: the run directory (config, log, checkpoints, evaluations, curves)

    iterations: training iterations (one batch per process each)

    batch_size: images per process and iteration

    lr: learning rate for a total batch of lr_reference_batch images

    lr_reference_batch: the total batch lr is given for

    scale_lr: scale lr linearly to the actual total batch

    momentum: SGD momentum

    weight_decay: SGD weight decay

    warmup_iters: iterations of linear warmup

    warmup_factor: lr factor at the start of the warmup

    steps: fractions of the run at which the lr is multiplied by gamma (8/12 accepted)

    gamma: lr factor at each step

    grad_clip: clip the gradient norm to this value (none: no clipping)

    amp: mixed precision (CUDA only)

    hflip: probability of a horizontal flip of a training image

    seed: seed of the model initialization, the data order and the sampling

    num_workers: data loader processes per training process

    checkpoint_period: save a checkpoint every this many iterations

    log_period: write a log record every this many iterations

    eval_period: evaluate on the val split every this many iterations (0: never)

    resume: continue from out_dir's last checkpoint

    overwrite: delete the files of an earlier run in out_dir first

    keep_checkpoints: periodic checkpoints to keep (0: all)

    log_seconds: without a progress bar, at most one progress line per this many seconds

    device: cpu, cuda or cuda:N (none: CUDA when available)

    find_unused_parameters: DistributedDataParallel's option of that name

    progress: progress bar on a terminal (else, and when piped: progress lines)

    plot: draw curves.png at the end
    """

    # data
    data_dir: Optional[str] = None
    train_images: Optional[str] = None
    train_ann: Optional[str] = None
    val_images: Optional[str] = None
    val_ann: Optional[str] = None
    # model
    arch: str = "dynamic_rcnn"
    backbone: str = "resnet50_fpn"
    num_classes: Optional[int] = None
    weights: Optional[str] = None
    init_weights: Optional[str] = None
    backbone_weights: Optional[str] = None
    min_size: int = 800
    max_size: int = 1333
    model_kwargs: Dict[str, Any] = field(default_factory=dict)
    dynamic: DynamicConfig = field(default_factory=DynamicConfig)
    # run
    out_dir: str = "runs/train"
    iterations: int = 90000
    batch_size: int = 2
    lr: float = 0.02
    lr_reference_batch: int = 16
    scale_lr: bool = True
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_iters: int = 500
    warmup_factor: float = 1.0 / 3.0
    steps: Tuple[float, ...] = DEFAULT_STEPS
    gamma: float = 0.1
    grad_clip: Optional[float] = None
    amp: bool = False
    hflip: float = 0.5
    seed: int = 0
    num_workers: int = 2
    checkpoint_period: int = 5000
    log_period: int = 20
    eval_period: int = 0
    resume: bool = False
    overwrite: bool = False
    keep_checkpoints: int = 3
    log_seconds: float = 30.0
    device: Optional[str] = None
    find_unused_parameters: bool = False
    progress: bool = True
    plot: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.dynamic, dict):  # from JSON
            self.dynamic = DynamicConfig(**self.dynamic)
        self.steps = tuple(float(s) for s in self.steps)
        _check_bounds(self, positive=("iterations", "batch_size", "checkpoint_period",
                                      "log_period", "lr_reference_batch", "min_size",
                                      "max_size"),
                      non_negative=("eval_period", "warmup_iters", "num_workers", "lr", "seed",
                                    "weight_decay", "keep_checkpoints", "log_seconds"))
        if not 0.0 < self.warmup_factor <= 1.0:
            raise UsageError(f"--warmup-factor must be in (0, 1], got {self.warmup_factor}")
        if not 0.0 <= self.hflip <= 1.0:
            raise UsageError(f"--hflip must be a probability in [0, 1], got {self.hflip}")
        if any(not 0.0 < s <= 1.0 for s in self.steps) or list(self.steps) != sorted(self.steps):
            raise UsageError(f"--steps must be increasing fractions in (0, 1], got {self.steps}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise UsageError(f"--grad-clip must be > 0 (or none), got {self.grad_clip}")
        if self.resume and self.overwrite:
            raise UsageError("--resume and --overwrite contradict each other: give one")
        if self.weights and self.init_weights:
            raise UsageError("--weights (this very model, strict) and --init-weights "
                             "(fine-tuning from another) contradict each other: give one")
        from dynrcnn.modeling.model_kwargs import check_model_kwargs

        try:  # a misspelt key would be ignored, a wrong type fail deep in torchvision
            check_model_kwargs(self.arch, self.model_kwargs)
        except ValueError as exc:
            raise UsageError(f"--model-kwargs: {exc}") from None

    def data_paths(self) -> Dict[str, Optional[str]]:
        """train/val image folders and annotation files, data_dir filling the gaps."""
        return resolve_data_paths(self.data_dir, {
            "train_images": self.train_images, "train_ann": self.train_ann,
            "val_images": self.val_images, "val_ann": self.val_ann})


@dataclass
class EvalConfig:
    """An evaluation run (the CLI's `eval`): a checkpoint on a COCO-format split.

    `weights` is a training checkpoint (model_*.pth: the architecture comes from the config
    stored in it; arch/backbone/num_classes must then be unset or agree with it, while
    min_size/max_size/model_kwargs, when set, change the test-time settings) or a bare
    state_dict (then arch/backbone/num_classes/min_size/max_size/model_kwargs describe the
    model; unset, they are dynamic_rcnn, resnet50_fpn, -, 800 and 1333). With
    `save_detections`, the detections are written to out_dir/results_<iou type>.json in
    COCO's results format, with the data set's own image and category ids.

    weights: the checkpoint (model_*.pth) or state_dict to evaluate

    data_dir: folder in make_synthetic_coco's layout; fills val_images / val_ann

    val_images: folder the annotation file's file_names are relative to

    val_ann: COCO-format annotation file to evaluate on

    arch: the detector of a bare state_dict (none: the checkpoint's, else dynamic_rcnn)

    backbone: its backbone (none: the checkpoint's, else resnet50_fpn)

    num_classes: its classes including background (none: the checkpoint's)

    min_size: test-time short side (none: the checkpoint's, else 800)

    max_size: test-time longest side (none: the checkpoint's, else 1333)

    model_kwargs: test-time build_detector arguments, e.g. {"box_score_thresh": 0.0}

    out_dir: where metrics.json / metrics.md go (give a run directory for `compare`)

    batch_size: images per inference batch

    num_workers: data loader processes

    device: cpu, cuda or cuda:N (none: CUDA when available)

    progress: progress bar on a terminal

    save_detections: also write the detections (results_bbox.json, COCO results format)
    """

    weights: str = ""
    data_dir: Optional[str] = None
    val_images: Optional[str] = None
    val_ann: Optional[str] = None
    arch: Optional[str] = None
    backbone: Optional[str] = None
    num_classes: Optional[int] = None
    min_size: Optional[int] = None
    max_size: Optional[int] = None
    model_kwargs: Dict[str, Any] = field(default_factory=dict)
    out_dir: str = "runs/eval"
    batch_size: int = 2
    num_workers: int = 2
    device: Optional[str] = None
    progress: bool = True
    save_detections: bool = False

    def __post_init__(self) -> None:
        _check_bounds(self, positive=("batch_size", "min_size", "max_size", "num_classes"),
                      non_negative=("num_workers",))

    def data_paths(self) -> Dict[str, Optional[str]]:
        """val image folder and annotation file, data_dir filling the gaps."""
        return resolve_data_paths(self.data_dir, {"val_images": self.val_images,
                                                  "val_ann": self.val_ann})


def _check_bounds(config: Any, positive: Tuple[str, ...] = (),
                  non_negative: Tuple[str, ...] = ()) -> None:
    for names, low, what in ((positive, 1, ">= 1"), (non_negative, 0, ">= 0")):
        for name in names:
            value = getattr(config, name)
            if value is not None and value < low:
                raise UsageError(f"{flag_name(name)} must be {what}, got {value}")


def resolve_data_paths(data_dir: Optional[str],
                       paths: Dict[str, Optional[str]]) -> Dict[str, Optional[str]]:
    """Fill unset `<split>_images` / `<split>_ann` from data_dir's synthetic-COCO layout."""
    out = dict(paths)
    for key, value in paths.items():
        if value or not data_dir:
            continue
        split, kind = key.split("_")
        out[key] = (os.path.join(data_dir, split) if kind == "images" else
                    os.path.join(data_dir, "annotations", f"instances_{split}.json"))
    return out


# --------------------------------------------------------------------------- JSON


# What one invocation does with its run directory, not part of the run's configuration: a
# config.json must never carry them into the next invocation (a saved "resume": true would
# make `--config run/config.json` resume whatever the command line says).
PER_INVOCATION_FIELDS: Tuple[str, ...] = ("resume", "overwrite")


def config_to_dict(config: Any) -> Dict[str, Any]:
    """`config` (a config dataclass) as a plain, JSON-serializable dict (nested dataclasses
    become dicts, tuples lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def config_from_dict(cls: Type[T], data: Dict[str, Any], _prefix: str = "") -> T:
    """Inverse of config_to_dict: the dataclass `cls` from the dict `data`; unknown keys are
    an error (a typo must not pass silently). A nested dataclass may be given partially
    (its other fields keep their defaults); missing fields keep theirs too."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise UsageError(f"unknown {cls.__name__} fields: {unknown}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        hint = hints[key]
        if dataclasses.is_dataclass(hint) and isinstance(value, dict):
            value = config_from_dict(hint, value, _prefix=_prefix + key + ".")
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except UsageError:
        raise
    except (TypeError, ValueError) as exc:
        if not _prefix:
            raise
        # DynamicConfig's own checks name its fields (k_iou): say which flag that is
        message = str(exc)
        for name in sorted(names, key=len, reverse=True):
            message = re.sub(rf"(?<![-\w]){name}\b", flag_name(_prefix + name), message)
        raise UsageError(message) from exc


def with_defaults(cls: Any, saved: Dict[str, Any],
                  before: Optional[Dict[str, Dict[str, Any]]] = None) -> Dict[str, Any]:
    """A checkpoint's config with the fields it predates filled in at their defaults (a
    field added later is not a change), or, for the nested fields `before` names
    ({"dynamic": {"mask_iou": None}}), at what a config without them meant; as saved
    when it does not load (a field this code does not know: compared as it is)."""
    saved = dict(saved)
    for name, fields in (before or {}).items():
        if isinstance(saved.get(name), dict):
            saved[name] = {**fields, **saved[name]}
    top = {k: v for k, v in saved.items() if k in {f.name for f in dataclasses.fields(cls)}}
    try:
        filled = config_to_dict(config_from_dict(cls, top))
    except (UsageError, TypeError, ValueError):
        return saved
    # top-level fields the checkpoint lacks stay absent (not compared), as before
    return {k: filled.get(k, v) for k, v in saved.items()}


def save_config(config: Any, path: str) -> None:
    """Write `config` (a config dataclass) to the file `path` as indented JSON, atomically (a
    reader never sees half a file); the per-invocation fields (resume, overwrite) are left
    out."""
    data = {k: v for k, v in config_to_dict(config).items() if k not in PER_INVOCATION_FIELDS}
    atomic_write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", path)


def read_config_file(cls: Type[Any], path: str) -> Dict[str, Any]:
    """The fields of a config.json as a dict for `cls`, checked (unknown fields, values);
    per-invocation fields (resume, overwrite) in it are ignored. Errors name the file."""
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        raise UsageError(f"--config {path}: no such file") from None
    except IsADirectoryError:
        raise UsageError(f"--config {path} is a directory, not a config.json") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--config {path} cannot be read: {exc}") from None
    except json.JSONDecodeError as exc:
        raise UsageError(f"--config {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise UsageError(f"--config {path} must hold a JSON object of {cls.__name__} fields")
    data = {k: v for k, v in data.items() if k not in PER_INVOCATION_FIELDS}
    try:
        config_from_dict(cls, data)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"--config {path}: {exc}") from None
    return data


def load_config(cls: Type[T], path: str) -> T:
    """The dataclass `cls` (TrainConfig, EvalConfig) from the config.json at `path`; the
    per-invocation fields in it are ignored, errors are UsageErrors naming the file."""
    return config_from_dict(cls, read_config_file(cls, path))
