"""The detector benchmark's rows, inputs and models: which architectures, the fixed synthetic
batch, building the models on shared weights (and checking that they are shared), and one
train step / one inference."""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
import torchvision
from torch import Tensor, nn

from dynrcnn.modeling import build_detector

SEED = 0
GT_PER_IMAGE = 5
ASPECT = 4 / 3  # image width / height (COCO's typical 640x480)
MAX_TO_MIN = 1333 / 800  # torchvision's max_size / min_size
LR, MOMENTUM, WEIGHT_DECAY = 1e-4, 0.9, 1e-4
BASELINE_NMS = 0.7  # torchvision's RPN NMS (Faster R-CNN); the dynamic variants default 0.85
Targets = List[Dict[str, Tensor]]


class BenchmarkError(RuntimeError):
    """The models do not share weights as intended, or a run cannot proceed."""


# ----------------------------------------------------------------------------- variants


@dataclass(frozen=True)
class Variant:
    """One row: `arch` built with `kwargs`; ratios are taken against row `baseline`."""

    name: str
    arch: str
    baseline: str
    kwargs: Tuple[Tuple[str, Any], ...] = ()


def variants(masks: bool) -> List[Variant]:
    same_nms = (("rpn_nms_thresh", BASELINE_NMS),)
    rows = [
        Variant("faster_rcnn", "faster_rcnn", "faster_rcnn"),
        Variant("dynamic_rcnn", "dynamic_rcnn", "faster_rcnn"),
        Variant(f"dynamic_rcnn (rpn nms {BASELINE_NMS})", "dynamic_rcnn", "faster_rcnn",
                same_nms),
        Variant("cascade_rcnn", "cascade_rcnn", "faster_rcnn"),
    ]
    if masks:
        rows += [
            Variant("mask_rcnn", "mask_rcnn", "mask_rcnn"),
            Variant("dynamic_mask_rcnn", "dynamic_mask_rcnn", "mask_rcnn"),
            Variant(f"dynamic_mask_rcnn (rpn nms {BASELINE_NMS})", "dynamic_mask_rcnn",
                    "mask_rcnn", same_nms),
        ]
    return rows


# ----------------------------------------------------------------------------- inputs


def image_shape(size: int) -> Tuple[int, int]:
    """(height, width) of the synthetic images: `size` high, COCO's 4:3 aspect."""
    return size, round(size * ASPECT)


def transform_kwargs(size: int) -> Dict[str, int]:
    """min_size / max_size so that torchvision's transform keeps the image at its size."""
    return {"min_size": size, "max_size": math.ceil(size * MAX_TO_MIN)}


def random_boxes(gen: torch.Generator, n: int, height: int, width: int) -> Tensor:
    """`n` integer-cornered boxes, 16 px to ~40% of the image a side."""
    u = torch.rand(n, 4, generator=gen)
    w = (16 + u[:, 0] * 0.4 * width).floor()
    h = (16 + u[:, 1] * 0.4 * height).floor()
    x1 = (u[:, 2] * (width - w)).floor()
    y1 = (u[:, 3] * (height - h)).floor()
    return torch.stack([x1, y1, x1 + w, y1 + h], dim=1)


def box_masks(boxes: Tensor, height: int, width: int) -> Tensor:
    """uint8 [G, H, W] masks filling each box."""
    masks = torch.zeros(boxes.shape[0], height, width, dtype=torch.uint8)
    for m, (x1, y1, x2, y2) in zip(masks, boxes.long().tolist()):
        m[y1:y2, x1:x2] = 1
    return masks


def make_inputs(batch: int, size: int, num_classes: int, masks: bool,
                device: torch.device) -> Tuple[List[Tensor], Targets]:
    """Fixed random images and targets (generated on the CPU from SEED)."""
    gen = torch.Generator().manual_seed(SEED)
    height, width = image_shape(size)
    images, targets = [], []
    for _ in range(batch):
        images.append(torch.rand(3, height, width, generator=gen).to(device))
        boxes = random_boxes(gen, GT_PER_IMAGE, height, width)
        labels = torch.randint(1, num_classes, (GT_PER_IMAGE,), generator=gen)
        target = {"boxes": boxes.to(device), "labels": labels.to(device)}
        if masks:
            target["masks"] = box_masks(boxes, height, width).to(device)
        targets.append(target)
    return images, targets


# ----------------------------------------------------------------------------- models


@dataclass
class Subject:
    """A built model with its optimizer and what it took from the shared weights."""

    variant: Variant
    model: nn.Module
    optimizer: torch.optim.Optimizer
    shared_keys: List[str]
    own_keys: List[str]
    detections: int = 0


