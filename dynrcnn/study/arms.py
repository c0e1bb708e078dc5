"""The study's arms, named after the paper's tables (Dynamic R-CNN, ECCV 2020), and the
seeds each one gets.

Every arm is the small CPU setting of `dynrcnn.engine.presets.small_cpu_config` (tiny_fpn,
batch 4, 300 RPN proposals and 128 sampled RoIs per image) with RPN NMS 0.7 for all, so
that arms differ only in their RoI head. Fixed-threshold arms are DynamicRoIHeads with DLA
and DSL switched off: at a fixed T they sample exactly as torchvision's RoIHeads with
Matcher(T, T), and they log the same Figure-1 diagnostics as the dynamic arms.

KI and Kbeta are absolute counts in the paper (75 and 10 per image of ~1000 proposals in the
authors' training), so they are scaled to the proposal budget: 7.5% and 1% of 300 are 22
and 3 (`scaled_k`). The old CPU setting (15 and 4, i.e. 5%) is the `ki_5pct` control.

Two protocols (issue 18): "cpu" is the above; "paper" is the paper's proposal setting for
EVERY arm, the baseline included: 1000 proposals per image after RPN NMS 0.85 at train and
test time (2000 before it in training), KI 75 and Kbeta 10 unscaled. The box head still
samples 128 RoIs per image in both. Arms that fix KI / Kbeta themselves (Table 4,
`ki_5pct`) are defined for 300 proposals and exist in the "cpu" protocol only. A third,
"paper_nms070", is the paper's budget at NMS 0.7: `dynrcnn study --best-vs-best` trains
every arm in it besides "paper" and lets each detector take its better one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from dynrcnn.dynamic import VARIANTS

PAPER_PROPOSALS = 1000  # RPN proposals per image in the authors' training
PROPOSALS = 300  # rpn_post_nms_top_n_train of the CPU setting
COMMON_MODEL: Dict[str, Any] = {"rpn_nms_thresh": 0.7}
BASELINE = "baseline"
MASK_BASELINE = "mask_baseline"
DYNAMIC_ARCHS = ("dynamic_rcnn", "dynamic_mask_rcnn")  # the archs with a DynamicConfig


def scaled_k(k_paper: int, proposals: int = PROPOSALS) -> int:
    """A paper KI / Kbeta (per ~1000 proposals per image) scaled to `proposals`."""
    return max(1, round(k_paper * proposals / PAPER_PROPOSALS))


KI, KBETA = scaled_k(75), scaled_k(10)  # 22 and 3
# The paper's RPN for every arm: "to relieve the scarcity of positives", NMS 0.85.
PAPER_MODEL: Dict[str, Any] = {
    "rpn_pre_nms_top_n_train": 2000, "rpn_post_nms_top_n_train": PAPER_PROPOSALS,
    "rpn_pre_nms_top_n_test": PAPER_PROPOSALS, "rpn_post_nms_top_n_test": PAPER_PROPOSALS,
    "rpn_nms_thresh": 0.85}
# The paper's proposal budget at torchvision's RPN NMS 0.7: the second candidate of
# `dynrcnn study --best-vs-best`, for detectors (the baseline first) that may do better
# without the paper's NMS 0.85. KI / Kbeta stay 75 / 10: the budget is the same 1000.
PAPER_NMS070_MODEL: Dict[str, Any] = {**PAPER_MODEL, "rpn_nms_thresh": 0.7}
PROTOCOL_MODELS: Dict[str, Dict[str, Any]] = {
    "cpu": {}, "paper": PAPER_MODEL, "paper_nms070": PAPER_NMS070_MODEL}
PROTOCOLS = tuple(PROTOCOL_MODELS)


@dataclass(frozen=True)
class Arm:
    """One configuration of the study.

    table: where it comes from ("Table 1", ..., "control"); core: part of the core study
    (Table 3, fixed T = 0.6, Cascade R-CNN), which gets more seeds. dynamic: DynamicConfig
    fields over the study's defaults; model: detector kwargs over COMMON_MODEL; schedule:
    a multiple of the study's iterations (the schedule-length controls); interval_factor:
    a multiple of the study's C (the C controls). reference: the arm it is paired with in
    the report (the baseline, or the baseline at the same schedule); variant_of: the arm a
    control or a Table 4 arm changes one thing of, so that the report also pairs the two.
    """

    name: str
    table: str
    description: str
    arch: str = "dynamic_rcnn"
    dynamic: Dict[str, Any] = field(default_factory=dict)
    model: Dict[str, Any] = field(default_factory=dict)
    schedule: float = 1.0
    interval_factor: float = 1.0
    core: bool = False
    reference: str = BASELINE
    variant_of: Optional[str] = None

    def dynamic_config(self, interval: int, protocol: str = "cpu") -> Dict[str, Any] | None:
        """The DynamicConfig fields of this arm (None for the non-dynamic detectors)."""
        check_protocol(self, protocol)
        if self.arch not in DYNAMIC_ARCHS:
            return None
        c = max(1, round(interval * self.interval_factor))
        ki, kbeta = (KI, KBETA) if protocol == "cpu" else (75, 10)
        return {"interval": c, "k_iou": ki, "k_err": kbeta, **self.dynamic}

    def model_kwargs(self, protocol: str = "cpu") -> Dict[str, Any]:
        check_protocol(self, protocol)
        return {**COMMON_MODEL, **PROTOCOL_MODELS[protocol], **self.model}


def check_protocol(arm: Arm, protocol: str) -> None:
    """ValueError for an unknown protocol, or an arm that does not exist in it."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; expected one of "
                         f"{', '.join(PROTOCOLS)}")
    if protocol != "cpu" and ({"k_iou", "k_err"} & set(arm.dynamic)):
        raise ValueError(f"arm {arm.name} fixes KI / Kbeta for {PROPOSALS} proposals: it "
                         "exists in the 'cpu' protocol only")


