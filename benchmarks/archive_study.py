"""Copy a finished (or partly finished) study's small files into benchmarks/results/.

    python benchmarks/archive_study.py runs/fashion_scratch \
        benchmarks/results/study_fashion_scratch_cpu

Keeps what rebuilds the reports and lets the study continue without retraining (copy the
archive back into an --out directory): every run's job, config, logs and metrics
(dynrcnn.study.archive.ARCHIVED_FILES, eval_*/metrics.json), every study's study.json,
study.log, report.md / .json / PNGs, at any depth (a study over several schedules keeps
one study per iters_N/). No checkpoints. Runs without final metrics are left out.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import List, Optional, Sequence

from dynrcnn.study.archive import ARCHIVED_FILES, ARCHIVED_STUDY_FILES

STUDY_FILES = ARCHIVED_STUDY_FILES + ("report.md", "report.json")


def finished(run: Path) -> bool:
    """A run directory with its final evaluation (eval_<7 digits>/metrics.json)."""
    return any(p.parent.name[len("eval_"):].isdigit() for p in run.glob("eval_*/metrics.json"))


def archive(src: Path, dest: Path) -> List[Path]:
    copied = []
    for path in sorted(src.rglob("*")):
        if not path.is_file():
            continue
        rel = path.relative_to(src)
        run = next((p for p in [path.parent, path.parent.parent]
                    if p.name.startswith("seed") and (p / "job.json").is_file()), None)
        if run is not None:
            keep = finished(run) and (path.name in ARCHIVED_FILES or (
                path.name == "metrics.json" and path.parent.name.startswith("eval_")))
        else:
            keep = path.name in STUDY_FILES or (path.name.startswith("report")
                                                and path.suffix == ".png")
        if keep:
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
            copied.append(target)
    return copied


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/archive_study.py",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("src", type=Path, help="the study's --out-dir")
    parser.add_argument("dest", type=Path, help="the archive directory")
    args = parser.parse_args(argv)
    if not any(args.src.rglob("study.log")):
        parser.error(f"{args.src}: not a study directory (no study.log)")
    copied = archive(args.src, args.dest)
    print(f"{len(copied)} files -> {args.dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
