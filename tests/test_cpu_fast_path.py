"""The detectors' CPU fast path (dynrcnn's NMS and roi_align in torchvision's RPN and RoI
poolers) changes nothing but speed: the same proposals, losses, gradients and detections bit
for bit as torchvision's modules, and exports are stock torchvision."""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision.models.detection as tvd
from conftest import requires_extension
from modeling_helpers import build, make_batch
from torchvision.models.detection.rpn import RegionProposalNetwork
from torchvision.ops import MultiScaleRoIAlign

from dynrcnn.dynamic import DynamicConfig
from dynrcnn.modeling import (
    make_dynamic,
    script_detector,
    to_torchvision,
    use_cpu_fast_path,
    use_stock_modules,
)
from dynrcnn.modeling.cpu_fast_path import FastMultiScaleRoIAlign, FastProposalFilterRPN

pytestmark = [requires_extension, pytest.mark.usefixtures("single_thread")]

# The paper's RPN: ~3000 candidates an image at 128 px, so batched_nms takes torchvision's
# per-level path (boxes.numel() > 4000); the small setting takes its offset-trick path.
PAPER_RPN = dict(rpn_pre_nms_top_n_train=2000, rpn_post_nms_top_n_train=1000,
                 rpn_pre_nms_top_n_test=1000, rpn_post_nms_top_n_test=1000,
                 rpn_nms_thresh=0.85)


def pools(model):
    return [m for m in model.modules() if isinstance(m, MultiScaleRoIAlign)]


def assert_fast(model, fast: bool) -> None:
    rpn_cls = FastProposalFilterRPN if fast else RegionProposalNetwork
    pool_cls = FastMultiScaleRoIAlign if fast else MultiScaleRoIAlign
    assert type(model.rpn) is rpn_cls
    assert pools(model) and all(type(p) is pool_cls for p in pools(model))


class Recorder:
    """The RPN's proposals of the last forward pass."""

    def __init__(self, model) -> None:
        self.proposals = None
        model.rpn.register_forward_hook(self)

    def __call__(self, module, args, output) -> None:
        self.proposals = [p.detach().clone() for p in output[0]]


@pytest.mark.parametrize("arch,rpn", [("dynamic_rcnn", PAPER_RPN), ("dynamic_rcnn", {}),
                                      ("faster_rcnn", PAPER_RPN), ("cascade_rcnn", {}),
                                      ("dynamic_mask_rcnn", {})])
def test_same_steps_and_detections_as_torchvisions_modules(arch, rpn):
    fast = build(arch, **rpn)
    assert_fast(fast, True)
    stock = use_stock_modules(copy.deepcopy(fast))
    assert_fast(stock, False)
    images, targets = make_batch((3, 0, 5), seed=2)
    models = (fast, stock)
    recorders = [Recorder(m) for m in models]
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for m in models]
    for step in range(2):
        losses, grads = [], []
        for model, optimizer in zip(models, optimizers):
            torch.manual_seed(step)  # the samplers draw the same for both
            model.train()
            optimizer.zero_grad()
            loss = model(images, targets)
            sum(loss.values()).backward()
            losses.append({k: v.detach() for k, v in loss.items()})
            grads.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
            optimizer.step()
        assert all(torch.equal(a, b) for a, b in zip(*(r.proposals for r in recorders)))
        assert sum(len(p) for p in recorders[0].proposals) > 0
        assert losses[0].keys() == losses[1].keys()
        assert all(torch.equal(losses[0][k], losses[1][k]) for k in losses[0])
        assert len(grads[0]) == len(grads[1])
        assert all(torch.equal(a, b) for a, b in zip(*grads))
    with torch.no_grad():
        out = [m.eval()(images) for m in models]
    for a, b in zip(*out):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_exports_are_stock_torchvision():
    model = build("dynamic_rcnn", **PAPER_RPN)
    images, targets = make_batch((2, 1), seed=3)
    model.train()
    sum(model(images, targets).values()).backward()
    stock = to_torchvision(model)  # tiny_fpn: no constructor, a stock copy
    assert_fast(stock, False)
    assert_fast(model, True)  # the source keeps its fast path
    with torch.no_grad():
        want, got = model.eval()(images), stock.eval()(images)
    assert all(torch.equal(a["boxes"], b["boxes"]) for a, b in zip(want, got))
    scripted = script_detector(model)
    graph = str(scripted.inlined_graph)  # torchvision's ops, none of dynrcnn's
    assert "torchvision::nms" in graph and "torchvision::roi_align" in graph
    assert "dynrcnn" not in graph
    _, scripted_out = scripted(images)
    assert all(torch.equal(a["boxes"], b["boxes"]) for a, b in zip(want, scripted_out))


def test_make_dynamic_gives_a_torchvision_model_the_fast_path_and_back():
    torch.manual_seed(0)
    model = tvd.fasterrcnn_mobilenet_v3_large_fpn(
        weights=None, weights_backbone=None, num_classes=3, min_size=128, max_size=128)
    make_dynamic(model, DynamicConfig(interval=1))
    assert_fast(model, True)
    converted = to_torchvision(model)  # its constructor rebuilds it: stock classes
    assert_fast(converted, False)


def test_only_torchvisions_exact_classes_are_swapped():
    class MyPool(MultiScaleRoIAlign):
        pass

    model = build("faster_rcnn")
    use_stock_modules(model)
    model.roi_heads.box_roi_pool.__class__ = MyPool
    use_cpu_fast_path(model)
    assert type(model.rpn) is FastProposalFilterRPN
    assert type(model.roi_heads.box_roi_pool) is MyPool  # a user's subclass keeps its code