def fixed(iou: float, beta: float = 1.0) -> Dict[str, Any]:
    """DynamicConfig fields of a fixed-T, fixed-beta head (Faster R-CNN's sampling)."""
    return {"init_iou": iou, "iou_floor": iou, "update_iou": False,
            "init_beta": beta, "beta_max": max(beta, 1.0), "update_beta": False}


def fixed_threshold(arm: Arm) -> Optional[float]:
    """T of a fixed-threshold arm (fixed T, beta 1, one head: a candidate for the best
    fixed baseline), else None."""
    t = arm.dynamic.get("init_iou")
    if t is None or arm.arch not in DYNAMIC_ARCHS or arm.schedule != 1.0:
        return None
    head = {k: v for k, v in arm.dynamic.items() if k != "mask_iou"}  # the box head's
    return float(t) if head == fixed(t) else None


_FIXED_T = fixed(0.5)
_DSL_ONLY = {k: v for k, v in _FIXED_T.items() if k not in ("init_beta", "update_beta")}


def _arms() -> Tuple[Arm, ...]:
    return (
        # Table 3: the ablation of the two components
        Arm(BASELINE, "Table 3", "fixed T = 0.5, beta = 1 (Faster R-CNN)", dynamic=_FIXED_T,
            core=True),
        Arm("dla", "Table 3", "DLA only (T from the KI-th IoU, beta = 1)",
            dynamic={"update_beta": False}, core=True),
        Arm("dsl", "Table 3", "DSL only (T = 0.5, beta from the Kbeta-th error)",
            dynamic=_DSL_ONLY, core=True),
        Arm("dla_dsl", "Table 3", "Dynamic R-CNN (DLA + DSL)", core=True),
        # Table 1: fixed thresholds (T = 0.5 is the baseline)
        Arm("t040", "Table 1", "fixed T = 0.4, beta = 1", dynamic=fixed(0.4)),
        Arm("t060", "Table 1", "fixed T = 0.6, beta = 1", dynamic=fixed(0.6), core=True),
        Arm("t070", "Table 1", "fixed T = 0.7, beta = 1", dynamic=fixed(0.7)),
        # Table 4: KI (DLA only, beta = 1), the paper's 64 / 75 / 100 scaled to 300 proposals;
        # KI = 75 is the `dla` arm itself (training is deterministic: a copy would only
        # repeat its runs bit for bit)
        *(Arm(f"dla_ki{k}", "Table 4", f"DLA only, KI = {k} of 1000 -> {scaled_k(k)} of "
              f"{PROPOSALS}", dynamic={"update_beta": False, "k_iou": scaled_k(k)},
              variant_of="dla")
          for k in (64, 100)),
        # Table 5: fixed SmoothL1 beta at T = 0.5 (1.0 is the baseline)
        Arm("beta20", "Table 5", "fixed beta = 2.0 (T = 0.5)", dynamic=fixed(0.5, 2.0)),
        Arm("beta05", "Table 5", "fixed beta = 0.5 (T = 0.5)", dynamic=fixed(0.5, 0.5)),
        Arm("beta_tv", "Table 5", "fixed beta = 1/9, torchvision's (T = 0.5)",
            dynamic=fixed(0.5, 1.0 / 9.0)),
        Arm("cascade", "Cascade", "Cascade R-CNN (0.5 / 0.6 / 0.7)", arch="cascade_rcnn",
            core=True),
        # controls: the leading explanations of a DLA+DSL deficit
        Arm("ki_5pct", "control", "DLA + DSL with the old CPU KI / Kbeta (15 / 4 of 300)",
            dynamic={"k_iou": 15, "k_err": 4}, variant_of="dla_dsl"),
        Arm("authors_stats", "control",
            "DLA + DSL with the authors' statistics (ground-truth copies counted)",
            dynamic={"stats_with_gt": True}, variant_of="dla_dsl"),
        Arm("c_half", "control", "DLA + DSL, C halved (T and beta updated twice as often)",
            interval_factor=0.5, variant_of="dla_dsl"),
        Arm("c_double", "control", "DLA + DSL, C doubled", interval_factor=2.0,
            variant_of="dla_dsl"),
        # issue 18's variants of DLA + DSL (DynamicConfig.variant): the classifier's
        # foreground below T and the regressor's at T, or a per-object floor of positives
        *(Arm(f"var_{v}", "variant", f"DLA + DSL, variant {v!r}: {VARIANTS[v]}",
              dynamic={"variant": v}, variant_of="dla_dsl")
          for v in VARIANTS if v != "paper"),
        # Mask R-CNN (data with masks): the same pair with a mask branch, box and segm AP
        # mask_iou given in every mask arm: each arm means the same whatever the default
        Arm(MASK_BASELINE, "Mask", "Mask R-CNN: fixed T = 0.5, beta = 1, a mask branch",
            arch="dynamic_mask_rcnn", dynamic={**_FIXED_T, "mask_iou": None},
            reference=MASK_BASELINE),
        Arm("mask_dla_dsl", "Mask", "Dynamic Mask R-CNN, the mask head on the classifier's "
            "positives (the paper's algorithm as is: it follows T)", arch="dynamic_mask_rcnn",
            dynamic={"mask_iou": None}, reference=MASK_BASELINE),
        # the mask head's positives at IoU >= 0.5 as Mask R-CNN's, not at DLA's T
        Arm("mask_dla_dsl_m50", "Mask", "Dynamic Mask R-CNN as built by default: mask "
            "positives at IoU >= 0.5 (DynamicConfig.mask_iou)", arch="dynamic_mask_rcnn",
            dynamic={"mask_iou": 0.5},
            reference=MASK_BASELINE, variant_of="mask_dla_dsl"),
        # paired with the baseline at the same (doubled) schedule, not the 1x baseline
        Arm("dla_dsl_2x", "control", "DLA + DSL, twice the schedule", schedule=2.0,
            reference="baseline_2x"),
        Arm("baseline_2x", "control", "baseline, twice the schedule", dynamic=_FIXED_T,
            schedule=2.0),
    )


