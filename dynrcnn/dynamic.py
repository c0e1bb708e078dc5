"""DynamicState: the paper's Algorithm 1 (Dynamic Label Assignment + Dynamic SmoothL1).

Every training iteration the RoI head records two statistics of its proposals (the k-th
largest IoU and the k-th smallest regression error, from `dynamic_match`). Every `interval`
(C) records, the IoU threshold T becomes the mean of the recorded IoUs (never below
`iou_floor`) and the SmoothL1 beta the median of the recorded errors (clamped to
[beta_min, beta_max]).

Made robust for real training:
- everything lives in device buffers; `record()` never synchronizes with the host: the
  "every C iterations" decision comes from a host-side counter;
- NaN statistics (a batch with no foreground proposal) are skipped by update(); if a whole
  interval has none, T / beta keep their values. T and beta are never NaN;
- beta_min > 0 keeps the loss a SmoothL1 (the reference codes let beta reach 0 on crowded
  images, where it silently becomes L1);
- under torch.distributed, update() gathers every rank's history first, so all ranks hold
  the same T and beta;
- state_dict() holds T, beta, the histories and the record count: a resumed run continues
  exactly.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
from torch import Tensor, nn

VARIANTS: Dict[str, str] = {
    "paper": "the paper's Algorithm 1: classifier and regressor foreground at IoU >= T",
    "cls_fixed": "classifier foreground at IoU >= min(T, 0.5), regressor's at T",
    "cls_half": "classifier foreground at IoU >= min(T, (T + 0.5) / 2), regressor's at T",
    "cls_soft": "classifier foreground at IoU >= min(T, 0.5) with a soft target below T "
                "(class weight rising linearly from 0 to 1 between 0.5 and T), regressor's "
                "at T",
    "obj_floor": "foreground at IoU >= T for both heads, and each object's OBJECT_FLOOR "
                 "best proposals at IoU >= 0.5 too (objects without proposals at T stay "
                 "taught)",
    "t_cap": "the paper's Algorithm 1 with T capped at T_CAP (0.6) for both heads: DLA's "
             "rise, then Table 1's middle threshold",
}
"""The values of DynamicConfig.variant, each with what it changes (the classifier's
foreground threshold follows from T by `classifier_threshold`)."""
OBJECT_FLOOR = 4
"""obj_floor: positives every object keeps once T passes 0.5 (a few, as the gt copy alone
is one; fixed a priori, not tuned on a study set)."""
RECOMMENDED_VARIANT = "paper"
"""The variant the evidence supports (benchmarks/README.md, issue 18); the paper's until a
variant beats it against the best baseline on every data set."""
T_CAP = 0.6
"""t_cap: the highest T it allows. The middle of the paper's Table 1 grid (0.4-0.7), chosen
before any t_cap run: a fixed T of 0.6 lost no mid-IoU column in the paper's protocol on
the jittered set, where DLA's T (0.69-0.71 there) did."""
BASELINE_IOU = 0.5
"""Faster R-CNN's foreground threshold, the variants' reference."""
MASK_IOU_DEFAULT: Optional[float] = 0.5
"""DynamicConfig.mask_iou's default: the mask head of Dynamic Mask R-CNN trains on Mask
R-CNN's positives (IoU >= 0.5), not on DLA's (issue 36's rule, docs/accuracy.md "Dynamic
Mask R-CNN"; tests/test_summary.py holds it to the committed evidence)."""
MASK_IOU_BEFORE = None
"""What a saved config without mask_iou (written before the field existed) trained with:
the classifier's positives (a resume compares with it, so the change is said)."""


def classifier_threshold(variant: str, iou_thr: Tensor) -> Tensor:
    """The classifier's foreground IoU threshold under `variant`, given T (no host sync).

    Args:
        variant: one of `VARIANTS` (DynamicConfig.variant).
        iou_thr: T, a 0-dim tensor on the training device.

    Returns:
        A 0-dim tensor: T for "paper", "obj_floor" and "t_cap"; min(T, 0.5) for "cls_fixed"
        and "cls_soft"; min(T, (T + 0.5) / 2) for "cls_half".

    Raises:
        ValueError: an unknown variant.
    """
    if variant in ("paper", "obj_floor", "t_cap"):
        return iou_thr
    if variant in ("cls_fixed", "cls_soft"):
        return torch.clamp(iou_thr, max=BASELINE_IOU)
    if variant == "cls_half":
        return torch.minimum(iou_thr, (iou_thr + BASELINE_IOU) / 2)
    raise ValueError(f"unknown variant {variant!r}; expected one of {', '.join(VARIANTS)}")


