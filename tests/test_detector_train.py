"""A training step and inference of every dynrcnn.modeling detector on the CPU (tiny
backbone, 128-px images), with and without ground truth; the paper's ResNet-50 (slow)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("torchvision")

from modeling_helpers import (  # noqa: E402
    MASK_ARCHS,
    NUM_CLASSES,
    SIZE,
    SMALL,
    build,
    expected_loss_keys,
    make_batch,
    train_step,
)

from dynrcnn.modeling import ARCHS, build_detector  # noqa: E402

# One intra-op thread (conftest.single_thread): these models are tiny, and on a shared
# machine multi-threaded small convolutions are much slower than one thread.
pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.mark.parametrize("arch", ARCHS)
def test_train_step_and_eval(arch):
    model = build(arch)
    images, targets = make_batch((3, 2), seed=1)
    losses = train_step(model, images, targets)
    assert set(losses) == expected_loss_keys(arch)
    for name, value in losses.items():
        assert value.dim() == 0 and torch.isfinite(value), (name, value)
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0

    model.eval()
    with torch.no_grad():
        out = model(images)
    assert len(out) == 2
    for det in out:
        k = det["boxes"].shape[0]
        assert det["boxes"].shape == (k, 4)
        assert det["labels"].shape == (k,) and det["scores"].shape == (k,)
        assert k > 0  # random weights still score above 0.05 with few classes
        if arch in MASK_ARCHS:
            assert det["masks"].shape == (k, 1, SIZE, SIZE)
        else:
            assert "masks" not in det


@pytest.mark.parametrize("arch", ARCHS)
def test_images_without_ground_truth(arch):
    model = build(arch)
    images, targets = make_batch((0, 2), seed=2)
    assert targets[0]["boxes"].shape == (0, 4)
    losses = train_step(model, images, targets)
    assert all(torch.isfinite(v) for v in losses.values())
    images, targets = make_batch((0, 0), seed=3)
    losses = train_step(model, images, targets)
    assert all(torch.isfinite(v) for v in losses.values())
    box_loss = "loss_box_reg_stage1" if arch == "cascade_rcnn" else "loss_box_reg"
    assert float(losses[box_loss].detach()) == 0.0


# --------------------------------------------------------------------------- paper backbone


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["dynamic_rcnn", "cascade_rcnn", "dynamic_mask_rcnn"])
def test_resnet50_train_step(arch):
    torch.manual_seed(0)
    model = build_detector(arch, backbone="resnet50_fpn", num_classes=NUM_CLASSES, **SMALL)
    images, targets = make_batch((2, 1), seed=14)
    losses = train_step(model, images, targets)
    assert set(losses) == expected_loss_keys(arch)
    assert all(torch.isfinite(v) for v in losses.values())


@pytest.mark.parametrize("variant", ["cls_fixed", "cls_half", "cls_soft", "obj_floor",
                                     "t_cap"])
@pytest.mark.parametrize("arch", ["dynamic_rcnn", "dynamic_mask_rcnn"])
def test_train_step_of_each_variant(arch, variant):
    """Issue 18's variants train end to end (T raised so that they differ from the paper)."""
    from dynrcnn.dynamic import DynamicConfig

    model = build(arch, dynamic=DynamicConfig(init_iou=0.6, iou_floor=0.6, variant=variant))
    images, targets = make_batch((3, 0), seed=2)
    losses = train_step(model, images, targets)
    assert set(losses) == expected_loss_keys(arch)
    assert all(torch.isfinite(v) for v in losses.values())
    assert all(p.grad is not None and torch.isfinite(p.grad).all()
               for p in model.parameters() if p.requires_grad)
