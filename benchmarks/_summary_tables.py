"""The tables of benchmarks/summarize.py: which results file each one reads and how.

Two kinds of accuracy table, both paired by seed with 95% t-intervals
(dynrcnn.study.stats): arm minus reference on the validation split of one study (the
study reports' JSON), and best against best (dynrcnn.study.choice: each arm at its best
training protocol x test-time RPN setting, chosen on val, reported on test) over the run
archives of one data set. Everything is computed from unrounded values and rounded once,
when printed.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from dynrcnn.study.choice import Candidate, Choice, choose, collect
from dynrcnn.study.settings import BEST_VS_BEST_SETTINGS, SETTING_TEXT, STUDY_SETTINGS
from dynrcnn.study.stats import PairedDiff, paired_difference

COLUMNS = ("AP", "AP50", "AP60", "AP70", "AP80", "AP90")
GLANCE_COLUMNS = ("AP", "AP50", "AP75", "AP90")
# The paper's Table 3 (COCO minival, R-50-FPN 1x): DLA + DSL minus the baseline. A citation,
# not a result of ours; AP60 is not in the paper.
PAPER_TABLE3 = {"AP": 1.9, "AP50": -0.7, "AP70": 1.4, "AP80": 3.7, "AP90": 5.5}

# The data sets of the study (benchmarks/README.md says how each was made) and the run
# archives that hold their best-against-best candidates: the 300-proposal study and the
# paper-protocol study of the same images.
SETS: Dict[str, Dict[str, Any]] = {
    # DLA + DSL trained with 300 proposals: retrained for its test evaluations (the
    # original runs kept val metrics only), on another machine (the `machines` table)
    "exact": {"text": "shapes, exact boxes (Dynamic's pick trained on another machine)",
              "archives": ("study_exact_cpu_runs:baseline,t060", "study_exact_dla300_cpu_runs",
                           "study_paper_exact_cpu_runs")},
    "jittered": {"text": "shapes, boxes jittered <= 1.5 px",
                 "archives": ("study_cpu_runs:baseline,t060", "study_dla300_cpu_runs",
                              "study_paper_cpu_runs")},
    "large": {"text": "large objects, 3 classes, exact",
              "archives": ("study_large_cpu_runs", "study_paper_large_cpu_runs")},
    "finetune": {"text": "fine-tuned, jittered boxes (NMS 0.85 only: not best against best)",
                 "archives": ("study_paper_finetune_cpu_runs",)},
    # product images on generated backgrounds (fashion_scenes.py); 1000 @ NMS 0.85 or 0.7
    "fashion": {"text": "Fashion-MNIST scenes (1000 @ NMS 0.85 or 0.7)",
                "archives": ("study_fashion_bvb_cpu", "study_fashion_bvb_cpu/nms070"),
                "settings": BEST_VS_BEST_SETTINGS},
}


@dataclass
class Table:
    """One summary table: its Markdown (what the docs show), a title, a note under it, and
    its rows as unrounded numbers (summary.json)."""

    title: str
    markdown: str
    rows: List[Dict[str, Any]] = field(default_factory=list)
    note: str = ""


def cell(diff: Optional[PairedDiff], bold: bool = True) -> str:
    """'+1.4 [+0.3, +2.5]', bold mean where the interval excludes 0; '+0.5 (n = 1)'."""
    if diff is None:
        return "-"
    if diff.low is None or diff.high is None:
        return f"{diff.mean:+.1f} (n = 1)"
    mean = f"{diff.mean:+.1f}"
    if bold and diff.excludes_zero:
        mean = f"**{mean}**"
    return f"{mean} [{diff.low:+.1f}, {diff.high:+.1f}]"


def diff_row(diff: Optional[PairedDiff]) -> Optional[Dict[str, Any]]:
    if diff is None:
        return None
    return {"n": diff.n, "mean": diff.mean, "low": diff.low, "high": diff.high}


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]],
                   right: int = 0) -> str:
    """A Markdown table; the last `right` columns right-aligned."""
    align = ["---"] * (len(header) - right) + ["---:"] * right
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- readers


def study_runs(results: Path, report: str) -> List[Dict[str, Any]]:
    """The per-run rows (arm, seed, val AP..AP90, Figure-1 counts) of a study report."""
    with open(results / f"{report}.json") as f:
        return json.load(f)["runs"]


def by_seed(runs: Sequence[Dict[str, Any]], arm: str, column: str) -> Dict[int, float]:
    return {int(r["seed"]): float(r[column]) for r in runs if r["arm"] == arm}


def best_choice(results: Path, archives: Sequence[str], arms: Sequence[str],
                columns: Sequence[str] = COLUMNS, settings: Sequence[str] = STUDY_SETTINGS
                ) -> Choice:
    """Each arm's choice among its candidates over the archives (dynrcnn.study.choice). An
    archive named "NAME:arm,arm" gives only those arms' candidates (a study whose other
    arms were retrained elsewhere)."""
    columns = tuple(dict.fromkeys((*COLUMNS, *columns)))
    candidates: List[Candidate] = []
    for entry in archives:
        name, _, only = entry.partition(":")
        mine = [a for a in arms if not only or a in only.split(",")]
        candidates += collect([str(results / name)], mine, settings, columns=columns)
    keys = [(c.arm, c.trained, c.tested, c.fine_tuned) for c in candidates]
    if len(set(keys)) != len(keys):
        raise ValueError(f"two archives of {archives} hold the same candidate")
    return choose(candidates, arms)


def best_vs_best(results: Path, archives: Sequence[str], arms: Sequence[str],
                 columns: Sequence[str] = COLUMNS, settings: Sequence[str] = STUDY_SETTINGS
                 ) -> Tuple[Dict[str, Candidate], List[int]]:
    """Each arm's chosen candidate over the archives (best_choice) and the seeds."""
    choice = best_choice(results, archives, arms, columns, settings)
    return choice.chosen, choice.seeds


