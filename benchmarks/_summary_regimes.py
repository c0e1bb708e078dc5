"""Summary tables of the regime studies (`dynrcnn study --iterations A B` on Fashion-MNIST
scenes): from scratch and from the trunk pretrained by pretrain_trunk.py, each at 1x and 2x.

Each table reads the run archives (iters_N/<arm>/seed<s>/: the final val metrics and the
test metrics) and compares Dynamic R-CNN with the best fixed threshold chosen on val at
that schedule (dynrcnn.study.comparator), as the study's own report does. The sentences of
`regimes_words` are written here too, their verdict words chosen by the study's rule
(dynrcnn.study.stats): nothing on the README's first screen is typed by hand.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import _summary_tables as st

from dynrcnn.study.comparator import ArmRuns, choose_fixed, differences
from dynrcnn.study.settings import read_percent
from dynrcnn.study.stats import TIE_MARGIN, PairedDiff, paired_difference

# (archive under results/, schedule, regime text, its label in "1x / 2x")
REGIMES: Tuple[Tuple[str, int, str], ...] = (
    ("study_fashion_scratch_cpu", 3000, "from scratch, 3000 iterations (1x)"),
    ("study_fashion_scratch_cpu", 6000, "from scratch, 6000 iterations (2x)"),
    ("study_fashion_pretrained_cpu", 1500, "pretrained trunk, 1500 iterations (1x)"),
    ("study_fashion_pretrained_cpu", 3000, "pretrained trunk, 3000 iterations (2x)"),
)
ARMS = ("baseline", "t060", "dla_dsl")
DYNAMIC = "dla_dsl"
GLANCE_COLUMNS = ("AP", "AP50", "AP75", "AP90")
ALL_COLUMNS = ("AP", "AP50", "AP60", "AP70", "AP75", "AP80", "AP90")
ARM_TEXT = {"baseline": "T 0.5", "t060": "T 0.6", "dla_dsl": "Dynamic R-CNN"}


def read_schedule(results: Path, archive: str, iterations: int) -> Optional[Dict[str, ArmRuns]]:
    """ArmRuns (val: the final evaluation, test: eval_test_own) of every finished run of
    one schedule; None when the archive does not hold that schedule."""
    root = results / archive / f"iters_{iterations}"
    if not root.is_dir():
        return None
    runs: Dict[str, ArmRuns] = {}
    for arm in ARMS:
        for seed_dir in sorted((root / arm).glob("seed*")):
            seed = int(seed_dir.name[len("seed"):])
            val = read_percent(str(seed_dir / f"eval_{iterations:07d}" / "metrics.json"))
            test = read_percent(str(seed_dir / "eval_test_own" / "metrics.json"))
            if val is None or test is None:
                continue
            r = runs.setdefault(arm, ArmRuns(arm))
            r.metrics.setdefault("val", {})[seed] = val
            r.metrics.setdefault("test", {})[seed] = test
    return runs or None


def regime_rows(results: Path) -> List[Dict[str, Any]]:
    """Per regime with results: the runs, the fixed-T choice and Dynamic - best fixed T."""
    rows = []
    for archive, iterations, text in REGIMES:
        runs = read_schedule(results, archive, iterations)
        if runs is None or DYNAMIC not in runs:
            continue
        choice = choose_fixed(runs, "dynamic_rcnn")
        if choice is None:
            continue
        rows.append({"archive": archive, "iterations": iterations, "text": text,
                     "runs": runs, "choice": choice,
                     "diffs": differences(runs, DYNAMIC, choice.best, "test", ALL_COLUMNS),
                     "vs_t050": differences(runs, DYNAMIC, "baseline", "test", ALL_COLUMNS)})
    return rows


def _seeds(row: Dict[str, Any]) -> int:
    return row["diffs"]["AP"].n if row["diffs"]["AP"] is not None else 0


def comparator_text(row: Dict[str, Any]) -> str:
    choice = row["choice"]
    return f"{ARM_TEXT[choice.best]} (by {choice.margin:.1f} val AP)"


def word(diff: Optional[PairedDiff], up: str = "gain", down: str = "cost") -> str:
    """The verdict word of the study's rule: gain / cost where the interval excludes 0,
    tie within ±TIE_MARGIN, else "not resolved"."""
    if diff is None or diff.low is None or diff.high is None:
        return "no interval"
    if diff.low > 0:
        return up
    if diff.high < 0:
        return down
    if -TIE_MARGIN <= diff.low and diff.high <= TIE_MARGIN:
        return "tie"
    return "not resolved"


def quote(diff: Optional[PairedDiff]) -> str:
    if diff is None or diff.low is None or diff.high is None:
        return "-"
    return f"{diff.mean:+.1f} [{diff.low:+.1f}, {diff.high:+.1f}]"


def regime_sentence(row: Dict[str, Any]) -> str:
    """One sentence per regime: Dynamic R-CNN minus the best fixed T in AP, AP50 and AP90,
    each with the word its interval allows."""
    d = row["diffs"]
    parts = [f"{col} {quote(d[col])} ({word(d[col])})" for col in ("AP", "AP50", "AP90")]
    best = row["runs"][row["choice"].best].column("test", "AP")
    mine = row["runs"][DYNAMIC].column("test", "AP")
    seeds = sorted(set(best) & set(mine))
    noise = ""
    if len(seeds) > 1:
        noise = (f" (noise: the comparator's AP moves {statistics.stdev(best.values()):.1f} sd "
                 f"between seeds, the paired difference "
                 f"{statistics.stdev(mine[s] - best[s] for s in seeds):.1f})")
    return (f"{row['text'].capitalize()}, against {ARM_TEXT[row['choice'].best]}{noise}: "
            + ", ".join(parts) + ".")


def answer(rows: Sequence[Dict[str, Any]]) -> str:
    """The count, per column, of regimes where Dynamic R-CNN minus the best fixed T is a
    gain, a cost, or neither by the rule."""
    parts = []
    for col in ("AP", "AP50", "AP90"):
        words = [word(r["diffs"][col]) for r in rows]
        counts = {w: words.count(w) for w in ("gain", "cost", "tie", "not resolved")}
        said = ", ".join(f"{w} in {n}" for w, n in counts.items() if n)
        parts.append(f"{col}: {said}")
    return (f"Against the best fixed T, in the {len(rows)} regimes measured here: "
            + "; ".join(parts) + ".")


def doubling(row_short: Dict[str, Any], row_long: Dict[str, Any], arm: str,
             column: str = "AP") -> Optional[PairedDiff]:
    """The arm at the longer schedule minus itself at the shorter one, paired by seed."""
    return paired_difference(row_long["runs"][arm].column("test", column),
                             row_short["runs"][arm].column("test", column))


def pairs_of_schedules(rows: Sequence[Dict[str, Any]]) -> List[Tuple[Dict[str, Any],
                                                                      Dict[str, Any]]]:
    by_archive: Dict[str, List[Dict[str, Any]]] = {}
    for row in rows:
        by_archive.setdefault(row["archive"], []).append(row)
    return [(a, b) for group in by_archive.values() for a, b in zip(group, group[1:])]


def baseline_mean(row: Dict[str, Any], arm: str = "baseline") -> float:
    return statistics.fmean(row["runs"][arm].column("test", "AP").values())


def summary_rows(rows: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """summary.json's form of the rows (unrounded)."""
    def plain(d: Optional[PairedDiff]) -> Any:
        return None if d is None else {"n": d.n, "mean": d.mean, "low": d.low, "high": d.high}

    return [{"regime": r["text"], "comparator": r["choice"].best,
             "val_ap": r["choice"].val_ap, **{c: plain(r["diffs"][c]) for c in ALL_COLUMNS}}
            for r in rows]


