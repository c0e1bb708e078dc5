"""Optimizer and learning-rate schedule: SGD with momentum, linear warmup, step decay."""

from __future__ import annotations

from typing import Sequence, Tuple

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR


def milestones_for(max_iter: int, steps: Sequence[float]) -> Tuple[int, ...]:
    """Decay iterations for a run of max_iter iterations: round(fraction * max_iter).
    With the 1x fractions (8/12, 11/12) and 90k iterations: (60000, 82500)."""
    return tuple(int(round(s * max_iter)) for s in steps)


class WarmupMultiStep:
    """lr factor of iteration i (0-based, the iteration the optimizer step belongs to).

    Linear warmup (maskrcnn-benchmark's): from warmup_factor at i=0 towards 1 at
    i=warmup_iters; times gamma ** (number of milestones <= i).

    A callable object rather than a lambda because LambdaLR saves the __dict__ of
    callable objects in its state_dict: the schedule travels with the checkpoint, and it
    holds only numbers, so the checkpoint still loads with weights_only=True.

    Args:
        milestones: increasing iterations from which on the factor has one more gamma.
        gamma: the decay at each milestone.
        warmup_iters: the iterations of the warmup (0: none).
        warmup_factor: the factor at iteration 0 of the warmup.
    """

    def __init__(self, milestones: Sequence[int], gamma: float = 0.1,
                 warmup_iters: int = 0, warmup_factor: float = 1.0 / 3.0) -> None:
        if list(milestones) != sorted(milestones):
            raise ValueError(f"milestones must be increasing, got {list(milestones)}")
        self.milestones = [int(m) for m in milestones]
        self.gamma = float(gamma)
        self.warmup_iters = int(warmup_iters)
        self.warmup_factor = float(warmup_factor)

    def __call__(self, iteration: int) -> float:
        factor = 1.0
        if iteration < self.warmup_iters:
            alpha = iteration / self.warmup_iters
            factor = self.warmup_factor * (1.0 - alpha) + alpha
        decays = sum(1 for m in self.milestones if m <= iteration)
        return factor * self.gamma ** decays


def build_optimizer(model: nn.Module, lr: float, momentum: float = 0.9,
                    weight_decay: float = 1e-4) -> torch.optim.SGD:
    """SGD over the trainable parameters, weight decay on all of them (torchvision's and
    detectron2's default).

    Args:
        model: the model whose parameters with requires_grad are optimized.
        lr: the base learning rate (the scheduler multiplies it).
        momentum: SGD momentum.
        weight_decay: SGD weight decay.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, max_iter: int, steps: Sequence[float],
                    gamma: float = 0.1, warmup_iters: int = 0,
                    warmup_factor: float = 1.0 / 3.0) -> LambdaLR:
    """LambdaLR stepped once per iteration: after k steps the lr is base * factor(k), with
    factor a WarmupMultiStep.

    Args:
        optimizer: the optimizer whose learning rates are scheduled.
        max_iter: the run's iterations.
        steps: fractions of max_iter at which the lr is multiplied by gamma.
        gamma: the decay at each step.
        warmup_iters: iterations of linear warmup (at most max_iter).
        warmup_factor: the lr factor at the start of the warmup.
    """
    schedule = WarmupMultiStep(milestones_for(max_iter, steps), gamma,
                               min(warmup_iters, max_iter), warmup_factor)
    return LambdaLR(optimizer, schedule)