def val_margin(choice: Choice, arm: str) -> Optional[float]:
    """How much the arm's chosen candidate beat its runner-up on val (mean AP over the
    choice's seeds); None with one candidate."""
    means = sorted((c.mean("val", "AP", choice.seeds) for c in choice.candidates
                    if c.arm == arm), reverse=True)
    return means[0] - means[1] if len(means) > 1 else None


def test_diff(chosen: Dict[str, Candidate], seeds: Sequence[int], arm: str, ref: str,
              column: str) -> Optional[PairedDiff]:
    a, r = chosen[arm].metrics["test"], chosen[ref].metrics["test"]
    return paired_difference({s: a[s][column] for s in seeds},
                             {s: r[s][column] for s in seeds})


def setting_text(c: Candidate) -> str:
    return (f"trained {SETTING_TEXT.get(c.trained, c.trained)}, tested "
            f"{SETTING_TEXT.get(c.tested, c.tested)}")


# --------------------------------------------------------------------------- tables


def glance(results: Path, reference: str = "baseline",
           sets: Sequence[str] = ("exact", "large", "jittered", "finetune"),
           columns: Sequence[str] = GLANCE_COLUMNS, paper_row: bool = False) -> Table:
    """Dynamic R-CNN minus the best `reference` on each set, best against best, test; with
    paper_row, the paper's Table 3 difference (its own protocol, COCO) as the first row."""
    rows, out = [], []
    if paper_row:
        rows.append(["COCO, paper's Table 3 (DLA + DSL - baseline, its protocol, RPN NMS 0.85)",
                     "-", "-", *(f"{PAPER_TABLE3[c]:+.1f}" if c in PAPER_TABLE3 else ""
                            for c in columns)])
    for name in sets:
        spec = SETS[name]
        choice = best_choice(results, spec["archives"], ["dla_dsl", reference], columns,
                             spec.get("settings", STUDY_SETTINGS))
        chosen, seeds = choice.chosen, choice.seeds
        diffs = {c: test_diff(chosen, seeds, "dla_dsl", reference, c) for c in columns}
        margins = [val_margin(choice, a) for a in ("dla_dsl", reference)]
        picks = " / ".join("-" if m is None else f"{m:.1f}" for m in margins)
        rows.append([spec["text"], picks, str(len(seeds)), *(cell(diffs[c]) for c in columns)])
        out.append({"set": name, "seeds": seeds, **{c: diff_row(d) for c, d in diffs.items()},
                    "dla_dsl": setting_text(chosen["dla_dsl"]),
                    reference: setting_text(chosen[reference])})
    what = "fixed T = 0.6" if reference == "t060" else "baseline (T = 0.5)"
    return Table(
        f"Dynamic R-CNN minus the best {what}: each detector at its own best RPN setting "
        "(chosen on 500 val images), reported on 500 test images, paired by seed; val "
        "margin: how much each pick beat its runner-up in val AP (Dynamic / reference).",
        markdown_table(["data set", "val margin", "seeds", *columns], rows,
                       right=len(columns) + 1), out,
        "Chosen settings: " + "; ".join(f"{r['set']}: Dynamic {r['dla_dsl']}, {reference} "
                                        f"{r[reference]}" for r in out) + ".")