def load_pretrain_report(results: Path) -> Optional[Dict[str, Any]]:
    path = results / "pretrain_tiny_fpn_fashion.json"
    return json.loads(path.read_text()) if path.is_file() else None


# --------------------------------------------------------------------------- tables

SCENES = ("Fashion-MNIST scenes (28 x 28 grey product images pasted on generated 128-px "
          "backgrounds), tiny_fpn backbone, every arm with the paper's RPN (1000 proposals "
          "after NMS 0.85)")


def glance(results: Path) -> Any:
    """The README's table: Dynamic R-CNN minus the best fixed T per regime (+ the paper)."""
    rows = regime_rows(results)
    lines = [[r["text"], comparator_text(r), str(_seeds(r)),
              *(st.cell(r["diffs"][c]) for c in GLANCE_COLUMNS)] for r in rows]
    lines.append(["COCO, the paper's Table 3 (ResNet-50, 1x, against T 0.5)", "T 0.5", "-",
                  *(f"{st.PAPER_TABLE3[c]:+.1f}" if c in st.PAPER_TABLE3 else ""
                    for c in GLANCE_COLUMNS)])
    return st.Table(
        f"Dynamic R-CNN minus the best fixed threshold (T 0.5 or T 0.6, chosen on 500 val "
        f"images at each schedule), on 500 test images, paired by seed; {SCENES}.",
        st.markdown_table(["regime", "best fixed T (val margin)", "seeds", *GLANCE_COLUMNS],
                          lines, right=len(GLANCE_COLUMNS) + 1), summary_rows(rows))


