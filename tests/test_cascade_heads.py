"""Cascade R-CNN's RoI heads: stage loss weights, layout, and inference that refines boxes
and averages the stages' scores."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("torchvision")

from modeling_helpers import NUM_CLASSES, SIZE, build, heads_inputs, make_batch  # noqa: E402
from torchvision.ops import MultiScaleRoIAlign  # noqa: E402

from dynrcnn.modeling import CascadeRoIHeads  # noqa: E402

# One intra-op thread (conftest.single_thread): these models are tiny, and on a shared
# machine multi-threaded small convolutions are much slower than one thread.
pytestmark = pytest.mark.usefixtures("single_thread")


def test_cascade_stage_losses_are_weighted():
    images, targets = make_batch((3, 2), seed=4)
    losses = {}
    for name, weights in (("default", None), ("ones", (1.0, 1.0, 1.0))):
        extra = {} if weights is None else {"cascade_stage_loss_weights": weights}
        model = build("cascade_rcnn", **extra)
        torch.manual_seed(123)  # same RPN / RoI sampling in both runs
        model.train()
        losses[name] = model(images, targets)
    for stage, w in ((1, 1.0), (2, 0.5), (3, 0.25)):
        for kind in ("classifier", "box_reg"):
            key = f"loss_{kind}_stage{stage}"
            torch.testing.assert_close(losses["default"][key], w * losses["ones"][key])


def test_cascade_heads_layout():
    model = build("cascade_rcnn")
    heads = model.roi_heads
    assert isinstance(heads, CascadeRoIHeads) and heads.num_stages == 3
    assert heads.iou_thresholds == (0.5, 0.6, 0.7)
    assert [c.weights for c in heads.stage_coders] == [
        (10.0, 10.0, 5.0, 5.0), (20.0, 20.0, 10.0, 10.0), (30.0, 30.0, 15.0, 15.0)]
    assert all(p.bbox_pred.out_features == 4 for p in heads.stage_predictors)
    assert len({id(h) for h in heads.stage_heads}) == 3


def test_cascade_inference_refines_and_averages_stage_scores():
    """mmdetection's simple_test: stage s sees stage s-1's refined boxes, the score is the
    softmax of the mean of the stages' logits, the boxes are the last stage's."""
    torch.manual_seed(0)
    heads = CascadeRoIHeads.build(MultiScaleRoIAlign(["0"], 7, 2), in_channels=4 * 49,
                                  num_classes=NUM_CLASSES, representation_size=16,
                                  score_thresh=0.0, nms_thresh=1.0,
                                  detections_per_img=10_000).eval()
    gen = torch.Generator().manual_seed(15)
    features, proposals, shapes, _ = heads_inputs((2,), 0.2, gen, per_gt=5)
    pooled_boxes, outputs = [], []
    heads.box_roi_pool.register_forward_pre_hook(
        lambda mod, args: pooled_boxes.append([b.clone() for b in args[1]]))
    for predictor in heads.stage_predictors:
        predictor.register_forward_hook(lambda mod, args, out: outputs.append(out))
    with torch.no_grad():
        result, losses = heads(features, proposals, shapes)
    assert losses == {} and len(pooled_boxes) == 3
    torch.testing.assert_close(pooled_boxes[0][0], proposals[0])
    for s in (1, 2):
        expected = heads.stage_coders[s - 1].decode_single(outputs[s - 1][1],
                                                           pooled_boxes[s - 1][0])
        expected = expected.clamp(min=0, max=SIZE)
        torch.testing.assert_close(pooled_boxes[s][0], expected)
    mean_logits = sum(out[0] for out in outputs) / 3
    probs = torch.softmax(mean_logits, dim=1)[:, 1:].flatten()
    scores = result[0]["scores"]
    assert scores.numel() == probs.numel()
    torch.testing.assert_close(scores.sort().values, probs.sort().values)
    final = heads.stage_coders[2].decode_single(outputs[2][1], pooled_boxes[2][0])
    final = final.clamp(min=0, max=SIZE)
    assert torch.isclose(result[0]["boxes"][:, None], final[None]).all(-1).any(-1).all()
