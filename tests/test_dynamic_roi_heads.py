"""DynamicRoIHeads: T and beta follow the proposals, statistics before gt copies, sampling
and box loss equal torchvision's at a fixed threshold, mask targets per image."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("torchvision")

from modeling_helpers import (  # noqa: E402
    NUM_CLASSES,
    build,
    heads_inputs,
    jittered,
    make_batch,
    random_gt,
    small_heads,
)
from torchvision.models.detection.roi_heads import RoIHeads, fastrcnn_loss  # noqa: E402
from torchvision.ops import box_iou  # noqa: E402

import dynrcnn.modeling.dynamic_roi_heads as dyn_heads_module  # noqa: E402
from dynrcnn.dynamic import DynamicConfig  # noqa: E402
from dynrcnn.modeling import dynamic_fastrcnn_loss  # noqa: E402

# One intra-op thread (conftest.single_thread): these models are tiny, and on a shared
# machine multi-threaded small convolutions are much slower than one thread.
pytestmark = pytest.mark.usefixtures("single_thread")


def test_threshold_rises_and_beta_falls_as_proposals_improve():
    heads = small_heads(DynamicConfig(k_iou=10, k_err=5, interval=5)).train()
    gen = torch.Generator().manual_seed(7)
    optimizer = torch.optim.SGD(heads.parameters(), lr=0.01)
    thresholds, betas = [], []
    steps = 50
    for step in range(steps):
        scale = 0.4 * (1 - step / steps) + 0.02  # proposals get closer to the gt
        features, proposals, shapes, targets = heads_inputs((3, 2), scale, gen)
        _, losses = heads(features, proposals, shapes, targets)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
        if (step + 1) % 5 == 0:
            thresholds.append(float(heads.dynamic_state.iou_thr))
            betas.append(float(heads.dynamic_state.beta))
    assert heads.dynamic_state.records == steps
    assert thresholds[-1] > thresholds[0] + 0.1, thresholds
    assert thresholds[-1] > 0.8, thresholds
    assert betas[-1] < betas[0] * 0.5, betas
    assert betas[-1] < 0.2, betas


def test_statistics_use_proposals_before_gt_copies(monkeypatch):
    calls = []
    real = dyn_heads_module.dynamic_match

    def spy(proposals, gt_boxes, proposal_splits, gt_splits, iou_thr, **kwargs):
        calls.append((proposals.shape[0], proposal_splits.tolist(), kwargs))
        return real(proposals, gt_boxes, proposal_splits, gt_splits, iou_thr, **kwargs)

    monkeypatch.setattr(dyn_heads_module, "dynamic_match", spy)
    heads = small_heads(DynamicConfig(k_iou=3, k_err=2, interval=1)).train()
    gen = torch.Generator().manual_seed(8)
    gt = [random_gt(2, gen), random_gt(3, gen)]
    # proposals far from every gt: shifted by 3 box widths, IoU 0 with everything
    proposals = [g + torch.tensor([300.0, 0.0, 300.0, 0.0]) for g in gt]
    targets = [{"boxes": g, "labels": torch.ones(g.shape[0], dtype=torch.int64)} for g in gt]
    rois, matched, labels, reg = heads.select_training_samples(proposals, targets)
    assert len(calls) == 1  # one fused call for the whole batch
    n, splits, kwargs = calls[0]
    assert n == 5 and splits == [0, 2, 5]  # the RPN proposals only, no gt copies
    assert kwargs["k_iou"] == 3 * 2 and kwargs["k_err"] == 2 * 2
    # the copies would have given kth_iou = 1; the proposals give 0, so T stays at its floor
    assert float(heads.dynamic_state.iou_thr) == pytest.approx(0.4)
    assert float(heads.dynamic_state.beta) == 1.0  # no foreground proposal: beta unchanged
    # the copies are the only positives, with their own label and a zero target
    for b in range(2):
        pos = labels[b] > 0
        assert int(pos.sum()) == gt[b].shape[0]
        torch.testing.assert_close(rois[b][pos], gt[b][matched[b][pos]], rtol=0, atol=0)
        assert torch.equal(reg[b][pos], torch.zeros_like(reg[b][pos]))


def test_per_image_statistics():
    heads = small_heads(DynamicConfig(k_iou=4, k_err=2, interval=2, per_image=True)).train()
    gen = torch.Generator().manual_seed(9)
    for _ in range(2):
        features, proposals, shapes, targets = heads_inputs((2, 3), 0.05, gen)
        heads(features, proposals, shapes, targets)
    assert float(heads.dynamic_state.iou_thr) > 0.5
    assert float(heads.dynamic_state.beta) < 1.0


def test_sampling_matches_torchvision_at_fixed_threshold():
    """With T = 0.5 and a sampler that keeps everything, labels, matched indices and the
    positives' targets equal torchvision's RoIHeads (which matches the gt copies by IoU)."""
    gen = torch.Generator().manual_seed(10)
    config = DynamicConfig(init_iou=0.5, iou_floor=0.5)
    heads = small_heads(config, batch_size_per_image=10_000).train()
    reference = RoIHeads(heads.box_roi_pool, heads.box_head, heads.box_predictor, 0.5, 0.5,
                         10_000, 0.99, None, 0.05, 0.5, 100)
    _, proposals, _, targets = heads_inputs((3, 0, 2), 0.15, gen)
    ours = heads.select_training_samples([p.clone() for p in proposals], targets)
    theirs = reference.select_training_samples([p.clone() for p in proposals], targets)
    for b in range(3):
        rois, matched, labels, reg = (x[b] for x in ours)
        t_rois, t_matched, t_labels, t_reg = (x[b] for x in theirs)
        torch.testing.assert_close(rois, t_rois, rtol=0, atol=0)
        assert torch.equal(labels, t_labels)
        assert torch.equal(matched, t_matched)
        pos = labels > 0
        torch.testing.assert_close(reg[pos], t_reg[pos], rtol=0, atol=1e-6)
        assert torch.equal(reg[~pos], torch.zeros_like(reg[~pos]))
        if targets[b]["boxes"].shape[0]:
            iou = box_iou(rois, targets[b]["boxes"]).max(dim=1).values
            assert bool((iou[pos] >= 0.5).all()) and bool((iou[~pos] < 0.5).all())


def test_sampler_takes_quarter_positives():
    heads = small_heads(DynamicConfig(init_iou=0.5, iou_floor=0.5), batch_size_per_image=32)
    gen = torch.Generator().manual_seed(11)
    _, proposals, _, targets = heads_inputs((4, 4), 0.02, gen, per_gt=40, background=100)
    _, _, labels, _ = heads.train().select_training_samples(proposals, targets)
    for lab in labels:
        assert lab.numel() == 32 and int((lab > 0).sum()) == 8


@pytest.mark.parametrize("class_specific", [True, False])
def test_box_loss_matches_torchvision_fastrcnn_loss(class_specific):
    gen = torch.Generator().manual_seed(12)
    n, c = 40, NUM_CLASSES
    logits = torch.randn(n, c, generator=gen, requires_grad=True)
    deltas = torch.randn(n, 4 * c if class_specific else 4, generator=gen, requires_grad=True)
    labels = [torch.randint(0, c, (25,), generator=gen), torch.randint(0, c, (15,), generator=gen)]
    targets = [torch.randn(25, 4, generator=gen), torch.randn(15, 4, generator=gen)]
    targets = [torch.where((lab > 0)[:, None], t, 0.0) for t, lab in zip(targets, labels)]
    beta = torch.tensor(1.0 / 9.0)
    cls, box = dynamic_fastrcnn_loss(logits, deltas, labels, targets, beta)
    full = deltas if class_specific else deltas.repeat(1, c)
    t_cls, t_box = fastrcnn_loss(logits, full, labels, targets)
    torch.testing.assert_close(cls, t_cls)
    torch.testing.assert_close(box, t_box, rtol=1e-5, atol=1e-7)
    g = torch.autograd.grad(box, deltas)[0]
    t_g = torch.autograd.grad(t_box, deltas)[0]
    torch.testing.assert_close(g, t_g, rtol=1e-5, atol=1e-7)


def test_mask_targets_use_each_images_own_gt():
    """Dynamic Mask R-CNN's matched indices index the image's own masks: positives' matched
    boxes overlap their RoIs at IoU >= T, in every image of the batch."""
    model = build("dynamic_mask_rcnn").train()
    images, targets = make_batch((2, 3), seed=13)
    heads = model.roi_heads
    gen = torch.Generator().manual_seed(13)
    proposals = [jittered(t["boxes"], 10, 0.05, gen) for t in targets]
    rois, matched, labels, _ = heads.select_training_samples(proposals, targets)
    thr = float(heads.dynamic_state.iou_thr)
    for b, t in enumerate(targets):
        pos = labels[b] > 0
        assert pos.any()
        assert bool((matched[b] < t["boxes"].shape[0]).all())
        iou = box_iou(rois[b][pos], t["boxes"])
        chosen = iou.gather(1, matched[b][pos][:, None])[:, 0]
        assert bool((chosen >= thr - 1e-6).all())
        assert torch.equal(labels[b][pos], t["labels"][matched[b][pos]])


@pytest.mark.parametrize("variant,cls_thr", [("cls_fixed", 0.5), ("cls_half", 0.6),
                                             ("cls_soft", 0.5)])
def test_variants_label_the_classifier_below_t_and_regress_at_t(variant, cls_thr):
    """Issue 18's variants at T = 0.7: the classifier's labels (and the sampling) are
    torchvision's at the variant's lower threshold; only RoIs at IoU >= T (or ground-truth
    copies) are regressed; the paper's variant regresses every positive."""
    gen = torch.Generator().manual_seed(13)
    config = DynamicConfig(init_iou=0.7, iou_floor=0.7, variant=variant)
    heads = small_heads(config, batch_size_per_image=10_000).train()
    reference = RoIHeads(heads.box_roi_pool, heads.box_head, heads.box_predictor, cls_thr,
                         cls_thr, 10_000, 0.99, None, 0.05, 0.5, 100)
    _, proposals, _, targets = heads_inputs((3, 0, 2), 0.15, gen)
    *ours, extra = heads._select_samples([p.clone() for p in proposals], targets)
    regressed = extra.regressed
    assert (extra.class_weight is not None) == (variant == "cls_soft")
    theirs = reference.select_training_samples([p.clone() for p in proposals], targets)
    checked = 0
    for b in range(3):
        rois, matched, labels, reg = (x[b] for x in ours)
        t_rois, t_matched, t_labels, _ = (x[b] for x in theirs)
        torch.testing.assert_close(rois, t_rois, rtol=0, atol=0)
        assert torch.equal(labels, t_labels) and torch.equal(matched, t_matched)
        if targets[b]["boxes"].shape[0]:
            iou = box_iou(rois, targets[b]["boxes"]).max(dim=1).values
            pos = labels > 0
            assert torch.equal(regressed[b][pos], iou[pos] >= 0.7 - 1e-6)
            checked += int((pos & ~regressed[b]).sum())
            if extra.class_weight is not None:  # 0 at 0.5 rising to 1 at T = 0.7
                want = torch.where(pos, ((iou - 0.5) / 0.2).clamp(0, 1), 1.0)
                torch.testing.assert_close(extra.class_weight[b], want, rtol=0, atol=1e-5)
    assert checked > 0, "some positives between the two thresholds"
    paper = small_heads(DynamicConfig(init_iou=0.7, iou_floor=0.7)).train()
    assert paper._select_samples(proposals, targets)[4] is None
    with pytest.raises(ValueError, match="unknown variant 'bogus'; expected one of paper"):
        DynamicConfig(variant="bogus")


