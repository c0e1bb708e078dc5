"""Dynamic R-CNN's second stage: torchvision's RoIHeads with Dynamic Label Assignment (DLA)
and Dynamic SmoothL1 (DSL).

Only training differs from Faster R-CNN, so only the training path is overridden:

- `select_training_samples` (same signature and outputs as torchvision's) matches the RPN
  proposals of the whole batch in ONE `dynamic_match` call with the current threshold T
  (a device tensor), records the DLA/DSL statistics into the `DynamicState` submodule, and
  only then appends the ground-truth boxes as positives. The statistics thus describe the
  proposals the RPN produced, as the paper defines them; the copies get their label and a zero
  regression target directly (IoU 1 with themselves) instead of going through the matcher.
  Background is IoU < T, foreground IoU >= T: no ignore band (the paper's bg = fg = T).
  With `DynamicConfig.stats_with_gt` the match runs over the proposals plus the copies, so
  the statistics include the copies as the authors' code does; labels and sampling do not
  change (a copy's IoU with itself is 1 either way).
- Every training match also feeds `MatchDiagnostics` (the paper's Figure 1: proposals per
  image above IoU 0.5/0.6/0.7, the KI-th IoU, the Kbeta-th error), read at log time by
  `read_match_diagnostics`.
- The box loss is `dynamic_smooth_l1` with the current beta, summed over the sampled
  positives and divided by the number of sampled RoIs, like torchvision's `fastrcnn_loss`.
- The mask branch trains on the sampled RoIs at IoU >= `DynamicConfig.mask_iou` (0.5 by
  default) whatever T is (`mask_targets`), or with mask_iou None on the classifier's
  positives (it then follows T).

Inference is `RoIHeads.forward` unchanged, so a Dynamic R-CNN costs exactly what a Faster
R-CNN does at test time and both give identical detections with identical weights.
"""

from __future__ import annotations

import warnings
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.roi_heads import RoIHeads, maskrcnn_loss

from dynrcnn.dynamic import (
    BASELINE_IOU,
    MASK_IOU_DEFAULT,
    DynamicConfig,
    DynamicState,
    MatchDiagnostics,
    classifier_threshold,
    object_floor,
)
from dynrcnn.modeling._utils import check_target_types
from dynrcnn.modeling.mask_targets import MaskTargets, mask_candidates, sampled_mask_targets
from dynrcnn.ops import MatchResult, dynamic_match, dynamic_smooth_l1, splits_from_counts

Targets = List[Dict[str, Tensor]]