def regimes_columns(results: Path) -> Any:
    """Every column, against the best fixed T and against T 0.5 (the paper's baseline)."""
    rows = regime_rows(results)
    lines = []
    for r in rows:
        lines.append([r["text"], f"- {ARM_TEXT[r['choice'].best]}",
                      *(st.cell(r["diffs"][c]) for c in ALL_COLUMNS)])
        if r["choice"].best != "baseline":
            lines.append([r["text"], "- T 0.5", *(st.cell(r["vs_t050"][c]) for c in ALL_COLUMNS)])
    return st.Table(
        f"Dynamic R-CNN minus the best fixed T (chosen on val) and minus T 0.5, every "
        f"column, test split, paired by seed; {SCENES}.",
        st.markdown_table(["regime", "Dynamic R-CNN", *ALL_COLUMNS], lines,
                          right=len(ALL_COLUMNS)), summary_rows(rows))


def regimes_arms(results: Path) -> Any:
    """Each arm's test AP..AP90 per regime (mean ± sd over seeds), and its val AP."""
    lines, out = [], []
    for r in regime_rows(results):
        for arm in ARMS:
            runs = r["runs"].get(arm)
            if runs is None:
                continue
            cells = []
            for col in ("AP", "AP50", "AP75", "AP90"):
                values = list(runs.column("test", col).values())
                sd = statistics.stdev(values) if len(values) > 1 else 0.0
                cells.append(f"{statistics.fmean(values):.1f} ± {sd:.1f}")
            val = statistics.fmean(runs.column("val", "AP").values())
            lines.append([r["text"], ARM_TEXT[arm], str(len(runs.column("test", "AP"))),
                          f"{val:.1f}", *cells])
            out.append({"regime": r["text"], "arm": arm, "val_AP": val})
    return st.Table(
        f"Each arm's AP (mean ± sd over seeds) on 500 test images, and its mean val AP (the "
        f"choice of the best fixed T reads it); {SCENES}.",
        st.markdown_table(["regime", "arm", "seeds", "val AP", "AP", "AP50", "AP75", "AP90"],
                          lines, right=6), out)


