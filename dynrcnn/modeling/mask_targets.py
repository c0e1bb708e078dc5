"""Which sampled RoIs train the mask head of Dynamic Mask R-CNN (DynamicConfig.mask_iou).

DLA raises the foreground threshold T of the classifier and the box regressor (to about
0.7). Mask R-CNN trains its mask head on the RoIs at IoU >= 0.5. With `mask_iou` set, the
mask head keeps such a definition of its own instead of following T (issue 36):

- the candidates are the RoIs the sampler drew for the box head this iteration (RPN
  proposals and ground-truth copies; nothing is sampled in addition);
- a mask positive is a candidate whose best IoU with a ground-truth box of its image (the
  `max_iou` of the match DLA already runs) is >= mask_iou, and its target is that box's
  mask (`matched_idxs`, the box it overlaps most); ground-truth copies (IoU 1 with
  themselves) always are;
- so a RoI with mask_iou <= IoU < T, background for the classifier and not regressed, is a
  mask positive when the sampler drew it as a negative; with mask_iou > T, box positives
  below mask_iou train no mask.

Everything here is elementwise or an index by the sampler's indices: no host sync. The
mask loss then selects the positives with the same torch.where per image that selected
the classifier's positives before, so the option adds no synchronization either.
"""

from __future__ import annotations

from typing import List, NamedTuple

import torch
from torch import Tensor


class MaskTargets(NamedTuple):
    """Per image, per RoI (in the order of the rows they index): whether it trains the mask
    head, and the index of its ground truth within the image (0 where it has none)."""

    positive: List[Tensor]
    matched: List[Tensor]


def mask_candidates(matched_idxs: Tensor, max_iou: Tensor, num_props: List[int],
                    num_gts: List[int], mask_iou: float) -> MaskTargets:
    """The mask targets of every row of the per-image concatenations [proposals_b, gt_b]
    (before sampling).

    Args:
        matched_idxs: int64 [N], each proposal's best ground truth as a batch-wide index
            (-1: its image has none), MatchResult.matched_idxs.
        max_iou: float [N], that best IoU, MatchResult.max_iou.
        num_props, num_gts: per image, its proposals and ground-truth boxes (host counts).
        mask_iou: the mask head's IoU threshold (DynamicConfig.mask_iou).

    Returns:
        MaskTargets over each image's proposals followed by its ground-truth copies.
    """
    device = matched_idxs.device
    has_gt = matched_idxs >= 0
    positive = ((max_iou >= mask_iou) & has_gt).split(num_props)
    matched = matched_idxs.split(num_props)
    out_pos, out_idx = [], []
    offset = 0
    for b, g in enumerate(num_gts):
        copies = torch.ones(g, dtype=torch.bool, device=device)
        out_pos.append(torch.cat([positive[b], copies]))
        local = torch.where(matched[b] >= 0, matched[b] - offset, 0)
        out_idx.append(torch.cat([local, torch.arange(g, device=device)]))
        offset += g
    return MaskTargets(out_pos, out_idx)


def sampled_mask_targets(targets: MaskTargets, sampled: List[Tensor]) -> MaskTargets:
    """`targets` at the sampler's indices (`sampled`, per image): the sampled RoIs' own."""
    return MaskTargets([p[i] for p, i in zip(targets.positive, sampled)],
                       [m[i] for m, i in zip(targets.matched, sampled)])
