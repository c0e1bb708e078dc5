"""DynamicConfig.mask_iou (issue 36): the mask head's positives on a constructed batch, with
T held at 0.7. None: the classifier's positives (the mask head follows T); a number: the
sampled RoIs at IoU >= mask_iou, each with the gt it overlaps most, while the classifier's
labels and the box targets stay T's. Checked on what maskrcnn_loss receives."""

from __future__ import annotations

import copy
import json

import pytest
import torch

pytest.importorskip("torchvision")

from modeling_helpers import NUM_CLASSES, build  # noqa: E402
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead  # noqa: E402
from torchvision.models.detection.mask_rcnn import (  # noqa: E402
    MaskRCNNHeads,
    MaskRCNNPredictor,
    maskrcnn_resnet50_fpn,
)
from torchvision.models.detection.roi_heads import RoIHeads  # noqa: E402
from torchvision.ops import MultiScaleRoIAlign, box_iou  # noqa: E402

import dynrcnn.engine  # noqa: E402
import dynrcnn.modeling.dynamic_roi_heads as dyn_heads_module  # noqa: E402
from dynrcnn.cli import main  # noqa: E402
from dynrcnn.dynamic import MASK_IOU_DEFAULT, DynamicConfig  # noqa: E402
from dynrcnn.engine import TrainConfig, load_config, save_config  # noqa: E402
from dynrcnn.modeling import DynamicRoIHeads  # noqa: E402
from dynrcnn.modeling.torchvision_io import make_dynamic, to_torchvision  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")

SIZE = 128
GT = torch.tensor([[10.0, 10.0, 50.0, 50.0], [70.0, 60.0, 110.0, 100.0]])
GT_LABELS = torch.tensor([1, 2])
# A: gt 0 shifted 3 px (IoU 37/43 = 0.86); B: gt 1 shifted 11 px (IoU 29/51 = 0.57);
# C: gt 1 shifted 20 px (IoU 1/3); D: far from both (IoU 0)
PROPOSALS = torch.tensor([[13.0, 10.0, 53.0, 50.0], [81.0, 60.0, 121.0, 100.0],
                          [70.0, 80.0, 110.0, 120.0], [0.0, 100.0, 20.0, 120.0]])
A, B, C, D, GT0, GT1 = range(6)  # rows of the sampled RoIs: proposals, then the gt copies
# mask_iou -> (sampled rows that train the mask, the gt index of each)
EXPECTED = {None: ([A, GT0, GT1], [0, 0, 1]),  # the classifier's positives: IoU >= T
            0.5: ([A, B, GT0, GT1], [0, 1, 0, 1]),  # Mask R-CNN's: B too, on ITS gt (1)
            0.3: ([A, B, C, GT0, GT1], [0, 1, 1, 0, 1]),
            0.9: ([GT0, GT1], [0, 1]),  # above T: A is a box positive without a mask
            0.0: ([A, B, C, D, GT0, GT1], [0, 1, 1, 0, 0, 1])}  # D: ties go to gt 0


def held_t(mask_iou=None) -> DynamicConfig:
    """T = 0.7, never updated."""
    return DynamicConfig(init_iou=0.7, iou_floor=0.7, update_iou=False, update_beta=False,
                         interval=1, mask_iou=mask_iou)


def mask_heads(config: DynamicConfig) -> DynamicRoIHeads:
    """Small heads with a mask branch whose sampler keeps every RoI of the batch."""
    torch.manual_seed(0)
    return DynamicRoIHeads(
        MultiScaleRoIAlign(["0"], output_size=7, sampling_ratio=2),
        TwoMLPHead(4 * 7 * 7, 16), FastRCNNPredictor(16, NUM_CLASSES),
        batch_size_per_image=512, dynamic=config,
        mask_roi_pool=MultiScaleRoIAlign(["0"], output_size=14, sampling_ratio=2),
        mask_head=MaskRCNNHeads(4, (8,), 1), mask_predictor=MaskRCNNPredictor(8, 8, NUM_CLASSES),
    ).train()


def box_masks(boxes: torch.Tensor, size: int = SIZE) -> torch.Tensor:
    masks = torch.zeros(len(boxes), size, size, dtype=torch.uint8)
    for k, (x1, y1, x2, y2) in enumerate(boxes.round().long().tolist()):
        masks[k, y1:y2, x1:x2] = 1
    return masks


def targets(size: int = SIZE):
    return [{"boxes": GT.clone(), "labels": GT_LABELS.clone(), "masks": box_masks(GT, size)}]