def test_box_loss_counts_only_the_regressed_positives():
    gen = torch.Generator().manual_seed(14)
    n, c = 40, NUM_CLASSES
    logits = torch.randn(n, c, generator=gen)
    deltas = torch.randn(n, 4 * c, generator=gen)
    labels = [torch.randint(0, c, (25,), generator=gen), torch.randint(0, c, (15,), generator=gen)]
    targets = [torch.where((lab > 0)[:, None], torch.randn(len(lab), 4, generator=gen), 0.0)
               for lab in labels]
    regressed = [torch.rand(len(lab), generator=gen) > 0.5 for lab in labels]
    beta = torch.tensor(0.5)
    cls, box = dynamic_fastrcnn_loss(logits, deltas, labels, targets, beta, regressed)
    # soft classification targets: all weights 1 is plain cross entropy; weight w puts w on
    # the class and 1 - w on background
    hard = [torch.ones(len(lab)) for lab in labels]
    soft_cls, _ = dynamic_fastrcnn_loss(logits, deltas, labels, targets, beta, None, hard)
    torch.testing.assert_close(soft_cls, torch.nn.functional.cross_entropy(
        logits, torch.cat(labels)), rtol=1e-6, atol=1e-7)
    w = [torch.rand(len(lab), generator=gen) for lab in labels]
    soft_cls, _ = dynamic_fastrcnn_loss(logits, deltas, labels, targets, beta, None, w)
    target = torch.zeros(n, c)
    target[torch.arange(n), torch.cat(labels)] += torch.cat(w)
    target[:, 0] += 1 - torch.cat(w)
    torch.testing.assert_close(soft_cls, torch.nn.functional.cross_entropy(logits, target),
                               rtol=1e-6, atol=1e-7)
    box_labels = [torch.where(r, lab, 0) for lab, r in zip(labels, regressed)]
    ref_cls, _ = dynamic_fastrcnn_loss(logits, deltas, labels, targets, beta)
    _, ref_box = dynamic_fastrcnn_loss(logits, deltas, box_labels, targets, beta)
    torch.testing.assert_close(cls, ref_cls, rtol=0, atol=0)
    torch.testing.assert_close(box, ref_box, rtol=0, atol=0)


