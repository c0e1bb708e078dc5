"""DynamicConfig.stats_with_gt (issue 9, point 6): the authors' statistics over the
proposals plus the appended ground-truth copies; off (the default) is the paper's, over the
proposals only. Labels, matched indices and sampling are the same either way."""

from __future__ import annotations

from typing import List, Tuple

import pytest
import torch
from helpers import generator, make_proposals, random_boxes
from torch import Tensor

from dynrcnn.dynamic import DynamicConfig
from dynrcnn.modeling import build_detector
from dynrcnn.modeling.dynamic_roi_heads import DynamicRoIHeads
from dynrcnn.ops import _reference, splits_from_counts

K_IOU, K_ERR = 5, 3


def heads(stats_with_gt: bool, per_image: bool = False) -> DynamicRoIHeads:
    config = DynamicConfig(k_iou=K_IOU, k_err=K_ERR, interval=4, stats_with_gt=stats_with_gt,
                           per_image=per_image, init_iou=0.5, iou_floor=0.5)
    model = build_detector("dynamic_rcnn", backbone="tiny_fpn", num_classes=4, dynamic=config,
                           min_size=64, max_size=64)
    assert isinstance(model.roi_heads, DynamicRoIHeads)
    return model.roi_heads.train()


def batch(seed: int) -> Tuple[List[Tensor], List[Tensor], List[Tensor]]:
    """Three images (the last without ground truth), float32 proposals and targets."""
    gen = generator(seed)
    gts = [random_boxes(4, gen), random_boxes(2, gen), torch.zeros(0, 4, dtype=torch.float64)]
    props = [make_proposals(g, 40, gen) for g in gts]
    labels = [torch.randint(1, 4, (g.shape[0],), generator=gen) for g in gts]
    return ([p.float() for p in props], [g.float() for g in gts], labels)


def reference(props: List[Tensor], gts: List[Tensor], per_image: bool) -> Tuple[Tensor, Tensor]:
    """kth_iou, kth_err of the pure-torch reference over exactly these boxes."""
    scale = 1 if per_image else len(props)
    r = _reference.dynamic_match(
        torch.cat(props), torch.cat(gts), splits_from_counts([p.shape[0] for p in props], "cpu"),
        splits_from_counts([g.shape[0] for g in gts], "cpu"), torch.tensor(0.5), K_IOU * scale,
        K_ERR * scale, (10.0, 10.0, 5.0, 5.0), per_image)
    return r.kth_iou, r.kth_err


def recorded(h: DynamicRoIHeads) -> Tuple[float, float]:
    state = h.dynamic_state
    return float(state.iou_hist[0]), float(state.err_hist[0])


@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_statistics_follow_the_option(seed: int, per_image: bool) -> None:
    props, gts, _ = batch(seed)
    with_copies = [torch.cat([p, g]) for p, g in zip(props, gts)]
    for on, boxes in ((False, props), (True, with_copies)):
        h = heads(on, per_image)
        h.match_proposals(props, gts)
        iou, err = reference(boxes, gts, per_image)
        if per_image:  # DynamicState records the mean over the images that have one
            iou = iou[~torch.isnan(iou)].mean()
            err = err[~torch.isnan(err)].mean()
        got_iou, got_err = recorded(h)
        assert got_iou == pytest.approx(float(iou), abs=1e-6)
        assert got_err == pytest.approx(float(err), abs=1e-6)


def test_copies_raise_the_iou_statistic_and_zero_the_error() -> None:
    """With more copies than k per batch, the authors' statistics are IoU 1 and error 0:
    the definition that collapses beta on crowded images."""
    props, gts, _ = batch(3)
    props = [p + 0.5 for p in props]  # no proposal is an exact copy of a ground truth
    on, off = heads(True), heads(False)
    for h in (on, off):
        h.dynamic_state.config.k_err = 1  # 1 * 3 images <= 6 copies
        h.match_proposals(props, gts)
    assert recorded(on)[1] == 0.0
    assert recorded(off)[1] > 0.0
    assert recorded(on)[0] >= recorded(off)[0]


def test_match_rows_are_the_proposals_either_way() -> None:
    props, gts, _ = batch(4)
    a = heads(False).match_proposals(props, gts)
    b = heads(True).match_proposals(props, gts)
    assert a.matched_idxs.shape[0] == sum(p.shape[0] for p in props)
    for x, y in zip(a[:3], b[:3]):
        assert torch.equal(x, y)


def test_sampling_is_unchanged_by_the_option() -> None:
    props, gts, labels = batch(5)
    targets = [{"boxes": g, "labels": lab} for g, lab in zip(gts, labels)]
    outs = []
    for on in (False, True):
        h = heads(on)
        torch.manual_seed(11)
        outs.append(h.select_training_samples(props, targets))
    for xs, ys in zip(*outs):
        for x, y in zip(xs, ys):
            assert torch.equal(x, y)


def test_default_is_off() -> None:
    assert DynamicConfig().stats_with_gt is False