def speed(results: Path) -> Table:
    """Train-step and inference ratios against Faster R-CNN (bench_detectors.py)."""
    with open(results / "detectors_cpu.json") as f:
        data = json.load(f)
    rows, out = [], []
    names = {"dynamic_rcnn (rpn nms 0.7)": "Dynamic R-CNN (RPN as Faster's)",
             "dynamic_rcnn": "Dynamic R-CNN (RPN NMS 0.85)", "cascade_rcnn": "Cascade R-CNN"}
    for row in data["rows"]:
        if row["name"] not in names:
            continue
        tr, inf = row["train_ratio_ci"], row["infer_ratio_ci"]
        rows.append([names[row["name"]], f"{row['train_ratio']:.2f}x [{tr[0]:.2f}, {tr[1]:.2f}]",
                     f"{row['infer_ratio']:.2f}x [{inf[0]:.2f}, {inf[1]:.2f}]"])
        out.append({k: row[k] for k in ("name", "train_ratio", "train_ratio_ci", "infer_ratio",
                                         "infer_ratio_ci")})
    env = data["environment"]
    title = (f"Speed against Faster R-CNN, same process ({env['device']}, {env['threads']} "
             f"threads, {data['config']['backbone']}, {data['config']['image (h x w)']} px; "
             "median of per-round ratios, 95% CI): train step time and inference images/s.")
    # bench_train_step.py: the CPU fast path against the same network in stock torchvision,
    # one row, 1 thread / 2 threads in each cell
    steps = {}
    for threads, name in ((1, "1thread"), (2, "2threads")):
        path = results / f"train_step_cpu_{name}.json"
        if path.exists():
            with open(path) as f:
                steps[threads] = json.load(f)["against"]["stock torchvision"]
    if steps:
        def both(key: str) -> str:
            return " / ".join(f"{s[key]['ratio']:.2f}x [{s[key]['low']:.2f}, "
                              f"{s[key]['high']:.2f}]" for s in steps.values())
        threads_text = " / ".join(str(t) for t in steps)
        rows.append([f"Dynamic R-CNN vs itself in stock torchvision, {threads_text} "
                     "thread(s)", both("train_time_ratio"), both("infer_rate_ratio")])
        out += [{"name": f"vs stock torchvision, {t} thread(s)",
                 "train_ratio": s["train_time_ratio"]["ratio"],
                 "train_ratio_ci": [s["train_time_ratio"]["low"], s["train_time_ratio"]["high"]],
                 "infer_ratio": s["infer_rate_ratio"]["ratio"],
                 "infer_ratio_ci": [s["infer_rate_ratio"]["low"], s["infer_rate_ratio"]["high"]]}
                for t, s in steps.items()]
        title += (" Last row: against the same Dynamic R-CNN made stock torchvision "
                  "(to_torchvision), the Fashion study's setting (tiny_fpn, 128 px, batch 4, "
                  "the paper's RPN), bench_train_step.py.")
    return Table(title, markdown_table(["detector", "train step time", "inference images/s"],
                                       rows, right=2), out)


