"""COCO evaluation of a detector: inference, COCO results, COCOeval, the paper's AP columns.

Metrics (fractions in [0, 1] as COCOeval gives them; -1 where COCOeval has no ground truth
to score, e.g. APS on a dataset without small objects):
    AP            mean over IoU 0.50:0.95 (COCOeval.stats[0])
    AP50, AP75    at one IoU threshold (stats[1], stats[2])
    AP60, AP70, AP80, AP90
                  at one IoU threshold, read from COCOeval.eval['precision'] exactly as
                  summarize() reads AP50 (area all, maxDets 100, mean over the recall points
                  and classes that have ground truth): the paper's high-IoU columns
    APS, APM, APL by object area (stats[3..5])
Under torch.distributed each rank runs its shard of the images and rank 0 scores them all.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import warnings
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from dynrcnn.engine.builders import has_masks, unwrap
from dynrcnn.engine.checkpoint import atomic_write_text
from dynrcnn.engine.distributed import (
    broadcast_buffers,
    broadcast_object,
    gather_objects,
    get_rank,
    get_world_size,
)
from dynrcnn.engine.sampling import ShardSampler, collate, move_to_device

METRIC_NAMES: Tuple[str, ...] = ("AP", "AP50", "AP60", "AP70", "AP75", "AP80", "AP90",
                                 "APS", "APM", "APL")
# name -> IoU threshold read from eval['precision'] (AP50 and AP75 equal stats[1] / [2])
IOU_COLUMNS: Dict[str, float] = {"AP50": 0.5, "AP60": 0.6, "AP70": 0.7, "AP75": 0.75,
                                 "AP80": 0.8, "AP90": 0.9}
COCOResult = Dict[str, Any]


# --------------------------------------------------------------------------- results


def detections_to_coco(output: Mapping[str, Tensor], image_id: int,
                       label_to_cat_id: Mapping[int, int], masks: bool = False,
                       mask_threshold: float = 0.5) -> List[COCOResult]:
    """One image's detections as COCO result dicts (bbox xywh; segmentation as RLE).

    Args:
        output: torchvision's detections of the image: "boxes" [N, 4] (x1, y1, x2, y2),
            "labels", "scores", and with masks "masks" [N, 1, H, W] probabilities.
        image_id: the image's COCO id.
        label_to_cat_id: the model's label -> COCO category id (as
            CocoDetection.label_to_cat_id); a label without one is a KeyError.
        masks: also encode each mask as the result's "segmentation".
        mask_threshold: the probability above which a pixel belongs to the mask.
    """
    boxes = output["boxes"].detach().float().cpu()
    if boxes.numel() == 0:
        return []
    xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
    scores = output["scores"].detach().float().cpu().tolist()
    labels = output["labels"].detach().cpu().tolist()
    rles: List[Any] = [None] * len(scores)
    if masks:
        rles = _encode_masks(output["masks"], mask_threshold)
    results = []
    for box, score, label, rle in zip(xywh, scores, labels, rles):
        if int(label) not in label_to_cat_id:
            raise KeyError(f"label {label} has no COCO category (label_to_cat_id has "
                           f"{sorted(label_to_cat_id)})")
        result = {"image_id": int(image_id), "category_id": int(label_to_cat_id[int(label)]),
                  "bbox": [float(v) for v in box], "score": float(score)}
        if rle is not None:
            result["segmentation"] = rle
        results.append(result)
    return results


def _encode_masks(masks: Tensor, threshold: float) -> List[Dict[str, Any]]:
    from pycocotools import mask as mask_util

    binary = (masks.detach().cpu()[:, 0] > threshold).numpy().astype(np.uint8)  # [N, H, W]
    rles = mask_util.encode(np.asfortranarray(binary.transpose(1, 2, 0)))
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")  # JSON-serializable
    return list(rles)


@torch.inference_mode()
def run_inference(model: nn.Module, dataset: Any, device: torch.device, batch_size: int = 1,
                  num_workers: int = 0, masks: bool = False,
                  progress: bool = True) -> List[COCOResult]:
    """COCO results of this rank's shard of `dataset` (every image once over all ranks)."""
    rank, world = get_rank(), get_world_size()
    loader = DataLoader(dataset, batch_size=batch_size,
                        sampler=ShardSampler(len(dataset), rank, world),
                        num_workers=num_workers, collate_fn=collate,
                        pin_memory=device.type == "cuda",
                        # own generator: evaluation must not advance the training RNG
                        generator=torch.Generator().manual_seed(0))
    bar = _progress(loader, progress and rank == 0, "eval")
    results: List[COCOResult] = []
    label_to_cat_id = dataset.label_to_cat_id
    for images, targets in bar:
        images, _ = move_to_device(images, [], device)
        outputs = model(images)
        for out, target in zip(outputs, targets):
            results.extend(detections_to_coco(out, int(target["image_id"]), label_to_cat_id,
                                              masks=masks))
    return results


