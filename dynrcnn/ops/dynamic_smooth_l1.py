"""Dynamic SmoothL1: SmoothL1 whose beta is a device tensor, forward and backward fused."""

from __future__ import annotations

from typing import Optional, Union

import torch
from torch import Tensor

from dynrcnn.ops import _reference
from dynrcnn.ops._extension import use_kernels
from dynrcnn.ops._validation import (
    as_scalar_tensor,
    check_float,
    check_reduction,
    check_same_device,
    check_tensor,
)


class DynamicSmoothL1Function(torch.autograd.Function):
    """The loss as a Python autograd.Function over the forward and backward kernels.

    Gradients flow to `input` and `target` (d/d target = -d/d input); `beta` and `weight`
    are treated as constants. `dynamic_smooth_l1` does not need it: the op has the same
    autograd registered in C++ (csrc/ops/autograd/), which skips Python in backward. This
    class is for code that composes autograd.Functions, e.g. with custom double-backward
    or hooks on the context.
    """

    @staticmethod
    def forward(input: Tensor, target: Tensor, beta: Tensor, weight: Optional[Tensor],
                reduction: int) -> Tensor:
        """The loss; call it as `DynamicSmoothL1Function.apply(input, target, beta, weight,
        reduction)`. The arguments go to the kernel as they are: `dynamic_smooth_l1` checks
        and converts them first.

        Args:
            input: the prediction, a float tensor.
            target: the target, input's shape and dtype.
            beta: the SmoothL1 beta, a 0-dim float tensor on input's device.
            weight: multiplies the elementwise loss (input's shape), or None.
            reduction: 0 ('none'), 1 ('mean') or 2 ('sum').
        """
        return torch.ops.dynrcnn.dynamic_smooth_l1(input, target, beta, weight, reduction)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        """Save what backward needs.

        Args:
            ctx: the autograd context.
            inputs: forward's arguments (input, target, beta, weight, reduction).
            output: forward's result (not needed).
        """
        input, target, beta, weight, reduction = inputs
        ctx.save_for_backward(input, target, beta, weight)
        ctx.reduction = reduction

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        """Gradients of forward's arguments: for input, for target (its negative), and None
        for beta, weight and reduction.

        Args:
            ctx: the context setup_context filled.
            grad_output: gradient of the loss (0-dim for 'sum' and 'mean', input's shape
                for 'none').
        """
        input, target, beta, weight = ctx.saved_tensors
        needs_input, needs_target = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if not (needs_input or needs_target):
            return None, None, None, None, None
        grad = torch.ops.dynrcnn.dynamic_smooth_l1_backward(
            grad_output, input, target, beta, weight, ctx.reduction
        )
        return (grad if needs_input else None, -grad if needs_target else None,
                None, None, None)


def dynamic_smooth_l1(
    input: Tensor,
    target: Tensor,
    beta: Union[Tensor, float],
    weight: Optional[Tensor] = None,
    reduction: str = "sum",
) -> Tensor:
    """SmoothL1(input - target) with `beta` a 0-dim tensor on the inputs' device.

    loss = 0.5 * d^2 / beta if |d| < beta else |d| - 0.5 * beta; beta <= 1e-6 gives L1.
    The sum is computed in float32 (float64 for float64 inputs) in a fixed order: identical
    bits run to run.

    Args:
        input: the prediction, a float tensor of any shape.
        target: the target, input's shape and dtype.
        beta: the SmoothL1 beta: a 0-dim float tensor on input's device (no host sync), or a
            Python number.
        weight: optional, input's shape: multiplies the elementwise loss.
        reduction: 'sum' (the detectors' use), 'mean' or 'none'.

    Returns:
        The loss in input's dtype: 0-dim for 'sum' and 'mean', input's shape for 'none'.
    """
    check_tensor("input", input)
    check_tensor("target", target)
    check_float("input", input)
    if target.dtype != input.dtype:
        raise TypeError(f"target is {target.dtype} but input is {input.dtype}: use one dtype")
    if target.shape != input.shape:
        raise ValueError(
            f"target has shape {list(target.shape)} but input has {list(input.shape)}"
        )
    if weight is not None:
        check_tensor("weight", weight)
        check_float("weight", weight)
        if weight.shape != input.shape:
            raise ValueError(
                f"weight must have the input's shape {list(input.shape)}, got "
                f"{list(weight.shape)} (use weight.expand_as(input))"
            )
    check_same_device(input=input, target=target, weight=weight)
    beta_t = as_scalar_tensor("beta", beta, input)
    code = check_reduction(reduction)
    if not use_kernels(input.device):
        return _reference.dynamic_smooth_l1(input, target, beta_t, weight, reduction)
    if weight is not None and weight.dtype != input.dtype:
        weight = weight.to(input.dtype)
    return torch.ops.dynrcnn.dynamic_smooth_l1(input, target, beta_t, weight, code)
