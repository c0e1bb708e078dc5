"""Cascade R-CNN's RoI heads (Cai & Vasconcelos, CVPR 2018), the paper's strongest baseline.

Three stages with IoU thresholds 0.5 / 0.6 / 0.7, each with its own box head and a
class-agnostic predictor, BoxCoder weights 10,10,5,5 / 20,20,10,10 / 30,30,15,15 (target
stds 0.1,0.1,0.2,0.2 / 0.05,0.05,0.1,0.1 / 0.033,0.033,0.067,0.067) and loss weights
1 / 0.5 / 0.25. Follows mmdetection's CascadeRoIHead:

- training: stage s matches its RoIs plus the ground truth at its threshold, samples 512
  per image at 25% positives and computes its losses; stage s+1 gets stage s's sampled RoIs
  (minus the ground-truth copies) regressed by stage s, detached and clipped to the image;
- inference: the RPN proposals go through the stages, each refining the boxes for the next;
  the score is the mean of the three stages' class logits (each stage's classifier on its
  own RoIs), softmaxed by torchvision's postprocess; boxes come from the last stage.

It is ~3 box heads' worth slower at test time than Faster / Dynamic R-CNN: the inference
cost Dynamic R-CNN avoids.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.faster_rcnn import TwoMLPHead
from torchvision.models.detection.roi_heads import RoIHeads

from dynrcnn.modeling._utils import check_target_types, clip_split
from dynrcnn.ops import box_iou

Targets = List[Dict[str, Tensor]]
Weights4 = Tuple[float, float, float, float]

CASCADE_IOU_THRESHOLDS: Tuple[float, ...] = (0.5, 0.6, 0.7)
CASCADE_STAGE_WEIGHTS: Tuple[float, ...] = (1.0, 0.5, 0.25)
CASCADE_BBOX_REG_WEIGHTS: Tuple[Weights4, ...] = (
    (10.0, 10.0, 5.0, 5.0), (20.0, 20.0, 10.0, 10.0), (30.0, 30.0, 15.0, 15.0))


class AgnosticPredictor(nn.Module):
    """Class scores plus ONE box regression per RoI (Cascade R-CNN regresses class-agnostic).

    Args:
        in_channels: the width of the box head's output (its representation size).
        num_classes: classes including background.
    """

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.cls_score = nn.Linear(in_channels, num_classes)
        self.bbox_pred = nn.Linear(in_channels, 4)

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        """Class logits [R, num_classes] and box deltas [R, 4] of the RoI features `x`
        ([R, in_channels], or [R, ...] that flattens to it)."""
        x = x.flatten(start_dim=1)
        return self.cls_score(x), self.bbox_pred(x)


class CascadeRoIHeads(RoIHeads):
    """Three-stage cascade of box heads on torchvision's RoIHeads (no mask branch).

    Inherits the sampler, target checks and `postprocess_detections` (fed the mean logits
    and the last stage's deltas, decoded with the last stage's BoxCoder). `build` makes the
    standard heads.

    Args:
        box_roi_pool: the RoI pooler (torchvision's MultiScaleRoIAlign), shared by the stages.
        box_heads: one box head per stage (e.g. TwoMLPHead).
        box_predictors: one predictor per stage, returning class logits and 4 class-agnostic
            deltas per RoI (AgnosticPredictor).
        iou_thresholds: each stage's foreground IoU threshold.
        stage_loss_weights: each stage's weight on its two losses.
        bbox_reg_weights: each stage's BoxCoder weights (wx, wy, ww, wh).
        batch_size_per_image: RoIs each stage samples per image in training.
        positive_fraction: the largest fraction of positives among them.
        score_thresh, nms_thresh, detections_per_img: inference, as torchvision's RoIHeads:
            the lowest score kept, the per-class NMS IoU, the detections kept per image.
        box_loss_beta: SmoothL1 beta of every stage's box loss (mmdetection's 1.0).

    The per-stage sequences need the same length, the number of stages (defaults: the
    three stages of the module docstring).
    """

    def __init__(
        self,
        box_roi_pool: nn.Module,
        box_heads: Sequence[nn.Module],
        box_predictors: Sequence[nn.Module],
        iou_thresholds: Sequence[float] = CASCADE_IOU_THRESHOLDS,
        stage_loss_weights: Sequence[float] = CASCADE_STAGE_WEIGHTS,
        bbox_reg_weights: Sequence[Weights4] = CASCADE_BBOX_REG_WEIGHTS,
        batch_size_per_image: int = 512,
        positive_fraction: float = 0.25,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        detections_per_img: int = 100,
        box_loss_beta: float = 1.0,
    ) -> None:
        num_stages = len(box_heads)
        lengths = {len(box_predictors), len(iou_thresholds), len(stage_loss_weights),
                   len(bbox_reg_weights)}
        if num_stages < 1 or lengths != {num_stages}:
            raise ValueError(
                "box_heads, box_predictors, iou_thresholds, stage_loss_weights and "
                f"bbox_reg_weights need one entry per stage, got lengths {num_stages}, "
                f"{len(box_predictors)}, {len(iou_thresholds)}, {len(stage_loss_weights)}, "
                f"{len(bbox_reg_weights)}"
            )
        super().__init__(
            box_roi_pool, None, None, iou_thresholds[0], iou_thresholds[0],
            batch_size_per_image, positive_fraction, tuple(bbox_reg_weights[-1]),
            score_thresh, nms_thresh, detections_per_img,
        )
        self.stage_heads = nn.ModuleList(box_heads)
        self.stage_predictors = nn.ModuleList(box_predictors)
        self.iou_thresholds = tuple(float(t) for t in iou_thresholds)
        self.stage_loss_weights = tuple(float(w) for w in stage_loss_weights)
        self.stage_coders = [det_utils.BoxCoder(tuple(w)) for w in bbox_reg_weights]
        self.stage_matchers = [det_utils.Matcher(t, t, allow_low_quality_matches=False)
                               for t in self.iou_thresholds]
        # mmdetection's cascade uses SmoothL1 with beta 1.0 (torchvision's Faster R-CNN 1/9).
        self.box_loss_beta = float(box_loss_beta)

    @classmethod
    def build(cls, box_roi_pool: nn.Module, in_channels: int, num_classes: int,
              representation_size: int = 1024, **kwargs) -> CascadeRoIHeads:
        """Standard heads: a TwoMLPHead and an AgnosticPredictor per stage.

        Args:
            box_roi_pool: the RoI pooler.
            in_channels: backbone channels * RoI resolution**2, the box head's input width.
            num_classes: classes including background.
            representation_size: the width of the box heads' two layers.
            kwargs: the constructor's other arguments; the length of iou_thresholds (three
                by default) is the number of stages.
        """
        num_stages = len(kwargs.get("iou_thresholds", CASCADE_IOU_THRESHOLDS))
        heads = [TwoMLPHead(in_channels, representation_size) for _ in range(num_stages)]
        predictors = [AgnosticPredictor(representation_size, num_classes)
                      for _ in range(num_stages)]
        return cls(box_roi_pool, heads, predictors, **kwargs)

    @property
    def num_stages(self) -> int:
        """The number of stages."""
        return len(self.stage_heads)

    def _stage_forward(self, stage: int, features: Dict[str, Tensor], rois: List[Tensor],
                       image_shapes: List[Tuple[int, int]]) -> Tuple[Tensor, Tensor]:
        x = self.box_roi_pool(features, rois, image_shapes)
        return self.stage_predictors[stage](self.stage_heads[stage](x))

    def _refine(self, stage: int, deltas: Tensor, rois: List[Tensor],
                image_shapes: List[Tuple[int, int]]) -> List[Tensor]:
        """Stage `stage`'s regression applied to its RoIs, clipped to each image."""
        boxes = self.stage_coders[stage].decode_single(deltas, torch.cat(rois))
        return clip_split(boxes, [r.shape[0] for r in rois], image_shapes)

    def _sample(self, stage: int, rois: List[Tensor], gt_boxes: List[Tensor],
                gt_labels: List[Tensor]
                ) -> Tuple[List[Tensor], List[Tensor], List[Tensor], List[Tensor]]:
        """Append the gt, match at the stage's threshold, sample; return per image the sampled
        RoIs, labels, regression targets (0 for negatives) and which RoIs are gt copies."""
        matcher, coder = self.stage_matchers[stage], self.stage_coders[stage]
        all_boxes, labels, matched_gt, is_copy = [], [], [], []
        for props, gts, gt_lab in zip(rois, gt_boxes, gt_labels):
            boxes = torch.cat([props, gts])
            copy = torch.cat([torch.zeros(props.shape[0], dtype=torch.bool, device=gts.device),
                              torch.ones(gts.shape[0], dtype=torch.bool, device=gts.device)])
            if gts.shape[0] == 0:
                lab = torch.zeros(boxes.shape[0], dtype=torch.int64, device=boxes.device)
                matched = boxes  # unused: every RoI is background
            else:
                idx = matcher(box_iou(gts, boxes))
                lab = gt_lab.to(torch.int64)[idx.clamp(min=0)]
                lab = torch.where(idx >= 0, lab, torch.zeros_like(lab))
                matched = gts[idx.clamp(min=0)]
            all_boxes.append(boxes)
            labels.append(lab)
            matched_gt.append(matched)
            is_copy.append(copy)

        sampled = self.subsample(labels)
        out_rois, out_labels, out_targets, out_copy = [], [], [], []
        for boxes, lab, matched, copy, inds in zip(all_boxes, labels, matched_gt, is_copy,
                                                   sampled):
            roi, lab, matched = boxes[inds], lab[inds], matched[inds]
            target = coder.encode_single(matched, roi)
            out_targets.append(torch.where((lab > 0).unsqueeze(1), target,
                                           torch.zeros_like(target)))
            out_rois.append(roi)
            out_labels.append(lab)
            out_copy.append(copy[inds])
        return out_rois, out_labels, out_targets, out_copy

    def _stage_loss(self, class_logits: Tensor, deltas: Tensor, labels: List[Tensor],
                    targets: List[Tensor]) -> Tuple[Tensor, Tensor]:
        """torchvision's fastrcnn_loss convention (box loss summed over positives / sampled
        RoIs), class-agnostic deltas."""
        lab = torch.cat(labels)
        tgt = torch.cat(targets)
        loss_cls = F.cross_entropy(class_logits, lab)
        pos = torch.where(lab > 0)[0]
        loss_box = F.smooth_l1_loss(deltas[pos], tgt[pos], beta=self.box_loss_beta,
                                    reduction="sum") / lab.numel()
        return loss_cls, loss_box

    def forward(
        self,
        features: Dict[str, Tensor],
        proposals: List[Tensor],
        image_shapes: List[Tuple[int, int]],
        targets: Optional[Targets] = None,
    ) -> Tuple[List[Dict[str, Tensor]], Dict[str, Tensor]]:
        if self.training:
            return [], self._forward_train(features, proposals, image_shapes, targets)
        return self._forward_test(features, proposals, image_shapes), {}

    def _forward_train(self, features: Dict[str, Tensor], proposals: List[Tensor],
                       image_shapes: List[Tuple[int, int]],
                       targets: Optional[Targets]) -> Dict[str, Tensor]:
        check_target_types(targets)
        self.check_targets(targets)
        if targets is None:
            raise ValueError("targets should not be None")
        dtype = proposals[0].dtype
        gt_boxes = [t["boxes"].to(dtype) for t in targets]
        gt_labels = [t["labels"] for t in targets]
        rois = [p.detach() for p in proposals]
        losses: Dict[str, Tensor] = {}
        for s in range(self.num_stages):
            rois, labels, reg_targets, is_copy = self._sample(s, rois, gt_boxes, gt_labels)
            class_logits, deltas = self._stage_forward(s, features, rois, image_shapes)
            loss_cls, loss_box = self._stage_loss(class_logits, deltas, labels, reg_targets)
            w = self.stage_loss_weights[s]
            losses[f"loss_classifier_stage{s + 1}"] = w * loss_cls
            losses[f"loss_box_reg_stage{s + 1}"] = w * loss_box
            if s + 1 < self.num_stages:
                with torch.no_grad():
                    refined = self._refine(s, deltas.detach(), rois, image_shapes)
                rois = [r[~c] for r, c in zip(refined, is_copy)]
        return losses

    def _forward_test(self, features: Dict[str, Tensor], proposals: List[Tensor],
                      image_shapes: List[Tuple[int, int]]) -> List[Dict[str, Tensor]]:
        rois = proposals
        logits_sum: Optional[Tensor] = None
        deltas = proposals[0].new_zeros((0, 4))
        for s in range(self.num_stages):
            if s > 0:
                rois = self._refine(s - 1, deltas, rois, image_shapes)
            class_logits, deltas = self._stage_forward(s, features, rois, image_shapes)
            logits_sum = class_logits if logits_sum is None else logits_sum + class_logits
        assert logits_sum is not None
        mean_logits = logits_sum / self.num_stages
        num_classes = mean_logits.shape[1]
        # One box per RoI, repeated per class: torchvision's postprocess then does the
        # per-class score threshold, NMS and top-k exactly as for Faster R-CNN.
        boxes, scores, labels = self.postprocess_detections(
            mean_logits, deltas.repeat(1, num_classes), rois, image_shapes)
        return [{"boxes": b, "labels": lab, "scores": sc}
                for b, sc, lab in zip(boxes, scores, labels)]
