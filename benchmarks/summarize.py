"""The summary tables of README.md and docs/accuracy.md, computed from benchmarks/results/.

    python benchmarks/summarize.py            # write results/summary.md, .json, the figure,
                                              # and the tables in README.md and docs/
    python benchmarks/summarize.py --check    # exit 1 if any of them differs (make test)

Every number the README and docs/accuracy.md show in a table is written here from the
committed results: the study reports' JSON (per-run val metrics) and the run archives
(`*_runs/`, each run's val and test metrics at every test setting), with differences
computed from unrounded values. A table in a Markdown file sits between
`<!-- summary: NAME -->` and `<!-- /summary -->`; this script owns what is between them.
Prose that quotes a signed number (+1.4, -0.5) or an interval must quote a mean or an
interval of these tables (tests/test_summary.py checks it).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))  # _summary_tables beside this file

from _summary_masks import MASK_TABLES  # noqa: E402
from _summary_regimes import REGIME_TABLES  # noqa: E402
from _summary_tables import TABLES as _TABLES  # noqa: E402
from _summary_tables import Table  # noqa: E402

# the regime tables' "glance" replaces the old one
TABLES = {**_TABLES, **REGIME_TABLES, **MASK_TABLES}

DOCS = ("README.md", "docs/accuracy.md", "benchmarks/README.md")
BLOCK = re.compile(r"(<!-- summary: (\w+) -->\n)(.*?)(<!-- /summary -->)", re.S)


@dataclass
class Mismatch:
    file: str
    table: str
    why: str


def build(results: Path) -> Dict[str, Table]:
    """Every summary table, computed from the files under `results`."""
    return {name: make(results) for name, make in TABLES.items()}


def summary_markdown(tables: Dict[str, Table]) -> str:
    lines = ["# Summary of the committed results", "",
             "Written by `python benchmarks/summarize.py` from the files under "
             "benchmarks/results/; README.md and docs/accuracy.md show these tables "
             "(`make test` checks that they do). Intervals: paired 95% t-intervals over "
             "seeds; bold: the interval excludes 0.", ""]
    for name, table in tables.items():
        lines += [f"## {name}", "", table.title, "", table.markdown.rstrip("\n"), ""]
        if table.note:
            lines += [table.note, ""]
    return "\n".join(lines)


def summary_json(tables: Dict[str, Table]) -> str:
    return json.dumps({name: {"title": t.title, "rows": t.rows} for name, t in tables.items()},
                      indent=1, sort_keys=True) + "\n"


def render_blocks(text: str, tables: Dict[str, Table], file: str
                  ) -> Tuple[str, List[Mismatch]]:
    """`text` with every summary block replaced by its table, and the blocks that differed
    (or name no table)."""
    problems: List[Mismatch] = []

    def replace(match: re.Match) -> str:
        name = match.group(2)
        if name not in tables:
            problems.append(Mismatch(file, name, f"no summary table {name!r}"))
            return match.group(0)
        want = tables[name].markdown
        if match.group(3) != want:
            problems.append(Mismatch(file, name, "differs from what summarize.py writes"))
        return match.group(1) + want + match.group(4)

    return BLOCK.sub(replace, text), problems


MEAN = re.compile(r"\| (?:\*\*)?([+-]\d+\.\d+)")
INTERVAL = re.compile(r"\[[+-]\d+\.\d+, [+-]\d+\.\d+\]")
SIGNED = re.compile(r"(?<![\w.])[+-]\d+\.\d+")


def quotable_numbers(tables: Dict[str, Table]) -> Tuple[set, set]:
    """(the means every table's cells start with, '+1.4'; its intervals, '[+0.3, +2.5]')."""
    means, intervals = set(), set()
    for table in tables.values():
        means.update(MEAN.findall(table.markdown))
        intervals.update(INTERVAL.findall(table.markdown))
    return means, intervals


def unbacked_numbers(prose: str, tables: Dict[str, Table]) -> List[str]:
    """Signed numbers of `prose` that are neither a table's mean nor part of one of its
    intervals: numbers typed by hand."""
    means, intervals = quotable_numbers(tables)
    for interval in INTERVAL.findall(prose):
        if interval in intervals:
            prose = prose.replace(interval, "")
    return sorted({n for n in SIGNED.findall(prose) if n not in means})


def check(root: Path = ROOT, tables: Optional[Dict[str, Table]] = None
          ) -> List[Mismatch]:
    """What differs between the committed files and what this script would write."""
    tables = tables if tables is not None else build(root / "benchmarks" / "results")
    problems = []
    for file in DOCS:
        path = root / file
        if not path.is_file():
            continue
        problems += render_blocks(path.read_text(), tables, file)[1]
    results = root / "benchmarks" / "results"
    for name, text in (("summary.md", summary_markdown(tables)),
                       ("summary.json", summary_json(tables))):
        path = results / name
        if not path.is_file() or path.read_text() != text:
            problems.append(Mismatch(f"benchmarks/results/{name}", "*",
                                     "differs from what summarize.py writes"))
    return problems


def write(root: Path = ROOT) -> List[str]:
    results = root / "benchmarks" / "results"
    tables = build(results)
    written = []
    for file in DOCS:
        path = root / file
        if path.is_file():
            text, _ = render_blocks(path.read_text(), tables, file)
            if text != path.read_text():
                path.write_text(text)
                written.append(file)
    (results / "summary.md").write_text(summary_markdown(tables))
    (results / "summary.json").write_text(summary_json(tables))
    from _summary_regimes import plot_ap_vs_iou

    plot_ap_vs_iou(results, results / "summary_ap_vs_iou.png")
    return written + ["benchmarks/results/summary.md", "benchmarks/results/summary.json",
                      "benchmarks/results/summary_ap_vs_iou.png"]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/summarize.py", description=__doc__
                                     .splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 naming every table that differs")
    args = parser.parse_args(argv)
    if args.check:
        problems = check()
        for p in problems:
            print(f"{p.file}: table {p.table}: {p.why}", file=sys.stderr)
        if problems:
            print("run `python benchmarks/summarize.py` to regenerate them", file=sys.stderr)
        return 1 if problems else 0
    for path in write():
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.exit(main())
