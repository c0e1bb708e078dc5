"""From a stock torchvision detector to Dynamic R-CNN and back (issue 17): make_dynamic keeps
every weight, trains, and to_torchvision gives a model that loads strictly into the stock
constructor with the same detections; build_detector's resnet50_fpn_v2 / mobilenet layouts
are torchvision's, parameter for parameter."""

from __future__ import annotations

import pytest
import torch
import torchvision.models.detection as tvd
from modeling_helpers import SIZE, make_batch
from torchvision.models.detection.roi_heads import RoIHeads

from dynrcnn.dynamic import DynamicConfig
from dynrcnn.modeling import (
    CascadeRoIHeads,
    DynamicRoIHeads,
    NoTorchvisionConstructor,
    build_detector,
    make_dynamic,
    to_torchvision,
    torchvision_constructor,
)

NUM_CLASSES = 4
# box_score_thresh 0: a barely trained model still has detections to compare.
SETTINGS = dict(min_size=SIZE, max_size=SIZE, box_score_thresh=0.0,
                rpn_pre_nms_top_n_test=200, rpn_post_nms_top_n_test=100)
STOCK_KW = dict(num_classes=NUM_CLASSES, **SETTINGS)
CONSTRUCTORS = ["fasterrcnn_resnet50_fpn", "fasterrcnn_resnet50_fpn_v2",
                "fasterrcnn_mobilenet_v3_large_fpn", "maskrcnn_resnet50_fpn"]
DYNAMIC = DynamicConfig(k_iou=8, k_err=3, interval=1)  # T and beta move within one step