@pytest.fixture
def spy(monkeypatch):
    """What the heads' forward gives the box loss and the mask loss."""
    seen = {}
    real_mask, real_box = dyn_heads_module.maskrcnn_loss, dyn_heads_module.dynamic_fastrcnn_loss

    def mask_loss(logits, rois, gt_masks, gt_labels, matched):
        seen["mask_rois"] = [r.clone() for r in rois]
        seen["mask_matched"] = [m.clone() for m in matched]
        return real_mask(logits, rois, gt_masks, gt_labels, matched)

    def box_loss(logits, deltas, labels, regression_targets, beta, *rest):
        seen["labels"] = [x.clone() for x in labels]
        seen["regression_targets"] = [x.clone() for x in regression_targets]
        return real_box(logits, deltas, labels, regression_targets, beta, *rest)

    monkeypatch.setattr(dyn_heads_module, "maskrcnn_loss", mask_loss)
    monkeypatch.setattr(dyn_heads_module, "dynamic_fastrcnn_loss", box_loss)
    return seen


def run_heads(mask_iou, spy):
    heads = mask_heads(held_t(mask_iou))
    gen = torch.Generator().manual_seed(0)
    features = {"0": torch.randn(1, 4, SIZE // 4, SIZE // 4, generator=gen)}
    _, losses = heads(features, [PROPOSALS.clone()], [(SIZE, SIZE)], targets())
    assert float(heads.dynamic_state.iou_thr) == pytest.approx(0.7)
    return dict(spy), losses


@pytest.mark.parametrize("mask_iou", list(EXPECTED))
def test_mask_positives_follow_mask_iou_and_box_targets_follow_t(mask_iou, spy):
    ref, ref_losses = run_heads(None, spy)
    got, losses = run_heads(mask_iou, spy)
    rows = torch.cat([PROPOSALS, GT])
    want_rows, want_matched = EXPECTED[mask_iou]
    torch.testing.assert_close(got["mask_rois"][0], rows[want_rows], rtol=0, atol=0)
    assert got["mask_matched"][0].tolist() == want_matched
    # each mask positive's gt is the one it overlaps most, at IoU >= mask_iou (or T)
    iou = box_iou(got["mask_rois"][0], GT)
    assert got["mask_matched"][0].tolist() == iou.argmax(dim=1).tolist()
    assert bool((iou.max(dim=1).values >= (0.7 if mask_iou is None else mask_iou)).all())
    # the classifier and the regressor: T's, whatever mask_iou is
    assert got["labels"][0].tolist() == [1, 0, 0, 0, 1, 2] == ref["labels"][0].tolist()
    assert torch.equal(got["regression_targets"][0], ref["regression_targets"][0])
    assert not got["regression_targets"][0][B].any()  # B: background, no box loss
    for key in ("loss_classifier", "loss_box_reg"):
        assert torch.equal(losses[key], ref_losses[key])
    assert torch.isfinite(losses["loss_mask"])


@pytest.mark.parametrize("mask_iou", [None, 0.5])
def test_mask_rois_diagnostic_counts_what_the_mask_head_trained_on(mask_iou, spy):
    """The logged mask_rois (per image, mean over the window) is the number of RoIs
    maskrcnn_loss received: 3 with the mask head following T, 4 with mask_iou 0.5."""
    heads = mask_heads(held_t(mask_iou))
    features = {"0": torch.randn(2, 4, SIZE // 4, SIZE // 4,
                                 generator=torch.Generator().manual_seed(0))}
    counts = []
    for _ in range(2):  # two iterations of two images: one with gt, one without
        empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
                 "masks": torch.zeros(0, SIZE, SIZE, dtype=torch.uint8)}
        heads(features, [PROPOSALS.clone(), PROPOSALS.clone()], [(SIZE, SIZE)] * 2,
              targets() + [empty])
        counts.append(sum(len(r) for r in spy["mask_rois"]))
    assert counts == [len(EXPECTED[mask_iou][0])] * 2
    got = heads.diagnostics.read()
    assert got["mask_rois"] == pytest.approx(sum(counts) / 2 / 2)  # per image, per iteration
    assert heads.diagnostics.read()["props_iou50"] is None  # a read starts a new window


def test_images_without_ground_truth_have_no_mask_positive():
    heads = mask_heads(held_t(0.0))
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
             "masks": torch.zeros(0, SIZE, SIZE, dtype=torch.uint8)}
    sampled = heads._sample([PROPOSALS.clone(), PROPOSALS.clone()], targets() + [empty])
    assert sampled.mask.positive[0].all() and not sampled.mask.positive[1].any()
    # select_training_samples keeps torchvision's contract (four lists)
    assert len(heads.select_training_samples([PROPOSALS.clone()], targets())) == 4


