"""Checks of the prose around the summary tables (tests/test_summary.py runs them).

A sentence of README.md or docs/ that quotes a result must quote it from a table, in the
row and column it names, and the verdict word beside it must be the one the study's rule
allows (dynrcnn.study.stats: resolved where the 95% interval excludes 0, a tie where it
lies within ±TIE_MARGIN, else not resolved):

- `quote_problems`: a quoted "mean [low, high]" must be one cell of a table; when its
  sentence names a column (AP, AP50, ...) the cell must be in that column, and when it
  names a table's row (the row's first cell, as written there) the cell must be in that row.
- `verdict_problems`: "tie", "level" need an interval within ±TIE_MARGIN; "gain", "rose",
  "better", "pays", ... need one above 0; "cost", "worse", "lost", ... one below 0; "not
  resolved" one that includes 0. The interval is the clause's own, else the sentence's
  only one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

from dynrcnn.study.stats import TIE_MARGIN

TRIPLE = re.compile(r"(?:\*\*)?([+-]\d+\.\d+)(?:\*\*)? \[([+-]\d+\.\d+), ([+-]\d+\.\d+)\]")
INTERVAL = re.compile(r"\[([+-]\d+\.\d+), ([+-]\d+\.\d+)\]")
COLUMN = re.compile(r"\b(?:segm )?AP(?:50|60|70|75|80|90)?\b")
WORDS = {
    "tie": ("tie", "ties", "tied", "level"),
    "up": ("gain", "gains", "gained", "rose", "rises", "better", "pays", "paid", "wins",
           "won", "ahead", "improves", "improved", "higher"),
    "down": ("cost", "costs", "lost", "loses", "worse", "fell", "falls", "price",
             "behind", "lower"),
}
NOT_RESOLVED = re.compile(r"\bnot (?:yet )?resolved\b|\bunresolved\b", re.I)


@dataclass(frozen=True)
class Cell:
    table: str
    row: str
    column: str
    text: str  # "+1.6 [+1.1, +2.1]"


def table_cells(tables: Dict[str, object]) -> List[Cell]:
    """Every "mean [low, high]" cell of every summary table, with its row and column."""
    cells = []
    for name, table in tables.items():
        lines = [ln for ln in table.markdown.splitlines() if ln.startswith("|")]
        if len(lines) < 3:
            continue
        header = [c.strip() for c in lines[0].strip("|").split("|")]
        for line in lines[2:]:
            values = [c.strip() for c in line.strip("|").split("|")]
            for column, value in zip(header, values):
                for m in TRIPLE.finditer(value):
                    cells.append(Cell(name, values[0], column, _triple(m)))
    return cells


def _triple(m: re.Match) -> str:
    return f"{m.group(1)} [{m.group(2)}, {m.group(3)}]"


def sentences(text: str) -> List[str]:
    """Sentences of Markdown prose: split at '. ' / line-start bullets, joined lines."""
    flat = re.sub(r"\n(?![-*] |\n)", " ", text)
    parts = re.split(r"(?<=[.!?])\s+(?=[A-Z(*`])|\n+", flat)
    return [p.strip() for p in parts if p.strip()]


def quote_problems(prose: str, tables: Dict[str, object]) -> List[str]:
    cells = table_cells(tables)
    rows = {c.row for c in cells if len(c.row) > 8}
    problems = []
    for sentence in sentences(prose):
        for m in TRIPLE.finditer(sentence):
            text = _triple(m)
            found = [c for c in cells if c.text == text]
            if not found:
                problems.append(f"{text} is no table's cell: {sentence[:120]}")
                continue
            before = sentence[:m.start()]
            named = COLUMN.findall(before.split(",")[-1] + sentence[m.end():m.end() + 6])
            if named and not any(c.column in named for c in found):
                problems.append(f"{text} is not in column {named[-1]} of any table "
                                f"(it is in {found[0].column}): {sentence[:120]}")
            named_rows = [r for r in rows if r in sentence]
            if named_rows and not any(c.row in named_rows for c in found):
                problems.append(f"{text} is not in row {named_rows[0]!r} (it is in "
                                f"{found[0].row!r}): {sentence[:120]}")
    return problems


def _kind_ok(kind: str, low: float, high: float) -> bool:
    if kind == "tie":  # resolved wins: a tie's interval also includes 0
        return -TIE_MARGIN <= low <= 0 <= high <= TIE_MARGIN
    if kind == "up":
        return low > 0
    if kind == "down":
        return high < 0
    return low <= 0 <= high and not (-TIE_MARGIN <= low and high <= TIE_MARGIN)


def _kinds(text: str) -> List[Tuple[str, str]]:
    found = [("unresolved", m.group(0)) for m in NOT_RESOLVED.finditer(text)]
    rest = NOT_RESOLVED.sub(" ", text)
    for kind, words in WORDS.items():
        for w in words:
            if re.search(rf"\b{w}\b", rest, re.I):
                found.append((kind, w))
    return found


SIGNED = re.compile(r"(?<![\w.\[])([+-]\d+\.\d+)(?![\d\]])")


def _mean_problems(sentence: str, cells: Sequence[Cell]) -> List[str]:
    """A verdict word beside bare signed means ("a tie (+0.2)"): each mean must be a cell
    (in the column named, if any) whose interval allows the word."""
    problems = []
    masked = TRIPLE.sub(" # ", sentence)  # quoted with its interval: verdict_problems' part
    for clause in re.split(r"[;:,]", masked):
        kinds = _kinds(clause)
        if not kinds:
            continue
        for m in SIGNED.finditer(clause):
            named = COLUMN.findall(clause[:m.start()].split(",")[-1] + clause[m.end():m.end() + 6])
            found = [c for c in cells if c.text.split(" [")[0] == m.group(1)
                     and (not named or c.column in named)]
            if not found:
                continue
            bounds = [tuple(float(x) for x in INTERVAL.search(c.text).groups()) for c in found]
            for kind, w in kinds:
                if not any(_kind_ok(kind, lo, hi) for lo, hi in bounds):
                    lo, hi = bounds[0]
                    problems.append(f"'{w}' beside {m.group(1)} (its table interval "
                                    f"[{lo:+.1f}, {hi:+.1f}]): {sentence[:140]}")
    return problems


def verdict_problems(prose: str, tables: Dict[str, object] | None = None) -> List[str]:
    problems = []
    cells = table_cells(tables) if tables else []
    for sentence in sentences(prose):
        intervals = INTERVAL.findall(sentence)
        if cells:
            problems += _mean_problems(sentence, cells)
        if not intervals:
            continue
        # clauses: split at , ; : ( ) outside the intervals
        masked = INTERVAL.sub(lambda m: "[" + "#" * (len(m.group(0)) - 2) + "]", sentence)
        cuts = [0] + [m.start() for m in re.finditer(r"[,;:()]", masked)] + [len(sentence)]
        clauses = [sentence[a:b] for a, b in zip(cuts, cuts[1:])]
        checked, carried = False, []
        for i, clause in enumerate(clauses):
            own = INTERVAL.findall(clause)
            words = _kinds(clause)
            if not own:
                carried = words or carried
                continue
            prev = clauses[i - 1] if i else ""
            nxt = clauses[i + 1] if i + 1 < len(clauses) else ""
            if prev and not INTERVAL.findall(prev):
                words += _kinds(prev)
            if nxt.startswith(("(", ",")) and len(nxt) < 24:  # "... [+1.1, +2.1] (gain)"
                words += _kinds(nxt)
            for kind, w in words or carried:
                checked = True
                low, high = own[-1]
                if not _kind_ok(kind, float(low), float(high)):
                    problems.append(f"'{w}' beside [{low}, {high}]: {sentence[:140]}")
        if not checked and len(intervals) == 1:
            low, high = intervals[0]
            for kind, w in _kinds(sentence):
                if not _kind_ok(kind, float(low), float(high)):
                    problems.append(f"'{w}' beside [{low}, {high}]: {sentence[:140]}")
    return problems


def unsigned_ap_numbers(prose: str, tables: Dict[str, object]) -> List[str]:
    """Unsigned numbers quoted as AP ("up to 2.2 AP50", "69.3 val AP") that no table holds
    (signed or not)."""
    held = set()
    for table in tables.values():
        held.update(n.lstrip("+-") for n in re.findall(r"[+-]?\d+\.\d+", table.markdown))
    quoted = re.findall(r"(?<![\w.+-])(\d+\.\d+) (?:val |test )?(?:segm )?AP\d*\b", prose)
    return sorted({n for n in quoted if n not in held})


def all_problems(prose: str, tables: Dict[str, object]) -> List[str]:
    return (quote_problems(prose, tables) + verdict_problems(prose, tables)
            + [f"{n} AP is in no table" for n in unsigned_ap_numbers(prose, tables)])


__all__: Sequence[str] = ("all_problems", "quote_problems", "verdict_problems",
                          "unsigned_ap_numbers")