def regimes_doubling(results: Path) -> Any:
    """What doubling the schedule did to each arm (the same arm and seed, 2x minus 1x)."""
    lines, out = [], []
    for short, long in pairs_of_schedules(regime_rows(results)):
        for arm in ARMS:
            if arm not in short["runs"] or arm not in long["runs"]:
                continue
            diffs = {c: doubling(short, long, arm, c) for c in ("AP", "AP50", "AP90")}
            trunk = "pretrained trunk" if "pretrained" in short["archive"] else "from scratch"
            lines.append([f"{trunk}, {short['iterations']} -> {long['iterations']}",
                          ARM_TEXT[arm], *(st.cell(diffs[c]) for c in ("AP", "AP50", "AP90"))])
            out.append({"from": short["text"], "to": long["text"], "arm": arm,
                        **{c: st.diff_row(d) for c, d in diffs.items()}})
    return st.Table(
        "What doubling the schedule did: each arm at 2x minus the same arm at 1x, paired by "
        "seed, test split. While the fixed-T arms still gain, the 1x schedule is not "
        "converged.",
        st.markdown_table(["schedule", "arm", "AP", "AP50", "AP90"], lines, right=3), out)


def regimes_words(results: Path) -> Any:
    """The README's sentences under the table: one per regime, words by the rule."""
    rows = regime_rows(results)
    bullets = [f"- {answer(rows)}"] if rows else []
    bullets += [f"- {regime_sentence(r)}" for r in rows]
    for short, long in pairs_of_schedules(rows):
        trunk = "pretrained trunk" if "pretrained" in short["archive"] else "from scratch"
        base = doubling(short, long, short["choice"].best)
        gap_short, gap_long = short["diffs"]["AP"], long["diffs"]["AP"]
        bullets.append(
            f"- Doubling the schedule ({trunk}, {short['iterations']} -> "
            f"{long['iterations']}) moved the best fixed T ({ARM_TEXT[short['choice'].best]} "
            f"at {short['iterations']}) by {quote(base)} AP ({word(base, 'gain', 'loss')}); "
            f"Dynamic R-CNN's AP difference went from {quote(gap_short)} to "
            f"{quote(gap_long)}.")
    return st.Table("The sentences under the README's table (generated: each verdict word "
                    "follows the study's rule).", "\n".join(bullets) + "\n",
                    summary_rows(rows))


def pretrain(results: Path) -> Any:
    """The pretrained trunk (pretrain_trunk.py's report)."""
    pre = load_pretrain_report(results)
    rows = [] if pre is None else [[
        "tiny_fpn, Fashion-MNIST training file", str(pre["train_images"]),
        str(pre["config"]["epochs"]), str(pre["test_images"]),
        f"{100 * pre['test_accuracy']:.1f}%", f"`{pre['sha256'][:12]}`"]]
    return st.Table(
        "The trunk the pretrained regime starts from: a 10-class classifier, top-1 accuracy "
        "on Fashion-MNIST's test file.",
        st.markdown_table(["trunk", "train images", "epochs", "test images", "top-1",
                           "SHA-256"], rows, right=4), [] if pre is None else [pre])


REGIME_TABLES = {
    "pretrain": pretrain,
    "glance": glance,
    "regimes_words": regimes_words,
    "regimes_columns": regimes_columns,
    "regimes_arms": regimes_arms,
    "regimes_doubling": regimes_doubling,
}


def plot_ap_vs_iou(results: Path, out: Path) -> None:
    """AP at IoU 0.5 .. 0.9 of the best baseline and Dynamic R-CNN (test, mean over seeds),
    one panel per data set (the synthetic sets, against the best T 0.5)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ("exact", "large", "jittered", "finetune")
    cols = ("AP50", "AP60", "AP70", "AP80", "AP90")
    ious = [0.5, 0.6, 0.7, 0.8, 0.9]
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.4), sharey=True)
    for ax, name in zip(axes, names):
        chosen, seeds = st.best_vs_best(results, st.SETS[name]["archives"], ["dla_dsl", "baseline"])
        for arm, label, style in (("baseline", "best baseline", "o--"),
                                  ("dla_dsl", "Dynamic R-CNN", "s-")):
            ax.plot(ious, [chosen[arm].mean("test", c, seeds) for c in cols], style,
                    label=label)
        ax.set_title(f"{st.SETS[name]['text']} (n = {len(seeds)})", fontsize=9)
        ax.set_xlabel("IoU threshold")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("AP (test, mean over seeds)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=100, metadata={"Software": None})
    plt.close(fig)
