"""The paper's Figure 1 as training diagnostics (issue 9, point 5): proposals per image with
IoU >= 0.5 / 0.6 / 0.7, the KI-th largest IoU and the Kbeta-th smallest error, accumulated
on the device by MatchDiagnostics, written into log.jsonl by the trainer at log time and
drawn by `dynrcnn plot`."""

from __future__ import annotations

import os
from typing import List, Tuple

import pytest
import torch
from helpers import generator, make_proposals, random_boxes
from torch import Tensor

from dynrcnn.data import make_synthetic_coco
from dynrcnn.dynamic import DynamicConfig, MatchDiagnostics
from dynrcnn.engine import train
from dynrcnn.engine.logger import read_jsonl
from dynrcnn.engine.plots import plot_training_curves
from dynrcnn.engine.presets import small_cpu_config
from dynrcnn.modeling import build_detector
from dynrcnn.modeling.dynamic_roi_heads import DynamicRoIHeads, read_match_diagnostics
from dynrcnn.ops import _reference, splits_from_counts

KEYS = ("props_iou50", "props_iou60", "props_iou70", "kth_iou", "kth_err")


def heads(per_image: bool = False) -> DynamicRoIHeads:
    config = DynamicConfig(k_iou=4, k_err=2, interval=50, per_image=per_image)
    model = build_detector("dynamic_rcnn", backbone="tiny_fpn", num_classes=3, dynamic=config,
                           min_size=64, max_size=64)
    return model.roi_heads.train()


def batch(seed: int) -> Tuple[List[Tensor], List[Tensor]]:
    gen = generator(seed)
    gts = [random_boxes(3, gen), random_boxes(1, gen), torch.zeros(0, 4, dtype=torch.float64)]
    return [make_proposals(g, 30, gen).float() for g in gts], [g.float() for g in gts]


def recount(props: List[Tensor], gts: List[Tensor], h: DynamicRoIHeads) -> List[float]:
    """The five numbers of one iteration, from the reference's matched IoUs."""
    c = h.dynamic_state.config
    scale = 1 if c.per_image else len(props)
    r = _reference.dynamic_match(
        torch.cat(props), torch.cat(gts), splits_from_counts([p.shape[0] for p in props], "cpu"),
        splits_from_counts([g.shape[0] for g in gts], "cpu"), h.dynamic_state.iou_thr,
        c.k_iou * scale, c.k_err * scale, (10.0, 10.0, 5.0, 5.0), c.per_image)
    counts = [float((r.max_iou >= t).sum()) / len(props) for t in (0.5, 0.6, 0.7)]
    stats = [float(v[~torch.isnan(v)].mean()) if v.dim() else float(v)
             for v in (r.kth_iou, r.kth_err)]
    return counts + stats


@pytest.mark.parametrize("per_image", [False, True])
def test_values_equal_a_recount_of_the_matched_ious(per_image: bool) -> None:
    h = heads(per_image)
    expected = []
    for seed in (0, 1):
        props, gts = batch(seed)
        expected.append(recount(props, gts, h))
        h.match_proposals(props, gts)
    got = h.diagnostics.read()
    # mask_rois: no mask branch here, so no value
    assert list(got) == list(KEYS) + ["mask_rois"] and got["mask_rois"] is None
    for i, key in enumerate(KEYS):  # means over the two iterations of the window
        assert got[key] == pytest.approx((expected[0][i] + expected[1][i]) / 2, abs=1e-6)
    assert got["props_iou50"] >= got["props_iou60"] >= got["props_iou70"]


def test_a_read_starts_a_new_window() -> None:
    h = heads()
    props, gts = batch(2)
    h.match_proposals(props, gts)
    first = h.diagnostics.read()
    assert all(first[k] is not None for k in KEYS)
    assert set(h.diagnostics.read().values()) == {None}
    h.match_proposals(props, gts)
    assert h.diagnostics.read() == pytest.approx(first)


def test_nan_statistics_are_left_out_of_the_means() -> None:
    d = MatchDiagnostics()
    nan = torch.tensor(float("nan"))
    d.observe(torch.tensor([0.9, 0.65, 0.1]), 1, torch.tensor(0.8), nan)
    d.observe(torch.tensor([0.55]), 2, nan, nan)
    got = d.read()
    assert got["props_iou50"] == pytest.approx((2 / 1 + 1 / 2) / 2)
    assert got["props_iou60"] == pytest.approx((2 / 1 + 0 / 2) / 2)
    assert got["props_iou70"] == pytest.approx((1 / 1 + 0 / 2) / 2)
    assert got["kth_iou"] == pytest.approx(0.8)
    assert got["kth_err"] is None


def test_diagnostics_are_not_in_the_state_dict() -> None:
    h = heads()
    assert not any("diagnostics" in k for k in h.state_dict())


def test_models_without_dynamic_heads_have_none() -> None:
    model = build_detector("faster_rcnn", backbone="tiny_fpn", num_classes=3, min_size=64,
                           max_size=64)
    assert read_match_diagnostics(model) == {}


def test_trainer_logs_them_and_plot_draws_them(tmp_path) -> None:
    data = make_synthetic_coco(tmp_path / "data", num_train=8, num_val=2, image_size=(64, 64))
    out = str(tmp_path / "run")
    config = small_cpu_config(str(data.root), out, iterations=4, image_size=64, interval=2,
                              progress=False, log_period=2, eval_period=0, plot=False)
    train(config)
    rows = read_jsonl(os.path.join(out, "log.jsonl"))
    assert [r["iteration"] for r in rows] == [2, 4]
    for r in rows:
        assert all(k in r for k in KEYS)
        assert r["props_iou50"] is not None and r["props_iou50"] >= r["props_iou70"] >= 0
    png = plot_training_curves(os.path.join(out, "log.jsonl"), str(tmp_path / "curves.png"))
    assert os.path.getsize(png) > 0
    plain = [{k: v for k, v in r.items() if k not in KEYS} for r in rows]
    small = plot_training_curves("", str(tmp_path / "plain.png"), records=plain)
    assert os.path.getsize(png) > os.path.getsize(small)  # the second row is drawn