def test_invalid_values_name_the_field():
    for bad in (1.5, -0.1, float("nan"), "0.5", True):
        with pytest.raises(ValueError, match="mask_iou"):
            DynamicConfig(mask_iou=bad)
    assert DynamicConfig(mask_iou=1).mask_iou == 1.0
    assert DynamicConfig(mask_iou=None).mask_iou is None
    assert DynamicConfig().mask_iou == MASK_IOU_DEFAULT == 0.5  # issue 36's rule decided it


def test_a_detector_without_a_mask_branch_warns_when_set_to_something_else(recwarn):
    with pytest.warns(RuntimeWarning, match="mask_iou=0.6 is ignored"):
        build("dynamic_rcnn", dynamic=DynamicConfig(mask_iou=0.6))
    recwarn.clear()
    # the default (or None, the mask head at T) is no request a box detector ignores
    build("dynamic_rcnn", dynamic=DynamicConfig())
    build("dynamic_rcnn", dynamic=DynamicConfig(mask_iou=None))
    assert not [w for w in recwarn if "mask_iou" in str(w.message)]


def test_make_dynamic_on_torchvision_mask_rcnn():
    torch.manual_seed(0)
    model = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=3,
                                  min_size=64, max_size=64)
    stock = copy.deepcopy(model.state_dict())
    # without a config: the same choice as the detector built here (the default, 0.5)
    default = make_dynamic(copy.deepcopy(model)).roi_heads.dynamic_state.config.mask_iou
    built = build("dynamic_mask_rcnn").roi_heads.dynamic_state.config.mask_iou
    assert default == built == MASK_IOU_DEFAULT
    make_dynamic(model, held_t(0.5))
    heads = model.roi_heads
    assert isinstance(heads, DynamicRoIHeads) and heads.dynamic_state.config.mask_iou == 0.5
    sampled = heads._sample([PROPOSALS.clone()], targets())
    rows = torch.cat([PROPOSALS, GT])
    want_rows, want_matched = EXPECTED[0.5]
    positive = sampled.mask.positive[0]
    torch.testing.assert_close(sampled.rois[0][positive], rows[want_rows], rtol=0, atol=0)
    assert sampled.mask.matched[0][positive].tolist() == want_matched
    # a training step
    model.train()
    scale = 64 / SIZE
    batch = [{"boxes": GT * scale, "labels": GT_LABELS.clone(),
              "masks": box_masks(GT * scale, 64)}]
    losses = model([torch.rand(3, 64, 64)], batch)
    assert "loss_mask" in losses and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    # the export: stock torchvision with the weights it was made from (no optimizer step)
    back = to_torchvision(model)
    assert type(back.roi_heads) is RoIHeads and back.state_dict().keys() == stock.keys()
    for name, param in back.named_parameters():
        assert torch.equal(param, stock[name]), name


def test_inference_is_unchanged():
    """Same weights, same detections and masks; the option is not in the state_dict."""
    plain = build("dynamic_mask_rcnn", dynamic=DynamicConfig(mask_iou=None)).eval()
    fixed = build("dynamic_mask_rcnn").eval()  # the default: mask_iou 0.5
    assert plain.state_dict().keys() == fixed.state_dict().keys()
    torch.testing.assert_close(plain.state_dict(), fixed.state_dict(), rtol=0, atol=0,
                               equal_nan=True)  # NaN: the empty histories
    image = [torch.rand(3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))]
    with torch.no_grad():
        a, b = plain(image)[0], fixed(image)[0]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_option_reaches_the_cli_and_config_json(tmp_path, monkeypatch, capsys):
    seen = []
    monkeypatch.setattr(dynrcnn.engine, "train",
                        lambda config: seen.append(config) or {"iterations": 0})
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "--dynamic-mask-iou" in capsys.readouterr().out
    assert main(["train", "--arch", "dynamic_mask_rcnn", "--dynamic-mask-iou", "0.5"]) == 0
    assert seen[-1].dynamic.mask_iou == 0.5
    path = tmp_path / "config.json"
    save_config(seen[-1], str(path))
    assert json.loads(path.read_text())["dynamic"]["mask_iou"] == 0.5
    assert load_config(TrainConfig, str(path)) == seen[-1]
    assert main(["train", "--config", str(path), "--dynamic-mask-iou", "none"]) == 0
    assert seen[-1].dynamic.mask_iou is None
    assert main(["train", "--arch", "dynamic_mask_rcnn"]) == 0
    assert seen[-1].dynamic.mask_iou == 0.5  # the default
    assert main(["train", "--dynamic-mask-iou", "1.5"]) == 2
    assert "--dynamic-mask-iou" in capsys.readouterr().err
