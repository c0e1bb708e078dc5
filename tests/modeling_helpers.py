"""Tiny detectors, batches and RoI-head inputs shared by the modeling tests
(test_detector_build, test_detector_train, test_cascade_heads, test_dynamic_roi_heads):
the tiny backbone on 128-px images, on the CPU."""

from __future__ import annotations

from typing import Dict, List, Tuple

import torch
from torch import Tensor
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.ops import MultiScaleRoIAlign

from dynrcnn.dynamic import DynamicConfig
from dynrcnn.modeling import DynamicRoIHeads, build_detector

SIZE = 128
NUM_CLASSES = 4
# Small RPN / sampler settings keep every step fast; everything else is torchvision's.
SMALL = dict(min_size=SIZE, max_size=SIZE, rpn_pre_nms_top_n_train=300,
             rpn_post_nms_top_n_train=150, rpn_pre_nms_top_n_test=150,
             rpn_post_nms_top_n_test=100, box_batch_size_per_image=64)
MASK_ARCHS = ("mask_rcnn", "dynamic_mask_rcnn")

Target = Dict[str, Tensor]


def random_gt(n: int, gen: torch.Generator, size: int = SIZE) -> Tensor:
    """n valid boxes inside a size x size image, 12 to 60 px wide."""
    wh = 12 + torch.rand(n, 2, generator=gen) * 48
    xy = torch.rand(n, 2, generator=gen) * (size - wh)
    return torch.cat([xy, xy + wh], dim=1)


def make_batch(gt_counts: Tuple[int, ...], seed: int = 0) -> Tuple[List[Tensor], List[Target]]:
    """Images with gt_counts[i] boxes each (0 allowed), their labels and box-shaped masks."""
    gen = torch.Generator().manual_seed(seed)
    images, targets = [], []
    for n in gt_counts:
        boxes = random_gt(n, gen)
        masks = torch.zeros(n, SIZE, SIZE, dtype=torch.uint8)
        for k, (x1, y1, x2, y2) in enumerate(boxes.round().long().tolist()):
            masks[k, y1:y2, x1:x2] = 1
        images.append(torch.rand(3, SIZE, SIZE, generator=gen))
        targets.append({"boxes": boxes,
                        "labels": torch.randint(1, NUM_CLASSES, (n,), generator=gen),
                        "masks": masks})
    return images, targets


def build(arch: str, **kwargs):
    torch.manual_seed(0)
    return build_detector(arch, backbone="tiny_fpn", num_classes=NUM_CLASSES,
                          **{**SMALL, **kwargs})


def expected_loss_keys(arch: str) -> set:
    rpn = {"loss_objectness", "loss_rpn_box_reg"}
    if arch == "cascade_rcnn":
        return rpn | {f"loss_{k}_stage{s}" for k in ("classifier", "box_reg") for s in (1, 2, 3)}
    box = {"loss_classifier", "loss_box_reg"}
    return rpn | box | ({"loss_mask"} if arch in MASK_ARCHS else set())


def train_step(model, images, targets) -> Dict[str, Tensor]:
    model.train()
    model.zero_grad()
    losses = model(images, targets)
    sum(losses.values()).backward()
    return losses


# --------------------------------------------------------------------------- RoI-head inputs


def small_heads(config: DynamicConfig, batch_size_per_image: int = 64) -> DynamicRoIHeads:
    torch.manual_seed(0)
    return DynamicRoIHeads(
        MultiScaleRoIAlign(["0"], output_size=7, sampling_ratio=2),
        TwoMLPHead(4 * 7 * 7, 16),
        FastRCNNPredictor(16, NUM_CLASSES),
        batch_size_per_image=batch_size_per_image,
        dynamic=config,
    )


def jittered(gt: Tensor, per_gt: int, scale: float, gen: torch.Generator) -> Tensor:
    """per_gt proposals around each gt box: centre and size perturbed by ~scale * size."""
    gt = gt.repeat_interleave(per_gt, dim=0)
    wh = gt[:, 2:] - gt[:, :2]
    centre = 0.5 * (gt[:, :2] + gt[:, 2:]) + torch.randn(gt.shape[0], 2, generator=gen) * \
        scale * wh
    wh = wh * torch.exp(torch.randn(gt.shape[0], 2, generator=gen) * scale)
    return torch.cat([centre - 0.5 * wh, centre + 0.5 * wh], dim=1).clamp(0, SIZE)


def heads_inputs(gt_counts, scale: float, gen: torch.Generator, per_gt: int = 20,
                 background: int = 10):
    features = {"0": torch.randn(len(gt_counts), 4, SIZE // 4, SIZE // 4, generator=gen)}
    shapes = [(SIZE, SIZE)] * len(gt_counts)
    proposals, targets = [], []
    for n in gt_counts:
        gt = random_gt(n, gen)
        proposals.append(torch.cat([jittered(gt, per_gt, scale, gen),
                                    random_gt(background, gen)]))
        targets.append({"boxes": gt, "labels": torch.randint(1, NUM_CLASSES, (n,), generator=gen)})
    return features, proposals, shapes, targets
