"""Training and evaluation engine: configs, the Trainer (torchrun / DDP, crash-safe
checkpoints, exact resume), the COCO evaluator and the helpers they share.

    from dynrcnn.engine import TrainConfig, Trainer, evaluate
    summary = Trainer(TrainConfig(data_dir="data/synthetic", backbone="tiny_fpn")).train()

dynrcnn.data and dynrcnn.modeling are imported when a model or dataset is built, so
`import dynrcnn.engine` stays light.
"""

from typing import Tuple

from dynrcnn.engine.builders import build_model, get_dynamic_state, load_model_for_eval
from dynrcnn.engine.checkpoint import (
    Checkpointer,
    atomic_save,
    atomic_write_text,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
)
from dynrcnn.engine.compare import compare_runs, load_run_metrics, plot_ap_vs_iou
from dynrcnn.engine.config import (
    EvalConfig,
    TrainConfig,
    UsageError,
    config_from_dict,
    config_to_dict,
    load_config,
    save_config,
)
from dynrcnn.engine.config_args import add_dataclass_args, dataclass_from_args
from dynrcnn.engine.distributed import DistInfo, init_distributed, sync_dynamic_state
from dynrcnn.engine.evaluator import (
    METRIC_NAMES,
    ap_at_iou,
    coco_evaluate,
    detections_to_coco,
    evaluate,
    format_metrics_table,
    run_evaluation,
    write_metrics,
)
from dynrcnn.engine.logger import NonFiniteLossError, read_jsonl
from dynrcnn.engine.plots import plot_training_curves
from dynrcnn.engine.presets import ensure_synthetic_data, small_cpu_config
from dynrcnn.engine.schedule import WarmupMultiStep, build_optimizer, build_scheduler
from dynrcnn.engine.trainer import Trainer, effective_lr, train

# The docstring of a re-exported constant for the API reference (an annotation only: the
# name stays bound to the imported tuple).
METRIC_NAMES: Tuple[str, ...]
"""The metrics `evaluate` reports per IoU type: COCO's AP (IoU 0.5:0.95), AP at IoU 0.5,
0.6, 0.7, 0.75, 0.8 and 0.9 (AP50 ... AP90), and AP of small, medium and large objects."""

__all__ = [
    "METRIC_NAMES",
    "Checkpointer",
    "DistInfo",
    "EvalConfig",
    "NonFiniteLossError",
    "TrainConfig",
    "Trainer",
    "UsageError",
    "WarmupMultiStep",
    "add_dataclass_args",
    "ap_at_iou",
    "atomic_save",
    "atomic_write_text",
    "build_model",
    "build_optimizer",
    "build_scheduler",
    "capture_rng_state",
    "coco_evaluate",
    "compare_runs",
    "config_from_dict",
    "config_to_dict",
    "dataclass_from_args",
    "detections_to_coco",
    "effective_lr",
    "ensure_synthetic_data",
    "evaluate",
    "format_metrics_table",
    "get_dynamic_state",
    "init_distributed",
    "load_checkpoint",
    "load_config",
    "load_run_metrics",
    "load_model_for_eval",
    "plot_ap_vs_iou",
    "plot_training_curves",
    "read_jsonl",
    "restore_rng_state",
    "run_evaluation",
    "save_config",
    "small_cpu_config",
    "sync_dynamic_state",
    "train",
    "write_metrics",
]
