"""dynrcnn.modeling's builder: architectures, backbones, defaults, bad arguments, and
weights (local files, faster -> dynamic, equivalent inference) on the CPU."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

pytest.importorskip("torchvision")

from modeling_helpers import NUM_CLASSES, SMALL, build, make_batch, train_step  # noqa: E402
from torchvision.models.detection.roi_heads import RoIHeads  # noqa: E402

from dynrcnn.dynamic import DynamicConfig  # noqa: E402
from dynrcnn.modeling import ARCHS, BACKBONES, DynamicRoIHeads, build_backbone, build_detector  # noqa: E402

# One intra-op thread (conftest.single_thread): these models are tiny, and on a shared
# machine multi-threaded small convolutions are much slower than one thread.
pytestmark = pytest.mark.usefixtures("single_thread")


# --------------------------------------------------------------------------- API / builder


def test_import_dynrcnn_does_not_import_torchvision():
    code = "import sys, dynrcnn; assert 'torchvision' not in sys.modules, 'torchvision imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_available_archs_and_backbones():
    assert set(ARCHS) == {"faster_rcnn", "dynamic_rcnn", "cascade_rcnn", "mask_rcnn",
                          "dynamic_mask_rcnn"}
    assert {"resnet50_fpn", "resnet101_fpn", "resnet18_fpn", "tiny_fpn"} <= set(BACKBONES)


def test_builder_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="unknown arch"):
        build_detector("yolo", backbone="tiny_fpn")
    with pytest.raises(ValueError, match="unknown backbone"):
        build_detector("faster_rcnn", backbone="vgg16")
    with pytest.raises(ValueError, match="dynamic"):
        build_detector("faster_rcnn", backbone="tiny_fpn", dynamic=DynamicConfig())
    with pytest.raises(ValueError, match="cascade_"):
        build_detector("faster_rcnn", backbone="tiny_fpn", cascade_box_loss_beta=1.0)
    with pytest.raises(FileNotFoundError):
        build_detector("faster_rcnn", backbone="tiny_fpn", weights=tmp_path / "missing.pt")


def test_baseline_is_torchvision_faster_rcnn_and_dynamic_defaults():
    faster = build_detector("faster_rcnn", backbone="tiny_fpn", num_classes=NUM_CLASSES)
    assert type(faster.roi_heads) is RoIHeads
    assert faster.roi_heads.proposal_matcher.high_threshold == 0.5
    assert faster.roi_heads.proposal_matcher.low_threshold == 0.5
    assert faster.rpn.nms_thresh == 0.7
    dynamic = build_detector("dynamic_rcnn", backbone="tiny_fpn", num_classes=NUM_CLASSES,
                             dynamic=DynamicConfig(interval=7))
    assert isinstance(dynamic.roi_heads, DynamicRoIHeads)
    assert dynamic.rpn.nms_thresh == 0.85
    assert dynamic.roi_heads.dynamic_state.config.interval == 7
    assert "roi_heads.dynamic_state.iou_thr" in dynamic.state_dict()
    assert "roi_heads.dynamic_state.beta" in dynamic.state_dict()
    assert float(dynamic.roi_heads.dynamic_state.iou_thr) == pytest.approx(0.4)
    # torchvision knobs pass through
    tuned = build_detector("dynamic_rcnn", backbone="tiny_fpn", num_classes=NUM_CLASSES,
                           rpn_nms_thresh=0.6, min_size=200, max_size=300,
                           box_detections_per_img=7, box_batch_size_per_image=32)
    assert tuned.rpn.nms_thresh == 0.6
    assert tuned.transform.min_size == (200,) and tuned.transform.max_size == 300
    assert tuned.roi_heads.detections_per_img == 7
    assert tuned.roi_heads.fg_bg_sampler.batch_size_per_image == 32


def test_dynamic_state_moves_with_the_model():
    model = build("dynamic_rcnn")
    model.to(torch.float64)
    assert model.roi_heads.dynamic_state.iou_thr.dtype == torch.float64
    names = dict(model.named_modules())
    assert "roi_heads.dynamic_state" in names


# --------------------------------------------------------------------------- equivalences


def test_dynamic_and_faster_have_identical_inference():
    images, _ = make_batch((2, 1), seed=5)
    faster = build("faster_rcnn", rpn_nms_thresh=0.85).eval()
    torch.manual_seed(99)
    dynamic = build_detector("dynamic_rcnn", backbone="tiny_fpn", num_classes=NUM_CLASSES,
                             **SMALL).eval()
    result = dynamic.load_state_dict(faster.state_dict(), strict=False)
    assert result.unexpected_keys == []
    assert all(".dynamic_state." in k for k in result.missing_keys)
    with torch.no_grad():
        a, b = faster(images), dynamic(images)
    assert any(det["boxes"].shape[0] > 0 for det in a)
    for da, db in zip(a, b):
        assert da.keys() == db.keys()
        for key in da:
            torch.testing.assert_close(da[key], db[key], rtol=0, atol=0)


@pytest.mark.parametrize("arch", ["faster_rcnn", "dynamic_rcnn", "cascade_rcnn",
                                  "dynamic_mask_rcnn"])
def test_local_weights_round_trip(arch, tmp_path):
    images, targets = make_batch((2, 1), seed=6)
    model = build(arch)
    if arch.startswith("dynamic"):
        train_step(model, images, targets)  # a recorded statistic travels with the weights
    path = tmp_path / "model.pt"
    torch.save(model.state_dict(), path)
    torch.manual_seed(1234)  # different init: the file must supply every weight
    loaded = build_detector(arch, backbone="tiny_fpn", num_classes=NUM_CLASSES,
                            weights=path, **SMALL)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, rtol=0, atol=0,
                                   equal_nan=True)
    if arch.startswith("dynamic"):
        assert loaded.roi_heads.dynamic_state.records == 1
    model.eval()
    loaded.eval()
    with torch.no_grad():
        for da, db in zip(model(images), loaded(images)):
            for key in da:
                torch.testing.assert_close(da[key], db[key], rtol=0, atol=0)


def test_faster_checkpoint_loads_into_dynamic(tmp_path):
    path = tmp_path / "faster.pt"
    torch.save({"model": build("faster_rcnn").state_dict()}, path)
    dynamic = build_detector("dynamic_rcnn", backbone="tiny_fpn", num_classes=NUM_CLASSES,
                             weights=path, **SMALL)
    assert float(dynamic.roi_heads.dynamic_state.beta) == 1.0
    with pytest.raises(RuntimeError, match="does not fit"):
        build_detector("cascade_rcnn", backbone="tiny_fpn", num_classes=NUM_CLASSES,
                       weights=path, **SMALL)


def test_resnet_backbone_from_local_classification_weights(tmp_path):
    from torchvision.models import resnet18
    from torchvision.ops.misc import FrozenBatchNorm2d

    trunk = resnet18()
    path = tmp_path / "resnet18.pth"
    torch.save(trunk.state_dict(), path)
    backbone = build_backbone("resnet18_fpn", weights=path)
    torch.testing.assert_close(backbone.body.conv1.weight, trunk.conv1.weight)
    assert isinstance(backbone.body.bn1, FrozenBatchNorm2d)
    assert not backbone.body.layer1[0].conv1.weight.requires_grad  # 3 trainable stages
    assert backbone.body.layer2[0].conv1.weight.requires_grad
    scratch = build_backbone("resnet18_fpn")
    assert isinstance(scratch.body.bn1, torch.nn.BatchNorm2d)
    assert all(p.requires_grad for p in scratch.parameters())
