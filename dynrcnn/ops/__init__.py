"""The fused ops: box_iou, dynamic_match, dynamic_smooth_l1 (see DESIGN.md, "Op contracts"),
and the training step's other hot CPU ops: batched_nms_topk (the RPN's proposal filter) and
roi_align (torchvision's results, a faster CPU backward)."""

from dynrcnn.ops._extension import cuda_kernels_compiled, extension_available
from dynrcnn.ops._reference import MatchResult
from dynrcnn.ops.batched_nms import batched_nms_topk
from dynrcnn.ops.box_iou import box_iou
from dynrcnn.ops.dynamic_match import dynamic_match, splits_from_counts
from dynrcnn.ops.dynamic_smooth_l1 import DynamicSmoothL1Function, dynamic_smooth_l1
from dynrcnn.ops.roi_align import roi_align

if extension_available():
    from dynrcnn.ops import _fake  # noqa: F401  (registers the fake kernels)

__all__ = [
    "MatchResult",
    "batched_nms_topk",
    "box_iou",
    "dynamic_match",
    "dynamic_smooth_l1",
    "DynamicSmoothL1Function",
    "roi_align",
    "splits_from_counts",
    "extension_available",
    "cuda_kernels_compiled",
]