def _progress(iterable: Any, enabled: bool, desc: str) -> Any:
    # a bar only on a terminal: piped into a file, its redraws become one line each
    if not (enabled and sys.stderr.isatty()):
        return iterable
    try:
        from tqdm import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, desc=desc, dynamic_ncols=True, leave=False)


# --------------------------------------------------------------------------- COCOeval


def ap_at_iou(coco_eval: Any, iou: float, area: str = "all", max_dets: int = 100) -> float:
    """AP at one IoU threshold from COCOeval.eval['precision'] ([T, R, K, A, M]), computed
    as COCOeval.summarize computes AP50: mean over recall points and classes of the
    entries > -1 (-1 when there are none).

    Args:
        coco_eval: an evaluated and accumulated COCOeval.
        iou: one of its IoU thresholds (0.5, 0.55, ..., 0.95).
        area: one of its area ranges: "all", "small", "medium" or "large".
        max_dets: one of its detections-per-image limits (1, 10, 100).
    """
    params = coco_eval.params
    t = np.where(np.isclose(params.iouThrs, iou))[0]
    if t.size == 0:
        raise ValueError(f"IoU {iou} is not one of COCOeval's thresholds {params.iouThrs}")
    a = params.areaRngLbl.index(area)
    m = params.maxDets.index(max_dets)
    precision = coco_eval.eval["precision"][t[0], :, :, a, m]
    valid = precision[precision > -1]
    return float(np.mean(valid)) if valid.size else -1.0


def summarize(coco_eval: Any) -> Dict[str, float]:
    """METRIC_NAMES from an evaluated + accumulated + summarized COCOeval."""
    stats = coco_eval.stats
    metrics = {"AP": float(stats[0]), "APS": float(stats[3]), "APM": float(stats[4]),
               "APL": float(stats[5])}
    metrics.update({name: ap_at_iou(coco_eval, iou) for name, iou in IOU_COLUMNS.items()})
    return {name: metrics[name] for name in METRIC_NAMES}


def _empty_results(coco_gt: Any) -> Any:
    """A COCO results object with no detections (COCO.loadRes fails on an empty list)."""
    from pycocotools.coco import COCO

    empty = COCO()
    empty.dataset = {"images": list(coco_gt.dataset.get("images", [])),
                     "categories": list(coco_gt.dataset.get("categories", [])),
                     "annotations": []}
    empty.createIndex()
    return empty


def coco_evaluate(coco_gt: Any, results: Sequence[COCOResult], iou_type: str = "bbox",
                  image_ids: Optional[Sequence[int]] = None,
                  verbose: bool = False) -> Dict[str, float]:
    """COCOeval of `results` against `coco_gt`; METRIC_NAMES. No detections at all gives
    COCOeval's own numbers for that case (0 where there is ground truth, else -1) and a
    warning instead of pycocotools' crash.

    Args:
        coco_gt: the ground truth, a pycocotools COCO.
        results: COCO result dicts (as detections_to_coco makes them).
        iou_type: "bbox" or "segm".
        image_ids: the images to score (None: every image of coco_gt).
        verbose: let pycocotools print its progress and tables.

    Returns:
        {metric: value} for every name of METRIC_NAMES.
    """
    from pycocotools.cocoeval import COCOeval

    if iou_type not in ("bbox", "segm"):
        raise ValueError(f"iou_type must be 'bbox' or 'segm', got {iou_type!r}")
    results = [dict(r) for r in results]  # loadRes adds keys (area, id) to its input
    if iou_type == "segm":
        # Without a bbox, loadRes takes each instance's area from its mask (as COCO's gt
        # does) rather than from its box, which would shift the S/M/L split.
        results = [{k: v for k, v in r.items() if k != "bbox"} for r in results]
    # pycocotools prints its progress; keep it out of training logs unless asked for
    quiet = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    with quiet:
        if results:
            coco_dt = coco_gt.loadRes(results)
        else:
            warnings.warn(f"no detections to evaluate ({iou_type}): every AP is 0 (or -1 "
                          "where there is no ground truth)", RuntimeWarning, stacklevel=2)
            coco_dt = _empty_results(coco_gt)
        coco_eval = COCOeval(coco_gt, coco_dt, iou_type)
        if image_ids is not None:
            coco_eval.params.imgIds = sorted(int(i) for i in image_ids)
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return summarize(coco_eval)


# --------------------------------------------------------------------------- reports