def dynamic_fastrcnn_loss(
    class_logits: Tensor,
    box_regression: Tensor,
    labels: List[Tensor],
    regression_targets: List[Tensor],
    beta: Tensor,
    regression_positive: Optional[List[Tensor]] = None,
    class_weight: Optional[List[Tensor]] = None,
) -> Tuple[Tensor, Tensor]:
    """torchvision's fastrcnn_loss with SmoothL1's beta a device tensor (Dynamic SmoothL1).

    Classification: cross entropy over the sampled RoIs. Box: SmoothL1(beta) of the deltas
    of each positive's own class (class-specific regression; a predictor with 4 outputs is
    treated as class-agnostic), summed and divided by the number of sampled RoIs.

    Instead of compacting the positives with torch.where (a host sync), every RoI's deltas
    are gathered and the negatives get weight 0, so this path never waits for the device.

    Args:
        class_logits: [R, num_classes], the classifier's logits of the sampled RoIs of all
            images.
        box_regression: [R, num_classes * 4] deltas ([R, 4]: class-agnostic).
        labels: per image, the class of each sampled RoI (0: background).
        regression_targets: per image, the encoded box targets [R_b, 4]; finite for
            negatives too (DynamicRoIHeads.select_training_samples sets them to 0).
        beta: the SmoothL1 beta, a 0-dim tensor on the device.
        regression_positive: per image, bool per RoI: the positives whose box is regressed,
            when they are fewer than the classifier's (DynamicConfig.variant); None: every
            positive.
        class_weight: per image, per RoI, in [0, 1]: soft classification targets, weight on
            the RoI's class and the rest on background (1: the hard label; None: all hard,
            plain cross entropy).

    Returns:
        The classification loss and the box loss, 0-dim tensors.
    """
    labels_all = torch.cat(labels, dim=0)
    targets = torch.cat(regression_targets, dim=0)
    classification_loss = F.cross_entropy(class_logits, labels_all)
    if class_weight is not None:
        # -(w log p_class + (1 - w) log p_bg) = CE + (1 - w)(log p_class - log p_bg): added
        # as a correction that is exactly 0 where w = 1, so all-hard targets give plain
        # cross entropy bit for bit (and no inf - inf where a probability underflows)
        log_p = F.log_softmax(class_logits, dim=1)
        w = torch.cat(class_weight, dim=0).to(log_p.dtype)
        own = log_p.gather(1, labels_all.unsqueeze(1)).squeeze(1)
        soft = w < 1
        correction = torch.where(soft, (1 - w) * (own - log_p[:, 0]), torch.zeros_like(w))
        classification_loss = classification_loss + correction.mean()

    n = class_logits.shape[0]
    deltas = box_regression.reshape(n, -1, 4)
    cls_index = labels_all if deltas.shape[1] > 1 else torch.zeros_like(labels_all)
    pred = deltas.gather(1, cls_index.view(n, 1, 1).expand(n, 1, 4)).reshape(n, 4)
    positive = labels_all > 0
    if regression_positive is not None:
        positive = positive & torch.cat(regression_positive, dim=0)
    weight = positive.to(pred.dtype).unsqueeze(1).expand(n, 4).contiguous()
    box_loss = dynamic_smooth_l1(pred, targets.to(pred.dtype), beta, weight=weight,
                                 reduction="sum")
    return classification_loss, box_loss / labels_all.numel()


class VariantTargets(NamedTuple):
    """What a DynamicConfig.variant other than the paper's adds to the sampled RoIs, per
    image: which positives are regressed (IoU >= T, or ground-truth copies) and, for
    "cls_soft", each RoI's class weight (None otherwise)."""

    regressed: List[Tensor]
    class_weight: Optional[List[Tensor]]


class _Sampled(NamedTuple):
    """One batch's sampled RoIs: select_training_samples' four lists, the variant's
    VariantTargets and the mask head's own MaskTargets (None: the classifier's positives)."""

    rois: List[Tensor]
    matched: List[Tensor]
    labels: List[Tensor]
    regression_targets: List[Tensor]
    extra: Optional[VariantTargets]
    mask: Optional[MaskTargets]


def _proposal_rows(num_props: List[int], num_gts: List[int], device: torch.device) -> Tensor:
    """Rows of the proposals in the per-image concatenation [proposals_b, gt_b] over b
    (counts known on the host: no device sync)."""
    rows, offset = [], 0
    for n, g in zip(num_props, num_gts):
        rows.append(torch.arange(offset, offset + n))
        offset += n + g
    return torch.cat(rows).to(device, non_blocking=True)


def read_match_diagnostics(model: nn.Module) -> Dict[str, Any]:
    """The Figure-1 diagnostics of `model` since the previous call (MatchDiagnostics.read,
    one host sync), or {} for detectors without DynamicRoIHeads. On several processes
    these are the calling rank's."""
    heads = getattr(getattr(model, "module", model), "roi_heads", None)
    if not isinstance(heads, DynamicRoIHeads):
        return {}
    return heads.diagnostics.read()