@pytest.mark.parametrize("variant", ["cls_fixed", "cls_half", "cls_soft"])
def test_variants_equal_the_paper_while_t_is_at_most_one_half(variant):
    """Until T passes 0.5 a variant is the paper's algorithm bit for bit: the same labels,
    every positive regressed, hard targets, the same losses."""
    gen = torch.Generator().manual_seed(15)
    _, proposals, _, targets = heads_inputs((3, 0, 2), 0.15, gen)
    config = dict(init_iou=0.4165385663509369, iou_floor=0.4)
    paper = small_heads(DynamicConfig(**config), batch_size_per_image=10_000).train()
    heads = small_heads(DynamicConfig(**config, variant=variant),
                        batch_size_per_image=10_000).train()
    *ours, extra = heads._select_samples([p.clone() for p in proposals], targets)
    *theirs, none = paper._select_samples([p.clone() for p in proposals], targets)
    assert none is None
    for mine, ref in zip(ours, theirs):
        for a, b in zip(mine, ref):
            assert torch.equal(a, b)
    for lab, reg in zip(ours[2], extra.regressed):
        assert bool(reg[lab > 0].all())
    if extra.class_weight is not None:
        assert all(bool((w == 1).all()) for w in extra.class_weight)
    logits = torch.randn(sum(len(x) for x in ours[2]), NUM_CLASSES, generator=gen)
    deltas = torch.randn(len(logits), 4 * NUM_CLASSES, generator=gen)
    beta = torch.tensor(0.3)
    want = dynamic_fastrcnn_loss(logits, deltas, ours[2], ours[3], beta)
    got = dynamic_fastrcnn_loss(logits, deltas, ours[2], ours[3], beta, extra.regressed,
                                extra.class_weight)
    for a, b in zip(got, want):
        assert torch.equal(a, b)