ARM_TEXT = {"dla": "DLA only", "dsl": "DSL only", "dla_dsl": "DLA + DSL",
            "t060": "fixed T 0.6", "cascade": "Cascade R-CNN", "var_t_cap": "t_cap",
            "var_obj_floor": "obj_floor", "var_cls_fixed": "cls_fixed",
            "var_cls_soft": "cls_soft", "t040": "fixed T 0.4", "t070": "fixed T 0.7"}


def paired(results: Path, blocks: Sequence[Tuple[str, str, Sequence[str], str]],
           title: str, paper_row: bool = False, columns: Sequence[str] = COLUMNS) -> Table:
    """Arm minus reference on val, per block (set label, report, arms, reference)."""
    rows, out = [], []
    if paper_row:
        rows.append(["COCO (paper, Table 3)", "DLA + DSL", "-",
                     *(f"{PAPER_TABLE3[c]:+.1f}" if c in PAPER_TABLE3 else "" for c in columns)])
    for label, report, arms, reference in blocks:
        runs = study_runs(results, report)
        for arm in arms:
            diffs = {c: paired_difference(by_seed(runs, arm, c), by_seed(runs, reference, c))
                     for c in columns}
            n = diffs[columns[0]].n if diffs[columns[0]] else 0
            rows.append([label, f"{ARM_TEXT.get(arm, arm)} - {ARM_TEXT.get(reference, reference)}",
                         str(n), *(cell(diffs[c]) for c in columns)])
            out.append({"set": label, "report": report, "arm": arm, "reference": reference,
                        **{c: diff_row(d) for c, d in diffs.items()}})
    return Table(title, markdown_table(["set", "arm - reference", "n", *columns], rows,
                                       right=len(columns) + 1), out)


_CORE = ("dla", "dsl", "dla_dsl", "t060", "cascade")


def paper_protocol(results: Path) -> Table:
    return paired(results, [("exact", "study_paper_exact_cpu", _CORE, "baseline"),
                            ("jittered", "study_paper_cpu", _CORE, "baseline"),
                            ("large", "study_paper_large_cpu", ("dla_dsl",), "baseline")],
                  "The paper's protocol (1000 proposals after RPN NMS 0.85 for every arm, KI 75 "
                  "/ Kbeta 10), each arm minus the baseline at the same seed, 500 val images.",
                  paper_row=False)


def cpu_protocol(results: Path) -> Table:
    return paired(results, [("exact", "study_exact_cpu", ("dla_dsl", "t060", "t040", "t070"),
                             "baseline"),
                            ("jittered", "study_cpu", ("dla", "dsl", "dla_dsl", "t060",
                                                       "cascade"), "baseline")],
                  "The 300-proposal protocol (RPN NMS 0.7, KI / Kbeta scaled to 22 / 3), each "
                  "arm minus the baseline at the same seed, 500 val images.")


def variants(results: Path) -> Table:
    return paired(results, [("exact", "study_paper_t_cap_exact_cpu", ("var_t_cap",), "dla_dsl"),
                            ("exact", "study_paper_t_cap_exact_cpu", ("dla_dsl",), "t060"),
                            ("jittered", "study_paper_variants_cpu",
                             ("var_cls_fixed", "var_cls_soft"), "dla_dsl"),
                            ("jittered", "study_paper_obj_floor_cpu", ("var_obj_floor",),
                             "dla_dsl"),
                            ("jittered", "study_paper_t_cap_cpu", ("var_t_cap",), "dla_dsl"),
                            ("large", "study_paper_t_cap_large_cpu", ("var_t_cap",), "dla_dsl")],
                  "Variants of DLA + DSL (paper's protocol, val), each minus DLA + DSL at the "
                  "same seed; and DLA + DSL against a fixed T 0.6.")