class DynamicRoIHeads(RoIHeads):
    """RoI heads of Dynamic R-CNN (and, with a mask branch, of Dynamic Mask R-CNN).

    The arguments are torchvision RoIHeads' minus the fixed IoU thresholds (T comes from
    `dynamic_state`) and the keypoint branch. `dynamic_state` is a submodule, so T, beta and
    their histories follow `.to(device)` and are saved in the model's state_dict.
    Statistics are recorded on every training-mode forward (also under torch.no_grad()),
    and the match diagnostics into the `diagnostics` submodule (MatchDiagnostics).

    Args:
        box_roi_pool: the RoI pooler (torchvision's MultiScaleRoIAlign).
        box_head: the box head (e.g. TwoMLPHead).
        box_predictor: class logits and box deltas per RoI (e.g. FastRCNNPredictor; 4 deltas
            per RoI: class-agnostic).
        batch_size_per_image: RoIs sampled per image in training.
        positive_fraction: the largest fraction of positives among them.
        bbox_reg_weights: BoxCoder weights (wx, wy, ww, wh); None: (10, 10, 5, 5).
        score_thresh, nms_thresh, detections_per_img: inference, as torchvision's RoIHeads:
            the lowest score kept, the per-class NMS IoU, the detections kept per image.
        mask_roi_pool, mask_head, mask_predictor: the mask branch (Dynamic Mask R-CNN);
            None: none.
        dynamic: the DLA / DSL hyperparameters (None: DynamicConfig(), the paper's).
    """

    def __init__(
        self,
        box_roi_pool: nn.Module,
        box_head: nn.Module,
        box_predictor: nn.Module,
        batch_size_per_image: int = 512,
        positive_fraction: float = 0.25,
        bbox_reg_weights: Optional[Tuple[float, float, float, float]] = None,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        detections_per_img: int = 100,
        mask_roi_pool: Optional[nn.Module] = None,
        mask_head: Optional[nn.Module] = None,
        mask_predictor: Optional[nn.Module] = None,
        dynamic: Optional[DynamicConfig] = None,
    ) -> None:
        config = dynamic if dynamic is not None else DynamicConfig()
        # torchvision's Matcher is built with T's initial value but never used here.
        super().__init__(
            box_roi_pool, box_head, box_predictor,
            config.init_iou, config.init_iou, batch_size_per_image, positive_fraction,
            bbox_reg_weights, score_thresh, nms_thresh, detections_per_img,
            mask_roi_pool=mask_roi_pool, mask_head=mask_head, mask_predictor=mask_predictor,
        )
        self.dynamic_state = DynamicState(config)
        self.diagnostics = MatchDiagnostics()
        if config.mask_iou not in (None, MASK_IOU_DEFAULT) and not self.has_mask():
            warnings.warn(f"DynamicConfig.mask_iou={config.mask_iou} is ignored: the model "
                          "has no mask branch", RuntimeWarning, stacklevel=2)

    @classmethod
    def from_roi_heads(cls, heads: RoIHeads,
                       dynamic: Optional[DynamicConfig] = None) -> DynamicRoIHeads:
        """The dynamic version of torchvision RoIHeads `heads`, sharing its modules and
        settings (sampler, box coder, score/NMS thresholds, mask branch).

        Args:
            heads: torchvision RoIHeads without a keypoint branch.
            dynamic: the DLA / DSL hyperparameters (None: DynamicConfig(), the paper's).
        """
        if heads.has_keypoint():
            raise NotImplementedError("DynamicRoIHeads has no keypoint branch")
        sampler = heads.fg_bg_sampler
        return cls(
            heads.box_roi_pool, heads.box_head, heads.box_predictor,
            batch_size_per_image=sampler.batch_size_per_image,
            positive_fraction=sampler.positive_fraction,
            bbox_reg_weights=heads.box_coder.weights,
            score_thresh=heads.score_thresh,
            nms_thresh=heads.nms_thresh,
            detections_per_img=heads.detections_per_img,
            mask_roi_pool=heads.mask_roi_pool,
            mask_head=heads.mask_head,
            mask_predictor=heads.mask_predictor,
            dynamic=dynamic,
        )

    def match_proposals(self, proposals: List[Tensor], gt_boxes: List[Tensor]) -> MatchResult:
        """Match all images' proposals in one fused call at the current T and record the
        k-th largest IoU / k-th smallest regression error (KI, Kbeta per image, times the
        number of images unless per_image). With stats_with_gt the ground-truth copies join
        the match (and so the statistics); the result still has one row per proposal.

        Args:
            proposals: per image, its proposals [N_b, 4].
            gt_boxes: per image, its ground-truth boxes [G_b, 4], in the proposals' dtype.

        Returns:
            The batch's MatchResult, images concatenated in order.
        """
        config = self.dynamic_state.config
        device = proposals[0].device
        scale = 1 if config.per_image else len(proposals)
        boxes = proposals
        if config.stats_with_gt:
            boxes = [torch.cat([p, g]) for p, g in zip(proposals, gt_boxes)]
        result = dynamic_match(
            torch.cat(boxes),
            torch.cat(gt_boxes),
            splits_from_counts([b.shape[0] for b in boxes], device),
            splits_from_counts([g.shape[0] for g in gt_boxes], device),
            self.dynamic_state.iou_thr,
            k_iou=config.k_iou * scale,
            k_err=config.k_err * scale,
            weights=self.box_coder.weights,
            per_image=config.per_image,
        )
        self.dynamic_state.record(result.kth_iou, result.kth_err)
        if config.stats_with_gt:
            rows = _proposal_rows([p.shape[0] for p in proposals],
                                  [g.shape[0] for g in gt_boxes], device)
            result = MatchResult(result.matched_idxs[rows], result.max_iou[rows],
                                 result.labels[rows], result.kth_iou, result.kth_err)
        self.diagnostics.observe(result.max_iou, len(proposals), result.kth_iou,
                                 result.kth_err)
        return result

    def select_training_samples(
        self,
        proposals: List[Tensor],
        targets: Optional[Targets],
    ) -> Tuple[List[Tensor], List[Tensor], List[Tensor], List[Tensor]]:
        """Label, sample and encode the RoIs of one batch; torchvision's contract.

        Args:
            proposals: per image, the RPN proposals [N_b, 4].
            targets: per image, a dict with "boxes" [G_b, 4] and int64 "labels" [G_b].

        Returns:
            Per image: the sampled RoIs, the index of each one's ground truth WITHIN its
            image (0 for background RoIs, as torchvision), its class label (0 = background)
            and its regression target (0 for negatives and for ground-truth copies).
        """
        return self._select_samples(proposals, targets)[:4]

    def _select_samples(
        self,
        proposals: List[Tensor],
        targets: Optional[Targets],
    ) -> Tuple[List[Tensor], List[Tensor], List[Tensor], List[Tensor],
               Optional[List[Tensor]]]:
        """select_training_samples, plus the variant's extra targets (VariantTargets; None
        for the paper's variant)."""
        return self._sample(proposals, targets)[:5]

    def _sample(self, proposals: List[Tensor], targets: Optional[Targets]) -> _Sampled:
        """_select_samples, plus the mask head's targets when DynamicConfig.mask_iou is set
        and the heads have a mask branch."""
        self.check_targets(targets)
        if targets is None:  # for type checkers; check_targets raised already
            raise ValueError("targets should not be None")
        dtype, device = proposals[0].dtype, proposals[0].device
        gt_boxes = [t["boxes"].to(dtype) for t in targets]
        gt_labels = [t["labels"] for t in targets]
        num_props = [p.shape[0] for p in proposals]

        match = self.match_proposals(proposals, gt_boxes)

        # Class of each proposal: its ground truth's label where IoU >= T (the classifier's
        # threshold of the variant), else 0. Images without ground truth have matched index
        # -1, which reads the trailing 0.
        variant = self.dynamic_state.config.variant
        label_table = torch.cat(gt_labels + [torch.zeros(1, dtype=torch.int64, device=device)])
        foreground = match.labels
        regressed: Optional[List[Tensor]] = None
        soft: Optional[List[Tensor]] = None
        if variant == "obj_floor":
            # the paper's labels while T <= 0.5 (then every floor proposal is one already)
            floor = object_floor(match.matched_idxs, match.max_iou,
                                 sum(g.shape[0] for g in gt_boxes))
            above = self.dynamic_state.iou_thr > BASELINE_IOU
            foreground = torch.where(above, match.labels.bool() | floor,
                                     match.labels.bool()).to(match.labels.dtype)
        elif variant not in ("paper", "t_cap"):  # t_cap: the paper's labels at a capped T
            iou_thr = self.dynamic_state.iou_thr
            cls_thr = classifier_threshold(variant, iou_thr)
            # While the classifier's threshold is T itself (T <= 0.5), the fused op's labels
            # decide (it compares IoU at its own precision), so that a variant trains
            # exactly as the paper's algorithm until T passes 0.5.
            at_t = cls_thr >= iou_thr
            lower = (match.max_iou >= cls_thr) & (match.matched_idxs >= 0)
            foreground = torch.where(at_t, match.labels.bool(), lower).to(match.labels.dtype)
            regressed = match.labels.bool().split(num_props)
            if variant == "cls_soft":  # weight 0 at cls_thr rising to 1 at T
                span = (iou_thr - cls_thr).clamp(min=1e-6)
                ramp = ((match.max_iou - cls_thr) / span).clamp(0.0, 1.0)
                soft = torch.where(at_t | match.labels.bool(), torch.ones_like(ramp),
                                   ramp).split(num_props)
        prop_labels = (label_table[match.matched_idxs] * foreground).split(num_props)
        prop_matched = match.matched_idxs.split(num_props)
        mask_iou = self.dynamic_state.config.mask_iou
        mask: Optional[MaskTargets] = None
        if mask_iou is not None and self.has_mask():  # the mask head's own positives
            mask = mask_candidates(match.matched_idxs, match.max_iou, num_props,
                                   [g.shape[0] for g in gt_boxes], mask_iou)

        boxes, labels, matched, is_copy, reg_ok, weights = [], [], [], [], [], []
        offset = 0
        for b, (props, gts) in enumerate(zip(proposals, gt_boxes)):
            n, g = props.shape[0], gts.shape[0]
            boxes.append(torch.cat([props, gts]))
            if regressed is not None:  # ground-truth copies (IoU 1) are regressed
                reg_ok.append(torch.cat([regressed[b],
                                         torch.ones(g, dtype=torch.bool, device=device)]))
            if soft is not None:  # and hard positives
                weights.append(torch.cat([soft[b], torch.ones(g, dtype=soft[b].dtype,
                                                              device=device)]))
            labels.append(torch.cat([prop_labels[b], gt_labels[b].to(torch.int64)]))
            # torchvision's convention: a background RoI's matched index is 0
            local = torch.where(prop_labels[b] > 0, prop_matched[b] - offset, 0)
            matched.append(torch.cat([local, torch.arange(g, device=device)]))
            is_copy.append(torch.cat([torch.zeros(n, dtype=torch.bool, device=device),
                                      torch.ones(g, dtype=torch.bool, device=device)]))
            offset += g

        sampled = self.subsample(labels)
        rois, matched_gt = [], []
        for b, inds in enumerate(sampled):
            rois.append(boxes[b][inds])
            labels[b] = labels[b][inds]
            matched[b] = matched[b][inds]
            is_copy[b] = is_copy[b][inds]
            if regressed is not None:
                reg_ok[b] = reg_ok[b][inds]
            if soft is not None:  # negatives: weight 1 on background, their label
                weights[b] = torch.where(labels[b] > 0, weights[b][inds], 1.0)
            gts = gt_boxes[b] if gt_boxes[b].shape[0] > 0 else rois[b].new_zeros((1, 4))
            matched_gt.append(gts[matched[b]])

        encoded = self.box_coder.encode(matched_gt, rois)
        regression_targets = [
            torch.where(((lab > 0) & ~copy).unsqueeze(1), t, torch.zeros_like(t))
            for t, lab, copy in zip(encoded, labels, is_copy)
        ]
        extra = None if regressed is None else VariantTargets(
            reg_ok, weights if soft is not None else None)
        if mask is not None:
            mask = sampled_mask_targets(mask, sampled)
        return _Sampled(rois, matched, labels, regression_targets, extra, mask)

    def forward(
        self,
        features: Dict[str, Tensor],
        proposals: List[Tensor],
        image_shapes: List[Tuple[int, int]],
        targets: Optional[Targets] = None,
    ) -> Tuple[List[Dict[str, Tensor]], Dict[str, Tensor]]:
        """Training: dynamic sampling and losses. Inference: torchvision's RoIHeads.forward.

        Args:
            features: the backbone's feature maps by name.
            proposals: per image, the RPN proposals [N_b, 4].
            image_shapes: per image, its (height, width) after the model's transform.
            targets: per image, "boxes" and "labels" (and "masks" with the mask branch);
                needed in training only.

        Returns:
            (detections, losses): in training ([], {"loss_classifier", "loss_box_reg"} plus
            "loss_mask" with the mask branch); in inference (per image a dict of "boxes",
            "labels", "scores" (and "masks"), {}).
        """
        if not self.training:
            return super().forward(features, proposals, image_shapes, targets)
        if self.has_keypoint():
            raise NotImplementedError("DynamicRoIHeads has no keypoint branch")
        check_target_types(targets)
        # beta as it was before this iteration's record (which may update it), so that T
        # and beta come from the same point of the schedule, as in mmdetection.
        beta = self.dynamic_state.beta.clone()
        rois, matched_idxs, labels, regression_targets, extra, mask = \
            self._sample(proposals, targets)

        box_features = self.box_head(self.box_roi_pool(features, rois, image_shapes))
        class_logits, box_regression = self.box_predictor(box_features)
        loss_classifier, loss_box_reg = dynamic_fastrcnn_loss(
            class_logits, box_regression, labels, regression_targets, beta,
            None if extra is None else extra.regressed,
            None if extra is None else extra.class_weight)
        losses = {"loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg}
        if self.has_mask():
            if mask is None:  # the classifier's positives: the mask head follows T
                mask = MaskTargets([lab > 0 for lab in labels], matched_idxs)
            losses["loss_mask"] = self._mask_loss(
                features, rois, image_shapes, targets, mask.positive, mask.matched)
        return [], losses

    def _mask_loss(
        self,
        features: Dict[str, Tensor],
        rois: List[Tensor],
        image_shapes: List[Tuple[int, int]],
        targets: Optional[Targets],
        positive: List[Tensor],
        matched_idxs: List[Tensor],
    ) -> Tensor:
        """torchvision's mask branch on the sampled RoIs marked `positive` (per image, bool
        per RoI); matched_idxs index each image's own gt masks, as torchvision's
        maskrcnn_loss expects."""
        if targets is None:
            raise ValueError("targets should not be None")
        mask_rois, pos_matched = [], []
        for roi, pos_mask, idx in zip(rois, positive, matched_idxs):
            # torchvision compacts the positives with torch.where (one sync per image); a
            # bool mask of the same length, built on the device, is compacted the same way:
            # mask_iou adds no host sync
            pos = torch.where(pos_mask)[0]
            mask_rois.append(roi[pos])
            pos_matched.append(idx[pos])
        self.diagnostics.observe_mask(sum(len(r) for r in mask_rois), len(rois))
        mask_features = self.mask_head(self.mask_roi_pool(features, mask_rois, image_shapes))
        mask_logits = self.mask_predictor(mask_features)
        gt_masks = [t["masks"] for t in targets]
        gt_labels = [t["labels"] for t in targets]
        return maskrcnn_loss(mask_logits, mask_rois, gt_masks, gt_labels, pos_matched)