ARMS: Dict[str, Arm] = {a.name: a for a in _arms()}
CORE: Tuple[str, ...] = tuple(a.name for a in ARMS.values() if a.core)
TABLES: Dict[str, Tuple[str, ...]] = {}
for _arm in ARMS.values():
    TABLES[_arm.table] = TABLES.get(_arm.table, ()) + (_arm.name,)
# Table 1 and Table 5 compare against the baseline, which belongs to Table 3
TABLES["Table 1"] = ("t040", BASELINE, "t060", "t070")
TABLES["Table 5"] = (BASELINE, "beta20", "beta05", "beta_tv")
TABLES["Table 4"] = ("dla_ki64", "dla", "dla_ki100")  # dla: KI = 75 -> 22


def seeds_for(arm: Arm, core_seeds: int, other_seeds: int) -> List[int]:
    """Seeds 0.. of an arm: core arms get core_seeds, the others other_seeds. The baseline,
    which every paired difference needs at the same seed, gets the larger of the two."""
    n = core_seeds if arm.core else other_seeds
    if arm.name == BASELINE:
        n = max(core_seeds, other_seeds)
    return list(range(n))


def select_arms(names: Sequence[str]) -> List[Arm]:
    """Arms by name; 'core' and 'all' expand. Unknown names raise ValueError naming them."""
    out: List[str] = []
    for name in names:
        expanded = CORE if name == "core" else tuple(ARMS) if name == "all" else (name,)
        for n in expanded:
            if n not in ARMS:
                raise ValueError(f"unknown arm {n!r}; expected core, all or one of "
                                 f"{', '.join(ARMS)}")
            if n not in out:
                out.append(n)
    return [ARMS[n] for n in out]