def others_best(results: Path) -> Table:
    """Best against best of fixed T 0.6 and each variant, minus the best baseline, test."""
    blocks = [("exact", ("study_exact_cpu_runs", "study_paper_t_cap_exact_cpu_runs"),
               ("var_t_cap",)),
              ("exact", ("study_exact_cpu_runs", "study_paper_exact_cpu_runs"), ("t060",)),
              ("jittered", ("study_cpu_runs", "study_paper_t_cap_cpu_runs"), ("var_t_cap",)),
              ("jittered", ("study_cpu_runs", "study_paper_cpu_runs"), ("t060",)),
              ("jittered", ("study_cpu_runs", "study_paper_obj_floor_cpu_runs"),
               ("var_obj_floor",)),
              ("large", ("study_large_cpu_runs", "study_paper_t_cap_large_cpu_runs"),
               ("var_t_cap",))]
    rows, out = [], []
    for label, archives, arms in blocks:
        chosen, seeds = best_vs_best(results, archives, ["baseline", *arms])
        for arm in arms:
            diffs = {c: test_diff(chosen, seeds, arm, "baseline", c) for c in COLUMNS}
            rows.append([label, ARM_TEXT[arm], str(len(seeds)),
                         *(cell(diffs[c]) for c in COLUMNS)])
            out.append({"set": label, "arm": arm, "seeds": seeds,
                        "chosen": setting_text(chosen[arm]),
                        **{c: diff_row(d) for c, d in diffs.items()}})
    return Table("Best against best (chosen on val, test split) for the other candidates: a "
                 "fixed T 0.6 baseline and the variants of DLA + DSL, each minus the best "
                 "baseline (T = 0.5) at the same seed (DLA + DSL's own row: the first table).",
                 markdown_table(["set", "detector", "n", *COLUMNS], rows, right=len(COLUMNS) + 1),
                 out)


def diagnosis(results: Path) -> Table:
    """Exchanged parts (diagnose.py): the baseline with one part of DLA + DSL, minus the
    baseline, on the same proposals; and each model's class probability by IoU band."""
    with open(results / "diagnosis_paper_exact_cpu.json") as f:
        data = json.load(f)
    runs = data["diagnoses"]
    seeds = data["seeds"]
    base = "rpn baseline / cls baseline / reg baseline"
    swaps = {"regressor of DLA + DSL": "rpn baseline / cls baseline / reg dla_dsl",
             "classifier of DLA + DSL": "rpn baseline / cls dla_dsl / reg baseline",
             "RPN of DLA + DSL": "rpn dla_dsl / cls baseline / reg baseline",
             "all of DLA + DSL": "rpn dla_dsl / cls dla_dsl / reg dla_dsl"}
    rows, out = [], []
    for text, key in swaps.items():
        diffs = {c: paired_difference({s: d["swap"][key][c] for s, d in zip(seeds, runs)},
                                      {s: d["swap"][base][c] for s, d in zip(seeds, runs)})
                 for c in ("AP", "AP50", "AP90")}
        rows.append([f"baseline + {text}", str(len(seeds)),
                     *(cell(diffs[c]) for c in ("AP", "AP50", "AP90"))])
        out.append({"swap": key, **{c: diff_row(d) for c, d in diffs.items()}})
    probs = []
    for band in runs[0]["bands"]["baseline"]:
        means = [statistics.fmean(d["bands"][m][band]["mean_prob"] for d in runs)
                 for m in ("baseline", "dla_dsl")]
        probs.append([f"proposals at IoU {band}", "", f"{means[0]:.2f}", f"{means[1]:.2f}", ""])
        out.append({"band": band, "mean_prob": dict(zip(("baseline", "dla_dsl"), means))})
    table = markdown_table(["exchanged part (exact set, val)", "n", "AP", "AP50", "AP90"], rows,
                           right=4)
    table += "\n" + markdown_table(["mean probability of the object's class", "",
                                    "baseline", "DLA + DSL", ""], probs, right=3)
    return Table("Where the gain comes from (exact set, paper's protocol): the baseline with one "
                 "part taken from DLA + DSL of the same seed, minus the baseline.", table, out)


