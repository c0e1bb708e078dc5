"""Detectors of dynrcnn.modeling on the CPU with the tiny backbone and 128-px images."""

from __future__ import annotations

import subprocess
import sys
from typing import Dict, List, Tuple

import pytest
import torch
from torch import Tensor

pytest.importorskip("torchvision")

from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead  # noqa: E402
from torchvision.models.detection.roi_heads import RoIHeads, fastrcnn_loss  # noqa: E402
from torchvision.ops import MultiScaleRoIAlign, box_iou  # noqa: E402

import dynrcnn.modeling.dynamic_roi_heads as dyn_heads_module  # noqa: E402
from dynrcnn.dynamic import DynamicConfig  # noqa: E402
from dynrcnn.modeling import (  # noqa: E402
    ARCHS,
    BACKBONES,
    CascadeRoIHeads,
    DynamicRoIHeads,
    build_backbone,
    build_detector,
    dynamic_fastrcnn_loss,
)

SIZE = 128
NUM_CLASSES = 4
# Small RPN / sampler settings keep every step fast; everything else is torchvision's.
SMALL = dict(min_size=SIZE, max_size=SIZE, rpn_pre_nms_top_n_train=300,
             rpn_post_nms_top_n_train=150, rpn_pre_nms_top_n_test=150,
             rpn_post_nms_top_n_test=100, box_batch_size_per_image=64)
MASK_ARCHS = ("mask_rcnn", "dynamic_mask_rcnn")

Target = Dict[str, Tensor]


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """One intra-op thread: these models are tiny, and on a shared 2-core machine OpenMP's
    barriers make multi-threaded small convolutions ~10x slower than one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def random_gt(n: int, gen: torch.Generator, size: int = SIZE) -> Tensor:
    """n valid boxes inside a size x size image, 12 to 60 px wide."""
    wh = 12 + torch.rand(n, 2, generator=gen) * 48
    xy = torch.rand(n, 2, generator=gen) * (size - wh)
    return torch.cat([xy, xy + wh], dim=1)


def make_batch(gt_counts: Tuple[int, ...], seed: int = 0) -> Tuple[List[Tensor], List[Target]]:
    """Images with gt_counts[i] boxes each (0 allowed), their labels and box-shaped masks."""
    gen = torch.Generator().manual_seed(seed)
    images, targets = [], []
    for n in gt_counts:
        boxes = random_gt(n, gen)
        masks = torch.zeros(n, SIZE, SIZE, dtype=torch.uint8)
        for k, (x1, y1, x2, y2) in enumerate(boxes.round().long().tolist()):
            masks[k, y1:y2, x1:x2] = 1
        images.append(torch.rand(3, SIZE, SIZE, generator=gen))
        targets.append({"boxes": boxes,
                        "labels": torch.randint(1, NUM_CLASSES, (n,), generator=gen),
                        "masks": masks})
    return images, targets


def build(arch: str, **kwargs):
    torch.manual_seed(0)
    return build_detector(arch, backbone="tiny_fpn", num_classes=NUM_CLASSES,
                          **{**SMALL, **kwargs})


def expected_loss_keys(arch: str) -> set:
    rpn = {"loss_objectness", "loss_rpn_box_reg"}
    if arch == "cascade_rcnn":
        return rpn | {f"loss_{k}_stage{s}" for k in ("classifier", "box_reg") for s in (1, 2, 3)}
    box = {"loss_classifier", "loss_box_reg"}
    return rpn | box | ({"loss_mask"} if arch in MASK_ARCHS else set())


def train_step(model, images, targets) -> Dict[str, Tensor]:
    model.train()
    model.zero_grad()
    losses = model(images, targets)
    sum(losses.values()).backward()
    return losses


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


# --------------------------------------------------------------------------- train / eval


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


# --------------------------------------------------------------------------- DynamicRoIHeads


def small_heads(config: DynamicConfig, batch_size_per_image: int = 64) -> DynamicRoIHeads:
    torch.manual_seed(0)
    return DynamicRoIHeads(
        MultiScaleRoIAlign(["0"], output_size=7, sampling_ratio=2),
        TwoMLPHead(4 * 7 * 7, 16),
        FastRCNNPredictor(16, NUM_CLASSES),
        batch_size_per_image=batch_size_per_image,
        dynamic=config,
    )


def jittered(gt: Tensor, per_gt: int, scale: float, gen: torch.Generator) -> Tensor:
    """per_gt proposals around each gt box: centre and size perturbed by ~scale * size."""
    gt = gt.repeat_interleave(per_gt, dim=0)
    wh = gt[:, 2:] - gt[:, :2]
    centre = 0.5 * (gt[:, :2] + gt[:, 2:]) + torch.randn(gt.shape[0], 2, generator=gen) * \
        scale * wh
    wh = wh * torch.exp(torch.randn(gt.shape[0], 2, generator=gen) * scale)
    return torch.cat([centre - 0.5 * wh, centre + 0.5 * wh], dim=1).clamp(0, SIZE)


def heads_inputs(gt_counts, scale: float, gen: torch.Generator, per_gt: int = 20,
                 background: int = 10):
    features = {"0": torch.randn(len(gt_counts), 4, SIZE // 4, SIZE // 4, generator=gen)}
    shapes = [(SIZE, SIZE)] * len(gt_counts)
    proposals, targets = [], []
    for n in gt_counts:
        gt = random_gt(n, gen)
        proposals.append(torch.cat([jittered(gt, per_gt, scale, gen),
                                    random_gt(background, gen)]))
        targets.append({"boxes": gt, "labels": torch.randint(1, NUM_CLASSES, (n,), generator=gen)})
    return features, proposals, shapes, targets


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