def frozen_trunk(backbone: str) -> bool:
    """ResNets are built as when fine-tuning from ImageNet, as in the paper; tiny_fpn always
    trains entirely."""
    return backbone.startswith("resnet")


def frozen_trunk_file(backbone: str, directory: Path) -> Optional[Path]:
    """For ResNet backbones, a (random) trunk checkpoint: passing it as backbone_weights builds
    the detectors as when fine-tuning (FrozenBatchNorm2d, stem and layer1 frozen)."""
    if not frozen_trunk(backbone):
        return None
    depth = backbone.split("_")[0]
    torch.manual_seed(SEED)
    trunk = torchvision.models.resnet.__dict__[depth](weights=None)
    path = directory / f"{depth}_random_trunk.pth"
    torch.save(trunk.state_dict(), path)
    return path


def share_weights(model: nn.Module, pool: Dict[str, Tensor]) -> Tuple[List[str], List[str]]:
    """Load every pool tensor whose name and shape match (strict=False), then add the model's
    remaining tensors to the pool. Returns (loaded keys, the model's own keys)."""
    own = model.state_dict()
    take = {k: v for k, v in pool.items() if k in own and own[k].shape == v.shape}
    result = model.load_state_dict(take, strict=False)
    if result.unexpected_keys:
        raise BenchmarkError(f"unexpected keys when sharing weights: {result.unexpected_keys}")
    for key, value in model.state_dict().items():
        pool.setdefault(key, value.detach().clone())
    return sorted(take), sorted(set(own) - set(take))


def build_subject(variant: Variant, args: argparse.Namespace, trunk: Optional[Path],
                  pool: Dict[str, Tensor], device: torch.device) -> Subject:
    torch.manual_seed(SEED)
    kwargs: Dict[str, Any] = {**transform_kwargs(args.size), **dict(variant.kwargs)}
    if args.score_thresh is not None:
        kwargs["box_score_thresh"] = args.score_thresh
    model = build_detector(variant.arch, args.backbone, args.num_classes,
                           backbone_weights=trunk, **kwargs).to(device)
    shared, own = share_weights(model, pool)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    return Subject(variant, model, optimizer, shared, own)


def key_groups(keys: List[str]) -> List[str]:
    """Keys shortened to their first two components (backbone.body, rpn.head, ...)."""
    return sorted({".".join(k.split(".")[:2]) for k in keys})


def check_sharing(subjects: List[Subject]) -> None:
    """Every model after the first has the first one's backbone and RPN; the dynamic variants
    own nothing but their DynamicState; cascade owns only its stage heads."""
    for s in subjects[1:]:
        own = s.own_keys
        if any(k.startswith(("backbone.", "rpn.")) for k in own):
            raise BenchmarkError(f"{s.variant.name}: backbone/RPN weights not shared: {own}")
        if s.variant.arch.startswith("dynamic") and any(".dynamic_state." not in f".{k}"
                                                        for k in own):
            raise BenchmarkError(f"{s.variant.name}: owns more than its DynamicState: {own}")
        if s.variant.arch == "cascade_rcnn" and any(not k.startswith("roi_heads.stage_")
                                                    for k in own):
            raise BenchmarkError(f"cascade_rcnn owns unexpected tensors: {own}")


def check_same_detections(subjects: List[Subject], image: Tensor) -> None:
    """faster_rcnn and the same-NMS dynamic_rcnn must detect identically (same weights)."""
    by_name = {s.variant.name: s for s in subjects}
    pair = [by_name.get("faster_rcnn"), by_name.get(f"dynamic_rcnn (rpn nms {BASELINE_NMS})")]
    if pair[0] is None or pair[1] is None:
        return
    outs = [infer(s, image) for s in pair]
    a, b = (o[0]["boxes"].cpu() for o in outs)
    if a.shape != b.shape or not torch.allclose(a, b, rtol=1e-4, atol=1e-3):
        raise BenchmarkError("faster_rcnn and dynamic_rcnn (same RPN NMS) detect differently "
                             f"({a.shape[0]} vs {b.shape[0]} boxes): weights are not shared")


# ----------------------------------------------------------------------------- steps


def train_step(s: Subject, images: List[Tensor], targets: Targets) -> None:
    s.optimizer.zero_grad(set_to_none=True)
    losses = s.model(images, targets)
    torch.stack(list(losses.values())).sum().backward()
    s.optimizer.step()


def infer(s: Subject, image: Tensor) -> List[Dict[str, Tensor]]:
    with torch.inference_mode():
        return s.model([image])