def object_floor(matched_idxs: Tensor, max_iou: Tensor, num_gt: int,
                 k: int = OBJECT_FLOOR) -> Tensor:
    """Per proposal: whether it is one of the k best (by IoU, ties by position) proposals
    at IoU >= 0.5 of its matched object. Sorts and scatters only: no host sync.

    Args:
        matched_idxs: int64 [N], each proposal's object, an index into the batch's num_gt
            objects (-1: none), as MatchResult.matched_idxs.
        max_iou: [N], each proposal's IoU with that object, as MatchResult.max_iou.
        num_gt: the number of ground-truth objects in the batch.
        k: how many proposals each object keeps (`OBJECT_FLOOR`).

    Returns:
        A bool [N] tensor.
    """
    n = matched_idxs.shape[0]
    device = matched_idxs.device
    valid = (matched_idxs >= 0) & (max_iou >= BASELINE_IOU)
    group = torch.where(valid, matched_idxs, torch.full_like(matched_idxs, num_gt))
    # by IoU descending, then (stable) by object: each object's proposals in IoU order
    order = torch.argsort(max_iou, descending=True, stable=True)
    order = order[torch.argsort(group[order], stable=True)]
    sorted_group = group[order]
    counts = torch.zeros(num_gt + 1, dtype=torch.int64, device=device).scatter_add_(
        0, sorted_group, torch.ones_like(sorted_group))
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(order)
    rank[order] = torch.arange(n, device=device) - starts[sorted_group]
    return valid & (rank < k)