def noise(results: Path) -> Table:
    """Between-seed sd of the baseline's val AP, and of DLA + DSL minus the baseline."""
    rows, out = [], []
    for label, report in (("exact, 300 proposals", "study_exact_cpu"),
                          ("jittered, 300 proposals", "study_cpu"),
                          ("exact, paper's protocol", "study_paper_exact_cpu"),
                          ("jittered, paper's protocol", "study_paper_cpu"),
                          ("large, paper's protocol", "study_paper_large_cpu")):
        runs = study_runs(results, report)
        base = by_seed(runs, "baseline", "AP")
        dyn = by_seed(runs, "dla_dsl", "AP")
        diffs = [dyn[s] - base[s] for s in sorted(set(dyn) & set(base))]
        rows.append([label, str(len(base)), f"{statistics.fmean(base.values()):.1f}",
                     f"{statistics.stdev(base.values()):.1f}", str(len(diffs)),
                     f"{statistics.stdev(diffs):.1f}"])
        out.append({"set": label, "baseline_ap": list(base.values()), "paired": diffs})
    return Table("Noise: the spread between seeds of the baseline's val AP, and of the paired "
                 "difference DLA + DSL minus baseline (sd, AP points).",
                 markdown_table(["set", "baseline seeds", "AP mean", "AP sd", "pairs",
                                 "difference sd"], rows, right=5), out)


def figure1(results: Path) -> Table:
    """Figure-1 counts of the baseline at the end of training (paper's protocol)."""
    rows, out = [], []
    for label, report in (("exact", "study_paper_exact_cpu"), ("jittered", "study_paper_cpu"),
                          ("large", "study_paper_large_cpu")):
        runs = [r for r in study_runs(results, report) if r["arm"] == "baseline"]
        late = {k: statistics.fmean(r["late"][k] for r in runs)
                for k in ("props_iou50", "props_iou60", "props_iou70", "kth_iou")}
        rows.append([label, str(len(runs)), *(f"{late[k]:.0f}" for k in
                                              ("props_iou50", "props_iou60", "props_iou70")),
                     f"{late['kth_iou']:.2f}"])
        out.append({"set": label, **late})
    return Table("Figure-1 counts of the baseline over the last 10% of training (paper's "
                 "protocol): proposals per image at IoU >= 0.5 / 0.6 / 0.7, and the KI-th "
                 "largest IoU (where DLA's T goes).",
                 markdown_table(["set", "seeds", "IoU >= 0.5", "IoU >= 0.6", "IoU >= 0.7",
                                 "KI-th IoU"], rows, right=5), out)


def machines(results: Path) -> Table:
    """The same configuration and seed trained on two machines: DLA + DSL in the
    300-proposal protocol, retrained for its test evaluations (study_*dla300_cpu), minus the
    original run (study_*_cpu), val AP; the noise between machines and code versions."""
    rows, out = [], []
    for label, old, new in (("exact", "study_exact_cpu", "study_exact_dla300_cpu"),
                            ("jittered", "study_cpu", "study_dla300_cpu")):
        before, after = study_runs(results, old), study_runs(results, new)
        diffs = {c: paired_difference(by_seed(after, "dla_dsl", c), by_seed(before, "dla_dsl", c))
                 for c in ("AP", "AP90")}
        per_seed = " / ".join(f"{by_seed(after, 'dla_dsl', 'AP')[k] - v:+.1f}" for k, v in
                              sorted(by_seed(before, "dla_dsl", "AP").items())
                              if k in by_seed(after, "dla_dsl", "AP"))
        rows.append([label, str(diffs["AP"].n), cell(diffs["AP"], bold=False), per_seed,
                     cell(diffs["AP90"], bold=False)])
        out.append({"set": label, **{c: diff_row(d) for c, d in diffs.items()}})
    return Table("The same run on two machines: DLA + DSL (300 proposals @ NMS 0.7), seeds "
                 "0-2, retrained on the second machine minus the first, val AP.",
                 markdown_table(["set", "seeds", "AP", "AP per seed", "AP90"], rows, right=4),
                 out)


