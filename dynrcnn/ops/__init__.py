"""The fused ops: box_iou, dynamic_match, dynamic_smooth_l1 (see DESIGN.md, "Op contracts")."""

from dynrcnn.ops._extension import cuda_kernels_compiled, extension_available
from dynrcnn.ops._reference import MatchResult
from dynrcnn.ops.box_iou import box_iou
from dynrcnn.ops.dynamic_match import dynamic_match, splits_from_counts
from dynrcnn.ops.dynamic_smooth_l1 import DynamicSmoothL1Function, dynamic_smooth_l1

if extension_available():
    from dynrcnn.ops import _fake  # noqa: F401  (registers the fake kernels)

__all__ = [
    "MatchResult",
    "box_iou",
    "dynamic_match",
    "dynamic_smooth_l1",
    "DynamicSmoothL1Function",
    "splits_from_counts",
    "extension_available",
    "cuda_kernels_compiled",
]