@dataclass
class DynamicConfig:
    # The docstring's `name: text` lines are also the fields' --help
    # (engine.config_args.field_docs).
    """Hyperparameters of Dynamic R-CNN (defaults: the paper's).

    k_iou, k_err: KI and Kbeta per image (the detector multiplies by the batch's images
        when per_image is False, as the authors' code does).

    interval: C, iterations between updates of T and beta.

    init_iou, iou_floor: starting T and its lower bound (T never falls below it).

    init_beta, beta_max: starting beta and its upper bound (beta never rises above it).

    beta_min: lower bound of beta, 1e-3 by default. The paper has no bound; with 0 the loss
        turns into L1 on crowded images (both reference codes count the ground-truth copies
        appended to the proposals, whose error is 0). Set 0.0 to reproduce that.

    per_image: statistics per image then averaged (mmdetection) instead of over the batch
        (the authors' code).

    update_iou, update_beta: switch DLA / DSL off for ablations (T or beta then stay at
        their initial values).

    stats_with_gt: the authors' statistics (their maskrcnn-benchmark fork): rank the IoU
        over the proposals PLUS the appended ground-truth copies (IoU 1) and take the
        error's k-th smallest over them too (copies: error 0). Off (default): the paper's
        definition, over the RPN proposals only. Sampling is the same either way.

    variant: which proposals the classifier is taught to call foreground (issue 18;
        `VARIANTS`). "paper" (Algorithm 1, the default): IoU >= T for the classifier and the
        regressor alike. The others keep T (and so DLA's statistics, DSL and the regression
        foreground) but give the classifier a lower threshold, so that proposals of mid IoU
        are not taught as background: "cls_fixed" min(T, 0.5), the baseline's;
        "cls_half" min(T, (T + 0.5) / 2), half way; "cls_soft" min(T, 0.5) with soft
        targets: a positive below T is taught its class with weight (IoU - 0.5) / (T - 0.5)
        and background with the rest. Sampling follows the classifier's labels.
        "obj_floor" keeps the paper's T for both heads but never lets an object lose all
        its proposals: each object's OBJECT_FLOOR best proposals at IoU >= 0.5 stay
        foreground (for objects whose proposals all fall below T, the paper's T teaches
        every one of them as background). "t_cap" is the paper's algorithm with T never
        above T_CAP (0.6): DLA's rise, without its last 0.1 (init_iou and iou_floor must
        not exceed the cap).

    mask_iou: the RoIs the mask head of Dynamic Mask R-CNN trains on (issue 36). A number
        in [0, 1]; the default MASK_IOU_DEFAULT (0.5) is Mask R-CNN's definition: among
        the RoIs the sampler drew for the box head, those whose best IoU with a
        ground-truth box of their image is >= mask_iou, whatever T is, each with the mask
        of that box (the one it overlaps most); ground-truth copies always. So a drawn RoI
        with mask_iou <= IoU < T is background for the classifier, not regressed, and a
        mask positive; nothing else is sampled. The classifier and the regressor keep T.
        None: the classifier's positives, so the mask head follows T (the paper's
        algorithm applied as is; `--dynamic-mask-iou none`). Training only: inference and
        exports do not change. A detector without a mask branch ignores it (with a
        warning when it is set to anything but the default or None).
    """

    k_iou: int = 75
    k_err: int = 10
    interval: int = 100
    init_iou: float = 0.4
    iou_floor: float = 0.4
    init_beta: float = 1.0
    beta_max: float = 1.0
    beta_min: float = 1e-3
    per_image: bool = False
    update_iou: bool = True
    update_beta: bool = True
    stats_with_gt: bool = False
    variant: str = "paper"
    mask_iou: Optional[float] = MASK_IOU_DEFAULT

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown variant {self.variant!r}; expected one of "
                             f"{', '.join(VARIANTS)}")
        if self.k_iou < 1 or self.k_err < 1:
            raise ValueError(f"k_iou and k_err must be >= 1, got {self.k_iou}, {self.k_err}")
        if self.interval < 1:
            raise ValueError(f"interval must be >= 1, got {self.interval}")
        if not 0.0 <= self.beta_min <= self.beta_max:
            raise ValueError(
                f"need 0 <= beta_min <= beta_max, got beta_min={self.beta_min}, "
                f"beta_max={self.beta_max}"
            )
        if not self.beta_min <= self.init_beta <= self.beta_max:
            raise ValueError(f"init_beta={self.init_beta} must lie in [beta_min, beta_max]")
        if self.init_iou < self.iou_floor:
            raise ValueError(f"init_iou={self.init_iou} is below iou_floor={self.iou_floor}")
        if self.mask_iou is not None:
            value = self.mask_iou
            if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                    not 0.0 <= value <= 1.0:
                raise ValueError(f"mask_iou must be None or an IoU in [0, 1], got {value!r}")
            self.mask_iou = float(value)
        if self.variant == "t_cap" and self.init_iou > T_CAP:
            raise ValueError(f"variant 't_cap' caps T at {T_CAP}: init_iou={self.init_iou} "
                             "is above it")

    @property
    def iou_cap(self) -> float:
        """The highest T that update() may set (T_CAP for "t_cap", else 1: no cap)."""
        return T_CAP if self.variant == "t_cap" else 1.0


def nan_mean(values: Tensor) -> Tensor:
    """Mean of the non-NaN entries of `values` (a tensor of any shape) in float64 (0-dim),
    NaN if there are none; no host sync."""
    valid = ~torch.isnan(values)
    count = valid.sum()
    total = torch.where(valid, values, torch.zeros_like(values)).double().sum()
    return torch.where(count > 0, total / count.clamp(min=1), torch.full_like(total, float("nan")))