def _object_floor_reference(matched, iou, k):
    """Loops: each object's k best proposals at IoU >= 0.5, ties by position."""
    keep = torch.zeros(len(matched), dtype=torch.bool)
    for obj in set(matched.tolist()) - {-1}:
        idx = [i for i in range(len(matched)) if matched[i] == obj and iou[i] >= 0.5]
        idx.sort(key=lambda i: (-float(iou[i]), i))
        keep[idx[:k]] = True
    return keep


@pytest.mark.parametrize("seed", range(4))
def test_object_floor_equals_its_reference(seed):
    from dynrcnn.dynamic import object_floor

    gen = torch.Generator().manual_seed(seed)
    n, g = 300, 7
    matched = torch.randint(-1, g, (n,), generator=gen)
    # coarse IoUs: many ties, some objects with fewer than k proposals at >= 0.5
    iou = torch.randint(0, 21, (n,), generator=gen).float() / 20
    iou[matched == 3] = 0.45  # an object with no proposal at IoU >= 0.5
    for k in (1, 4, 50):
        got = object_floor(matched, iou, g, k)
        assert torch.equal(got, _object_floor_reference(matched, iou, k))
    assert not object_floor(matched[:0], iou[:0], g).any()
    assert not object_floor(torch.full((5,), -1), torch.ones(5), 0).any()


