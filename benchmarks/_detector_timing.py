"""Timing of the detector benchmark: interleaved rounds of every model's train step and
inference, and the second stage's training code (where Dynamic and Faster R-CNN differ)
alone on identical inputs."""

from __future__ import annotations

import math
import statistics
import sys
from dataclasses import dataclass, field
from typing import List, Tuple

import torch
from _common import Candidate, round_robin, time_once
from _detector_models import BASELINE_NMS, SEED, Subject, Targets, infer, train_step
from torch import Tensor, nn

STAGE_REPS_FACTOR = 5  # the second-stage code is ~1% of a step: more rounds, still cheap


# ----------------------------------------------------------------------------- timing


def candidates(subjects: List[Subject], images: List[Tensor],
               targets: Targets) -> Tuple[List[Candidate], List[Candidate]]:
    """(train, inference) candidates of every subject."""
    train, inference = [], []
    for s in subjects:
        def run_train(s: Subject = s) -> None:
            train_step(s, images, targets)

        def run_infer(s: Subject = s) -> None:
            s.detections = int(infer(s, images[0])[0]["boxes"].shape[0])

        train.append(Candidate(run_train, s.model.train))
        inference.append(Candidate(run_infer, s.model.eval))
    return train, inference


def time_all(subjects: List[Subject], images: List[Tensor], targets: Targets, reps: int,
             warmup: int, device: torch.device) -> Tuple[List[List[float]], List[List[float]]]:
    """Per-subject train and inference samples; every round does all trains, then all
    inferences, the order reversed every other round."""
    train, inference = candidates(subjects, images, targets)
    train_s: List[List[float]] = [[] for _ in subjects]
    infer_s: List[List[float]] = [[] for _ in subjects]
    for rep in range(-warmup, reps):
        t = round_robin(train, rep % 2 == 1, device)
        i = round_robin(inference, rep % 2 == 1, device)
        if rep >= 0:
            for k in range(len(subjects)):
                train_s[k].append(t[k])
                infer_s[k].append(i[k])
        print(f"  {'warm-up' if rep < 0 else 'rep'} {rep + 1 if rep >= 0 else -rep}: "
              f"train {sum(t):.2f} s, infer {sum(i):.2f} s", file=sys.stderr, flush=True)
    return train_s, infer_s


# ----------------------------------------------------------------------------- second stage


@dataclass
class StageCost:
    """Median times of the only training code where Dynamic and Faster R-CNN differ, on
    identical inputs: labelling + sampling + encoding the RoIs (select_training_samples)
    and the box-head losses forward + backward."""

    name: str
    select_ms: float
    loss_ms: float
    select_samples_ms: List[float] = field(default_factory=list)
    loss_samples_ms: List[float] = field(default_factory=list)


def rpn_training_inputs(s: Subject, images: List[Tensor],
                        targets: Targets) -> Tuple[List[Tensor], Targets]:
    """The RPN's training proposals and the resized targets, as the RoI heads receive them."""
    model = s.model
    model.train()
    with torch.no_grad():
        batch, resized = model.transform(images, [dict(t) for t in targets])
        features = model.backbone(batch.tensors)
        proposals, _ = model.rpn(batch, features, resized)
    return [p.detach() for p in proposals], resized


def box_loss_step(s: Subject, labels: List[Tensor], regression_targets: List[Tensor],
                  logits: Tensor, deltas: Tensor) -> None:
    """The architecture's box-head losses (classification + box) forward and backward."""
    from torchvision.models.detection.roi_heads import fastrcnn_loss

    from dynrcnn.modeling.dynamic_roi_heads import DynamicRoIHeads, dynamic_fastrcnn_loss

    heads = s.model.roi_heads
    logits.grad, deltas.grad = None, None
    if isinstance(heads, DynamicRoIHeads):
        cls, box = dynamic_fastrcnn_loss(logits, deltas, labels, regression_targets,
                                         heads.dynamic_state.beta)
    else:
        cls, box = fastrcnn_loss(logits, deltas, labels, regression_targets)
    (cls + box).backward()


def second_stage_costs(subjects: List[Subject], images: List[Tensor], targets: Targets,
                       reps: int, device: torch.device) -> List[StageCost]:
    """faster_rcnn against dynamic_rcnn with the same RPN NMS, on the same proposals (made by
    faster_rcnn's RPN) and the same head outputs: what DLA + DSL cost per step without the
    data-dependent rest of the step (which RoIs get sampled changes RoIAlign's backward).
    Runs after the step timing: recording statistics moves the dynamic model's T."""
    by_name = {s.variant.name: s for s in subjects}
    pair = [by_name.get("faster_rcnn"), by_name.get(f"dynamic_rcnn (rpn nms {BASELINE_NMS})")]
    if pair[0] is None or pair[1] is None:
        return []
    proposals, resized = rpn_training_inputs(pair[0], images, targets)
    gen = torch.Generator().manual_seed(SEED)
    costs = []
    cands: List[Tuple[Candidate, Candidate]] = []
    for s in pair:
        heads = s.model.roi_heads
        _, _, labels, reg = heads.select_training_samples(list(proposals), resized)
        n = sum(lab.shape[0] for lab in labels)
        num_classes = heads.box_predictor.cls_score.out_features
        logits = torch.randn(n, num_classes, generator=gen).to(device).requires_grad_()
        deltas = torch.randn(n, 4 * num_classes, generator=gen).to(device).requires_grad_()

        def select(heads: nn.Module = heads) -> None:
            heads.select_training_samples(list(proposals), resized)

        def loss(s: Subject = s, labels: List[Tensor] = labels, reg: List[Tensor] = reg,
                 logits: Tensor = logits, deltas: Tensor = deltas) -> None:
            box_loss_step(s, labels, reg, logits, deltas)

        cands.append((Candidate(select), Candidate(loss)))
        costs.append(StageCost(s.variant.name, math.nan, math.nan))
    for rep in range(-2, reps):
        for k in (range(2) if rep % 2 == 0 else range(1, -1, -1)):
            t_sel = time_once(cands[k][0], device)
            t_loss = time_once(cands[k][1], device)
            if rep >= 0:
                costs[k].select_samples_ms.append(t_sel * 1e3)
                costs[k].loss_samples_ms.append(t_loss * 1e3)
    for c in costs:
        c.select_ms = statistics.median(c.select_samples_ms)
        c.loss_ms = statistics.median(c.loss_samples_ms)
    return costs