class CascadeAgnosticLike(torch.nn.Module):
    """A user's own box predictor (not torchvision's FastRCNNPredictor)."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.scores = torch.nn.Linear(channels, num_classes)
        self.deltas = torch.nn.Linear(channels, 4)

    def forward(self, x):
        x = x.flatten(1)
        return self.scores(x), self.deltas(x)


def stock(name: str, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return getattr(tvd, name)(weights=None, weights_backbone=None, **{**STOCK_KW, **kwargs})


def weights_of(model: torch.nn.Module) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items() if "dynamic_state" not in k}


def detections(model: torch.nn.Module, images) -> list:
    model.eval()
    with torch.no_grad():
        return model(images)


def assert_same_detections(expected, actual) -> None:
    assert len(expected) == len(actual)
    for e, a in zip(expected, actual):
        assert e["boxes"].shape == a["boxes"].shape
        torch.testing.assert_close(a["boxes"], e["boxes"], atol=1e-4, rtol=0)
        torch.testing.assert_close(a["scores"], e["scores"], atol=1e-5, rtol=0)
        assert torch.equal(a["labels"], e["labels"])
        if "masks" in e:
            torch.testing.assert_close(a["masks"], e["masks"], atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", CONSTRUCTORS)
def test_make_dynamic_trains_and_to_torchvision_loads_strictly(name):
    model = stock(name)
    before = weights_of(model)
    assert make_dynamic(model, DYNAMIC) is model
    assert isinstance(model.roi_heads, DynamicRoIHeads)
    assert model.rpn.nms_thresh == 0.85  # the paper's, for every arm
    after = weights_of(model)
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)  # every weight kept

    images, targets = make_batch((3, 2), seed=1)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    losses = model(images, targets)
    assert "loss_mask" in losses if name.startswith("mask") else "loss_mask" not in losses
    sum(losses.values()).backward()
    optimizer.step()
    state = model.roi_heads.dynamic_state
    assert float(state.iou_thr) > 0.4 or float(state.beta) < 1.0  # DLA / DSL did update

    expected = detections(model, images)
    assert sum(len(d["boxes"]) for d in expected) > 0
    spec = torchvision_constructor(model)
    assert spec.name == name
    assert spec.kwargs["rpn_nms_thresh"] == 0.85 and spec.kwargs["num_classes"] == NUM_CLASSES
    converted = to_torchvision(model)
    assert type(converted.roi_heads) is RoIHeads
    rebuilt = getattr(tvd, spec.name)(weights=None, weights_backbone=None, **spec.kwargs)
    rebuilt.load_state_dict(converted.state_dict(), strict=True)
    assert_same_detections(expected, detections(rebuilt, images))
    assert isinstance(model.roi_heads, DynamicRoIHeads)  # the source is left as it was


def test_make_dynamic_options_and_refusals():
    model = make_dynamic(stock("fasterrcnn_mobilenet_v3_large_fpn"), rpn_nms_thresh=None)
    assert model.rpn.nms_thresh == 0.7  # kept when the caller says so
    assert model.roi_heads.dynamic_state.config == DynamicConfig()  # the paper's defaults
    with pytest.raises(ValueError, match="already has DynamicRoIHeads"):
        make_dynamic(model)
    with pytest.raises(TypeError, match="FasterRCNN or MaskRCNN"):
        make_dynamic(torch.nn.Linear(2, 2))
    keypoint = tvd.keypointrcnn_resnet50_fpn(weights=None, weights_backbone=None,
                                             num_classes=2, num_keypoints=3)
    with pytest.raises(ValueError, match="keypoint"):
        make_dynamic(keypoint)
    cascade = build_detector("cascade_rcnn", "tiny_fpn", num_classes=NUM_CLASSES)
    assert isinstance(cascade.roi_heads, CascadeRoIHeads)
    with pytest.raises(TypeError, match="CascadeRoIHeads"):
        make_dynamic(cascade)
    with pytest.raises(NoTorchvisionConstructor, match="no torchvision equivalent"):
        to_torchvision(cascade)
    custom = stock("fasterrcnn_mobilenet_v3_large_fpn")
    custom.roi_heads.box_predictor = CascadeAgnosticLike(1024, NUM_CLASSES)
    with pytest.raises(NoTorchvisionConstructor, match="not torchvision's FastRCNNPredictor"):
        torchvision_constructor(custom)
    assert type(to_torchvision(custom).roi_heads.box_predictor) is CascadeAgnosticLike


@pytest.mark.parametrize("arch,backbone,name", [
    ("dynamic_rcnn", "resnet50_fpn", "fasterrcnn_resnet50_fpn"),
    ("dynamic_rcnn", "resnet50_fpn_v2", "fasterrcnn_resnet50_fpn_v2"),
    ("faster_rcnn", "mobilenet_v3_large_fpn", "fasterrcnn_mobilenet_v3_large_fpn"),
    ("dynamic_mask_rcnn", "resnet50_fpn_v2", "maskrcnn_resnet50_fpn_v2"),
])
def test_build_detector_layouts_are_torchvisions(arch, backbone, name):
    ours = build_detector(arch, backbone, num_classes=NUM_CLASSES, min_size=SIZE,
                          max_size=SIZE)
    spec = torchvision_constructor(ours)
    assert spec.name == name
    theirs = getattr(tvd, name)(weights=None, weights_backbone=None, **spec.kwargs)
    theirs.load_state_dict(to_torchvision(ours).state_dict(), strict=True)
    extra = {"rpn_nms_thresh": 0.85} if arch.startswith("dynamic") else {}
    assert spec.kwargs == {"num_classes": NUM_CLASSES, "min_size": SIZE, "max_size": SIZE,
                           **extra}


def test_backbone_without_constructor_converts_to_a_plain_faster_rcnn():
    torch.manual_seed(0)
    model = build_detector("dynamic_rcnn", "tiny_fpn", num_classes=NUM_CLASSES, **SETTINGS)
    with pytest.raises(NoTorchvisionConstructor, match="TorchScript"):
        torchvision_constructor(model)
    images, _ = make_batch((1, 1), seed=2)
    expected = detections(model, images)
    converted = to_torchvision(model)
    assert type(converted.roi_heads) is RoIHeads
    assert "roi_heads.dynamic_state.iou_thr" not in converted.state_dict()
    assert_same_detections(expected, detections(converted, images))


def test_a_frozen_bn_trunk_converts_to_the_stock_batchnorm_layout(tmp_path):
    """A model fine-tuned from weights has FrozenBatchNorm2d (no num_batches_tracked); the
    stock model built with weights=None has BatchNorm2d: still a strict load."""
    path = tmp_path / "stock.pth"
    torch.save(stock("fasterrcnn_resnet50_fpn").state_dict(), path)
    model = build_detector("dynamic_rcnn", "resnet50_fpn", num_classes=NUM_CLASSES,
                           weights=path, **SETTINGS)
    assert not any(k.endswith("num_batches_tracked") for k in model.state_dict()
                   if k.startswith("backbone.body"))
    images, _ = make_batch((2,), seed=3)
    expected = detections(model, images)
    spec = torchvision_constructor(model)
    rebuilt = getattr(tvd, spec.name)(weights=None, weights_backbone=None, **spec.kwargs)
    rebuilt.load_state_dict(to_torchvision(model).state_dict(), strict=True)
    assert_same_detections(expected, detections(rebuilt, images))
