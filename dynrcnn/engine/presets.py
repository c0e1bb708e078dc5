"""Presets and data shared by the CPU demo, the small-scale ablation (benchmarks/experiment.py)
and the accuracy studies: the synthetic data set on disk and the small CPU TrainConfig."""

from __future__ import annotations

import os
from typing import Any, Dict, Optional

from dynrcnn.engine.config import TrainConfig, config_from_dict


def ensure_synthetic_data(data_dir: str, num_train: int, num_val: int, image_size: int,
                          verbose: bool = True) -> bool:
    """Write the synthetic set (seed 0) into data_dir unless it is there already (its
    annotations/instances_val.json exists); True if written.

    Args:
        data_dir: the data set's directory, in make_synthetic_coco's layout.
        num_train, num_val: the number of images of the train and val splits.
        image_size: the images' side in pixels (they are square).
        verbose: say so on stdout (rank 0 only) when writing.
    """
    if os.path.isfile(os.path.join(data_dir, "annotations", "instances_val.json")):
        return False
    from dynrcnn.data import make_synthetic_coco

    if verbose and int(os.environ.get("RANK", "0")) == 0:
        print(f"writing the synthetic data set to {data_dir}", flush=True)
    make_synthetic_coco(data_dir, num_train=num_train, num_val=num_val,
                        image_size=(image_size, image_size), seed=0)
    return True


def small_cpu_config(data_dir: str, out_dir: str, arch: str = "dynamic_rcnn",
                     iterations: int = 1200, interval: int = 20, image_size: int = 256,
                     resume: bool = False, seed: int = 0,
                     dynamic: Optional[Dict[str, Any]] = None,
                     model_kwargs: Optional[Dict[str, Any]] = None,
                     **overrides: Any) -> TrainConfig:
    """The TrainConfig of the CPU demo and of the small-scale ablation: tiny_fpn backbone,
    batch 4, lr 0.02 with gradient clipping, the 1x schedule's decays at 8/12 and 11/12.
    300 proposals and 128 sampled RoIs per image, KI 15 and Kbeta 4 (5% and 1.3% of the 300
    proposals, an earlier scaling of the paper's 75 and 10; the studies' 300-proposal
    protocol uses 22 and 3, the 7.5% and 1% that 75 and 10 are of 1000).

    Args:
        data_dir: the data set's directory (TrainConfig.data_dir).
        out_dir: the run directory.
        arch: the detector (one of modeling.ARCHS).
        iterations: training iterations; the warmup, checkpoint and evaluation periods
            follow from it.
        interval: DynamicConfig.interval, the iterations between updates of T and beta.
        image_size: min_size and max_size of the detector's transform.
        resume: continue the run in out_dir.
        seed: the run's seed.
        dynamic: further DynamicConfig fields, over the ones above.
        model_kwargs: added to (or overriding) the detector arguments above.
        overrides: further TrainConfig fields (e.g. progress=False, keep_checkpoints=2).
    """
    return config_from_dict(TrainConfig, {
        "data_dir": data_dir, "arch": arch, "backbone": "tiny_fpn",
        "min_size": image_size, "max_size": image_size,
        "out_dir": out_dir, "iterations": iterations, "batch_size": 4,
        "lr": 0.02, "lr_reference_batch": 4, "grad_clip": 10.0,
        "warmup_iters": min(100, iterations // 10),
        "checkpoint_period": max(1, iterations // 4), "log_period": 10,
        "eval_period": iterations, "num_workers": 0, "resume": resume, "seed": seed,
        # A 2-core CPU budget: 300 proposals and 128 sampled RoIs per image instead of
        # 2000 / 512, so KI and Kbeta shrink too (see the docstring for the ratios).
        "model_kwargs": {"rpn_pre_nms_top_n_train": 600, "rpn_post_nms_top_n_train": 300,
                         "rpn_pre_nms_top_n_test": 300, "rpn_post_nms_top_n_test": 300,
                         "box_batch_size_per_image": 128, "rpn_batch_size_per_image": 128,
                         **(model_kwargs or {})},
        "dynamic": {"interval": interval, "k_iou": 15, "k_err": 4, **(dynamic or {})},
        **overrides,
    })
