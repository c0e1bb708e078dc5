"""ONNX export of a detector (its stock torchvision form, see torchvision_io).

What works with torch 2.14 / torchvision 0.29, measured (README, "Start from a torchvision
model"): torch's default exporter (`dynamo=True`, torch.export) refuses torchvision's
detectors: `GuardOnDataDependentSymNode: Could not guard on data-dependent expression ...`
in `torchvision/ops/boxes.py` (`batched_nms`: the number of boxes after score filtering is
data-dependent). The TorchScript-based exporter (`dynamo=False`, deprecated upstream, the
one torchvision's own ONNX tests use, opset 11) exports them, and onnxruntime then gives
PyTorch's detections -- for images that the model's transform does not resize: ONNX's
Resize and torch's bilinear interpolation disagree for most scale factors. So the graph is
exported for ONE fixed input, a float image [3, S, S] in [0, 1] with S = the model's
min_size (which the transform leaves as it is); onnxruntime rejects any other shape
instead of answering wrongly. Resize your images to S x S first (and scale the boxes back).
"""

from __future__ import annotations

import io
import json
import warnings
from typing import Any, Dict, List, Optional

import torch
from torchvision.models.detection.faster_rcnn import FasterRCNN

from dynrcnn.modeling.torchvision_io import to_torchvision

ONNX_OPSET = 11


def onnx_input_size(model: FasterRCNN) -> int:
    """S of the [3, S, S] input: the smallest min_size (the transform resizes nothing)."""
    size = min(int(s) for s in model.transform.min_size)
    if size > model.transform.max_size:
        raise ValueError(f"min_size {size} > max_size {model.transform.max_size}")
    return size


def export_onnx(model: FasterRCNN,
                categories: Optional[List[Dict[str, Any]]] = None) -> bytes:
    """The ONNX model (bytes) of `model`'s stock torchvision form, in eval mode: input
    `image` float32 [3, S, S] (see onnx_input_size), outputs `boxes` [N, 4], `labels` [N],
    `scores` [N] (and `masks` [N, 1, S, S] for Mask R-CNN). The categories and S are stored
    in the model's metadata (`categories`, `input_size`). Needs the `onnx` package."""
    try:
        import onnx
    except ImportError:
        raise ImportError("ONNX export needs the onnx package: pip install onnx") from None
    stock = to_torchvision(model).cpu().eval()
    size = onnx_input_size(stock)
    outputs = ["boxes", "labels", "scores"] + (["masks"] if stock.roi_heads.has_mask() else [])
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The legacy exporter's deprecation and tracer notices: expected, see module doc.
        warnings.simplefilter("ignore")
        torch.onnx.export(stock, ([torch.rand(3, size, size)],), buffer, dynamo=False,
                          opset_version=ONNX_OPSET, input_names=["image"],
                          output_names=outputs)
    proto = onnx.load_from_string(buffer.getvalue())
    for key, value in (("categories", json.dumps(list(categories or []))),
                       ("input_size", str(size))):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    return proto.SerializeToString()