def nan_median(values: Tensor) -> Tensor:
    """Median of the non-NaN entries of `values` (a 1-D tensor) in float64 (0-dim): the mean
    of the two middle ones for an even count, as numpy's; NaN if there are none; no host
    sync."""
    valid = ~torch.isnan(values)
    count = valid.sum()
    ordered = torch.sort(values.double()).values  # NaN sorts last
    lo = ((count - 1).clamp(min=0) // 2).reshape(1)
    hi = (count // 2).clamp(max=values.numel() - 1).reshape(1)
    median = 0.5 * (ordered.gather(0, lo) + ordered.gather(0, hi))
    return torch.where(count > 0, median[0], torch.full_like(median[0], float("nan")))


class DynamicState(nn.Module):
    """T and beta of Dynamic R-CNN with their histories, as device buffers.

    Buffers: `iou_thr` (T) and `beta`, 0-dim float32; `iou_hist` and `err_hist` [interval],
    the recorded statistics (NaN: none); `count`, the number of record() calls. All of them
    are in state_dict().

    Args:
        config: the hyperparameters (none: DynamicConfig(), the paper's).
    """

    def __init__(self, config: DynamicConfig | None = None) -> None:
        super().__init__()
        self.config = config or DynamicConfig()
        c = self.config
        self.register_buffer("iou_thr", torch.tensor(c.init_iou, dtype=torch.float32))
        self.register_buffer("beta", torch.tensor(c.init_beta, dtype=torch.float32))
        nan = float("nan")
        self.register_buffer("iou_hist", torch.full((c.interval,), nan, dtype=torch.float32))
        self.register_buffer("err_hist", torch.full((c.interval,), nan, dtype=torch.float32))
        self.register_buffer("count", torch.zeros((), dtype=torch.int64))
        self._records = 0  # host mirror of `count`: decides when to update without a sync

    @property
    def records(self) -> int:
        """Number of record() calls so far (restored by load_state_dict)."""
        return self._records

    @torch.no_grad()
    def record(self, kth_iou: Tensor, kth_err: Tensor) -> bool:
        """Store one iteration's statistics; every `interval` calls, update T and beta.

        Args:
            kth_iou, kth_err: 0-dim (or [B] with per_image, averaged over the non-NaN
                images) tensors, e.g. MatchResult.kth_iou / kth_err. NaN means "no
                statistic this iteration".

        Returns:
            True when this call updated T and beta.
        """
        iou = self._reduce(kth_iou)
        err = self._reduce(kth_err)
        slot = self._records % self.config.interval
        self.iou_hist[slot] = iou
        self.err_hist[slot] = err
        self._records += 1
        self.count.fill_(self._records)
        if self._records % self.config.interval == 0:
            self.update()
            return True
        return False

    def _reduce(self, value: Tensor) -> Tensor:
        value = value.detach().to(device=self.iou_hist.device, dtype=torch.float32)
        if value.dim() == 0:
            return value
        return nan_mean(value.reshape(-1)).float()

    @torch.no_grad()
    def update(self) -> None:
        """T = clamp(mean(IoU history), iou_floor, iou_cap); beta = clamp(median(error
        history))."""
        iou_hist, err_hist = self._gathered_histories()
        c = self.config
        if c.update_iou:
            mean = nan_mean(iou_hist).float()
            new_thr = torch.clamp(mean, min=c.iou_floor, max=c.iou_cap)
            self.iou_thr.copy_(torch.where(torch.isnan(mean), self.iou_thr, new_thr))
        if c.update_beta:
            median = nan_median(err_hist).float()
            new_beta = torch.clamp(median, min=c.beta_min, max=c.beta_max)
            self.beta.copy_(torch.where(torch.isnan(median), self.beta, new_beta))

    def _gathered_histories(self) -> tuple[Tensor, Tensor]:
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return self.iou_hist, self.err_hist
        local = torch.stack([self.iou_hist, self.err_hist])  # [2, C]
        parts = [torch.empty_like(local) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, local)
        both = torch.stack(parts)  # [W, 2, C]
        return both[:, 0].reshape(-1), both[:, 1].reshape(-1)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # Weights of a run with another interval C carry histories of another length: keep
        # their T and beta, start the history empty (with a note) instead of failing the load.
        saved = state_dict.get(prefix + "iou_hist")
        if saved is not None and saved.shape != self.iou_hist.shape:
            warnings.warn(
                f"DynamicState history of length {saved.shape[0]} does not fit interval "
                f"{self.config.interval}: it is dropped (T and beta are kept, the history "
                "starts empty)", RuntimeWarning, stacklevel=2)
            for name in ("iou_hist", "err_hist"):
                state_dict[prefix + name] = torch.full_like(getattr(self, name), float("nan"))
            if prefix + "count" in state_dict:
                state_dict[prefix + "count"] = torch.zeros_like(self.count)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._records = int(self.count.item())  # one sync at load time, not per step

    def summary(self) -> Dict[str, Any]:
        """T, beta and the record count as Python numbers (synchronizes; for logging)."""
        return {"iou_thr": float(self.iou_thr), "beta": float(self.beta),
                "records": self._records}

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in asdict(self.config).items())


DIAGNOSTIC_IOUS: Tuple[float, ...] = (0.5, 0.6, 0.7)
"""MatchDiagnostics' default thresholds: proposals per image are counted at best IoU >=
each (the paper's Figure 1)."""


class MatchDiagnostics(nn.Module):
    """The paper's Figure 1 for every run: how good the RPN proposals are during training.

    Per training iteration `observe()` adds, on the device and without a host sync, the
    number of proposals per image whose best IoU is >= each of `thresholds`, and the
    iteration's KI-th largest IoU and Kbeta-th smallest error (the statistics DLA and DSL
    record; with per_image, their mean over the images that have one). `read()` (one host
    sync, at log time) returns the means over the iterations observed since the previous
    read and starts a new window. NaN statistics (no foreground proposal) are left out of
    the means; a window without any gives None. The buffers are not persistent: checkpoints
    do not change, and a resumed run starts a fresh window.

    Heads with a mask branch also report `observe_mask()`: "mask_rois", the RoIs per image
    the mask head trained on (issue 36: with DLA they follow T unless
    DynamicConfig.mask_iou is set). Without a mask branch it stays None.
    """

    def __init__(self, thresholds: Sequence[float] = DIAGNOSTIC_IOUS) -> None:
        super().__init__()
        self.thresholds = tuple(float(t) for t in thresholds)
        self.names = ([f"props_iou{round(100 * t)}" for t in self.thresholds]
                      + ["kth_iou", "kth_err"])
        n = len(self.names)
        self.register_buffer("thr", torch.tensor(self.thresholds, dtype=torch.float32),
                             persistent=False)
        self.register_buffer("total", torch.zeros(n, dtype=torch.float64), persistent=False)
        self.register_buffer("valid", torch.zeros(n, dtype=torch.float64), persistent=False)
        # mask_rois: a host count (the mask branch knows it on the host already)
        self._mask_rois: List[float] = []

    @torch.no_grad()
    def observe(self, max_iou: Tensor, num_images: int, kth_iou: Tensor,
                kth_err: Tensor) -> None:
        """Add one training iteration to the window.

        Args:
            max_iou: [N] best IoU of every proposal of the batch (0 in images without
                ground truth).
            num_images: the images in the batch (the counts are per image).
            kth_iou, kth_err: 0-dim or [B] statistics as dynamic_match returns them.
        """
        counts = (max_iou.float().reshape(-1, 1) >= self.thr.reshape(1, -1)).sum(0)
        stats = torch.stack([self._reduce(kth_iou), self._reduce(kth_err)])
        values = torch.cat([counts.double() / max(num_images, 1), stats])
        ok = ~torch.isnan(values)
        self.total += torch.where(ok, values, torch.zeros_like(values))
        self.valid += ok.double()

    def observe_mask(self, num_rois: int, num_images: int) -> None:
        """Add one iteration's mask-head training RoIs to the window.

        Args:
            num_rois: how many RoIs the mask head trained on (a host number: the mask
                branch compacts its RoIs with torch.where, so their count is known).
            num_images: the images in the batch (the count is per image).
        """
        self._mask_rois.append(num_rois / max(num_images, 1))

    def _reduce(self, value: Tensor) -> Tensor:
        value = value.detach().to(self.total.device)
        return value.double() if value.dim() == 0 else nan_mean(value.reshape(-1))

    @torch.no_grad()
    def read(self) -> Dict[str, Optional[float]]:
        """Means since the previous read (synchronizes), then a new window."""
        total, valid = self.total.tolist(), self.valid.tolist()
        self.total.zero_()
        self.valid.zero_()
        out = {name: (t / v if v > 0 else None) for name, t, v in zip(self.names, total, valid)}
        mask, self._mask_rois = self._mask_rois, []
        out["mask_rois"] = sum(mask) / len(mask) if mask else None
        return out