def format_metrics_table(metrics: Mapping[str, Any], percent: bool = True) -> str:
    """`metrics` as a Markdown table: one row per entry of {row name: {metric: value}} (e.g.
    {'bbox': ..., 'segm': ...} or {run: ...}), or a single row for a flat {metric: value}.
    Values are shown x100 with one decimal (the paper's style) unless percent=False; -1
    shows as '-'."""
    if metrics and all(isinstance(v, (int, float)) for v in metrics.values()):
        rows: Dict[str, Mapping[str, Any]] = {"": metrics}
    else:
        rows = {str(k): v for k, v in metrics.items() if isinstance(v, Mapping)}
    columns = [m for m in METRIC_NAMES if any(m in r for r in rows.values())]
    columns += sorted({k for r in rows.values() for k in r if k not in columns
                       and isinstance(r[k], (int, float))})

    def cell(value: Any) -> str:
        if not isinstance(value, (int, float)):
            return ""
        if value < 0:
            return "-"
        return f"{100 * value:.1f}" if percent else f"{value:.4f}"

    lines = ["| | " + " | ".join(columns) + " |",
             "|---|" + "---:|" * len(columns)]
    for name, row in rows.items():
        lines.append(f"| {name} | " + " | ".join(cell(row.get(c)) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def write_metrics(metrics: Mapping[str, Any], out_dir: str) -> Tuple[str, str]:
    """metrics.json and metrics.md in out_dir (atomically); returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    json_path = os.path.join(out_dir, "metrics.json")
    md_path = os.path.join(out_dir, "metrics.md")
    atomic_write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n", json_path)
    atomic_write_text(format_metrics_table(metrics), md_path)
    return json_path, md_path


# --------------------------------------------------------------------------- entry point


def evaluate(model: nn.Module, dataset: Any, device: Optional[torch.device] = None,
             batch_size: int = 1, num_workers: int = 0, out_dir: Optional[str] = None,
             iou_types: Optional[Sequence[str]] = None, progress: bool = True,
             save_results: bool = False) -> Dict[str, Dict[str, float]]:
    """Evaluate `model` on a COCO-format `dataset` (CocoDetection's interface).

    Returns {iou_type: metrics} on every rank (bbox, plus segm for mask models). With
    out_dir, rank 0 writes metrics.json and metrics.md there (and the raw COCO results as
    results_<iou_type>.json with save_results). The model's train/eval mode is restored.
    Collective under torch.distributed: call it on every rank; the ranks first take rank
    0's buffers (BatchNorm statistics), so every shard is scored with the same model.

    Args:
        model: the detector (or its DistributedDataParallel wrapper).
        dataset: the images and their ground truth: items (image, target) and the
            attributes coco, ids and label_to_cat_id, as CocoDetection has them.
        device: where inference runs (None: the model's device).
        batch_size: images per inference batch.
        num_workers: data loader processes.
        out_dir: where rank 0 writes the metrics (None: nowhere).
        iou_types: "bbox" and/or "segm" (None: bbox, plus segm for mask models).
        progress: a progress bar on rank 0's terminal.
        save_results: also write the detections to out_dir.
    """
    net = unwrap(model)
    broadcast_buffers(net)
    if device is None:
        device = next(net.parameters()).device
    if iou_types is None:
        iou_types = ("bbox", "segm") if has_masks(net) else ("bbox",)
    was_training = net.training
    net.eval()
    try:
        local = run_inference(net, dataset, device, batch_size, num_workers,
                              masks="segm" in iou_types, progress=progress)
    finally:
        net.train(was_training)
    gathered = gather_objects(local)
    metrics: Optional[Dict[str, Dict[str, float]]] = None
    if gathered is not None:  # rank 0
        results = [r for part in gathered for r in part]
        image_ids = [int(i) for i in dataset.ids]
        metrics = {t: coco_evaluate(dataset.coco, results, t, image_ids) for t in iou_types}
        if out_dir is not None:
            write_metrics(metrics, out_dir)
            if save_results:
                for t in iou_types:
                    keep = "segmentation" if t == "segm" else "bbox"
                    subset = [{k: v for k, v in r.items() if k in
                               ("image_id", "category_id", "score", keep)} for r in results]
                    atomic_write_text(json.dumps(subset),
                                      os.path.join(out_dir, f"results_{t}.json"))
    return broadcast_object(metrics)


def run_evaluation(config: Any) -> Dict[str, Dict[str, float]]:
    """The CLI's `eval`: load config.weights (see builders.load_model_for_eval), check that
    the val split of config (an EvalConfig) has the model's classes, evaluate, write
    metrics.json / metrics.md (and results_<iou type>.json with save_detections) into
    config.out_dir. Works under torchrun (each rank a shard)."""
    from dynrcnn.engine.builders import build_val_dataset, check_categories, load_model_for_eval
    from dynrcnn.engine.config import UsageError
    from dynrcnn.engine.distributed import init_distributed, shutdown

    if os.path.exists(config.out_dir) and not os.path.isdir(config.out_dir):
        raise UsageError(f"--out-dir {config.out_dir} exists and is not a directory")
    info = init_distributed(config.device)
    try:
        model, model_info = load_model_for_eval(config)
        dataset = build_val_dataset(config)
        # before inference: a data set with other classes would fail only at the end
        check_categories(dataset, model_info["num_classes"], model_info["categories"],
                         "--val-ann", config.weights)
        model.to(info.device)
        metrics = evaluate(model, dataset, info.device, config.batch_size,
                           config.num_workers, out_dir=config.out_dir,
                           progress=config.progress, save_results=config.save_detections)
    except BaseException:
        shutdown(info, clean=False)
        raise
    shutdown(info)
    return metrics