def masks(results: Path) -> Table:
    """Dynamic Mask R-CNN minus Mask R-CNN (both with the paper's RPN), box and segm AP on
    the test split, from the `dynrcnn study` report in results/study_masks_cpu/."""
    with open(results / "study_masks_cpu" / "report.json") as f:
        report = json.load(f)
    runs = report["runs"]
    columns = ("AP", "AP50", "AP75", "AP90", "segm AP")
    diffs = {c: paired_difference(by_seed(runs, "mask_dla_dsl", c),
                                  by_seed(runs, "mask_baseline", c)) for c in columns}
    spec = report["spec"]
    row = ["Dynamic Mask R-CNN - Mask R-CNN", str(diffs["AP"].n),
           *(cell(diffs[c]) for c in columns)]
    return Table(f"Dynamic Mask R-CNN minus Mask R-CNN at the same seed, {spec['images']} "
                 f"{spec['split']} images (`dynrcnn study`, shapes with masks, 128 px).",
                 markdown_table(["detectors", "seeds", "box AP", "AP50", "AP75", "AP90",
                                 "segm AP"], [row], right=6),
                 [{"pair": "mask_dla_dsl - mask_baseline",
                   **{c: diff_row(d) for c, d in diffs.items()}}])


def fashion(results: Path) -> Table:
    """Dynamic R-CNN and fixed T 0.6 against the baseline, and Dynamic R-CNN against T 0.6,
    on scenes of Fashion-MNIST product photos (benchmarks/fashion_scenes.py), test split,
    one RPN setting for every arm (the paper's), from the 3000-iteration study of
    results/study_fashion_scratch_cpu/."""
    with open(results / "study_fashion_scratch_cpu" / "iters_3000" / "report.json") as f:
        report = json.load(f)
    runs, spec = report["runs"], report["spec"]
    columns = COLUMNS
    rows, out = [], []
    for arm, ref, text in (("dla_dsl", "baseline", "Dynamic R-CNN - baseline"),
                           ("t060", "baseline", "fixed T 0.6 - baseline"),
                           ("dla_dsl", "t060", "Dynamic R-CNN - fixed T 0.6")):
        diffs = {c: paired_difference(by_seed(runs, arm, c), by_seed(runs, ref, c))
                 for c in columns}
        rows.append([text, str(diffs["AP"].n), *(cell(diffs[c]) for c in columns)])
        out.append({"pair": f"{arm} - {ref}", **{c: diff_row(d) for c, d in diffs.items()}})
    base = list(by_seed(runs, "baseline", "AP").values())
    return Table(f"Scenes of Fashion-MNIST product photos (10 classes, 128 px, "
                 f"{spec['images']} {spec['split']} images, 500 val), every arm with the paper's "
                 "RPN "
                 f"(1000 @ NMS 0.85): arm minus reference at the same seed. The baseline's "
                 f"AP is {statistics.fmean(base):.1f} and moves {statistics.stdev(base):.1f} "
                 "(sd) between seeds.",
                 markdown_table(["detectors", "seeds", *columns], rows,
                                right=len(columns) + 1), out)


TABLES: Dict[str, Callable[[Path], Table]] = {
    "glance_columns": lambda results: glance(
        results, sets=("exact", "large", "jittered", "finetune", "fashion"), columns=COLUMNS,
        paper_row=True),
    "glance_t060": lambda results: glance(results, "t060", ("exact", "jittered")),
    "speed": speed,
    "paper_protocol": paper_protocol,
    "cpu_protocol": cpu_protocol,
    "others_best": others_best,
    "variants": variants,
    "diagnosis": diagnosis,
    "noise": noise,
    "machines": machines,
    "masks": masks,
    "fashion": fashion,
    "figure1": figure1,
}