def test_obj_floor_variant_keeps_each_objects_best_proposals_above_t():
    """obj_floor at T = 0.7: the paper's positives plus each object's OBJECT_FLOOR best
    proposals at IoU >= 0.5, for both heads (no separate regression mask); the paper's
    algorithm exactly while T <= 0.5."""
    from dynrcnn.dynamic import OBJECT_FLOOR

    gen = torch.Generator().manual_seed(21)
    _, proposals, _, targets = heads_inputs((3, 0, 2), 0.35, gen)
    config = dict(init_iou=0.7, iou_floor=0.7)
    paper = small_heads(DynamicConfig(**config), batch_size_per_image=10_000).train()
    heads = small_heads(DynamicConfig(**config, variant="obj_floor"),
                        batch_size_per_image=10_000).train()
    *ours, extra = heads._select_samples([p.clone() for p in proposals], targets)
    *theirs, _ = paper._select_samples([p.clone() for p in proposals], targets)
    assert extra is None  # the regressor trains on every positive, as in the paper
    added = 0
    for b in range(3):
        rois, labels = ours[0][b], ours[2][b]
        if not targets[b]["boxes"].shape[0]:
            assert not (labels > 0).any()
            continue
        iou_all = box_iou(rois, targets[b]["boxes"])
        iou, obj = iou_all.max(dim=1)
        pos = labels > 0
        assert bool((iou[pos] >= 0.5 - 1e-6).all())
        assert int(pos.sum()) >= int((theirs[2][b] > 0).sum())
        for j in range(targets[b]["boxes"].shape[0]):
            # the object's proposals at IoU >= 0.5 (its gt copy, IoU 1, is one more)
            mine = (obj == j) & (iou >= 0.5) & (iou < 1 - 1e-6)
            want = min(OBJECT_FLOOR, int(mine.sum()))
            assert int((pos & mine).sum()) >= want
        added += int(pos.sum()) - int((theirs[2][b] > 0).sum())
        assert torch.equal(labels[pos], targets[b]["labels"][ours[1][b][pos]])
    assert added > 0, "some objects had fewer than OBJECT_FLOOR proposals at T"
    low = dict(init_iou=0.45, iou_floor=0.4)
    paper = small_heads(DynamicConfig(**low), batch_size_per_image=10_000).train()
    heads = small_heads(DynamicConfig(**low, variant="obj_floor"),
                        batch_size_per_image=10_000).train()
    for mine, ref in zip(heads._select_samples([p.clone() for p in proposals], targets),
                         paper._select_samples([p.clone() for p in proposals], targets)):
        if ref is None:
            assert mine is None
            continue
        for a, b in zip(mine, ref):
            assert torch.equal(a, b)
