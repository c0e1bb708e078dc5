"""Build the HTML API reference of dynrcnn from its docstrings with pdoc; any warning fails.

    python scripts/build_docs.py [--output build/docs/api] [MODULE ...]

`make docs` runs it; tests/test_api_docs.py runs `build` in `make test`. pdoc imports the
packages and documents each one's `__all__` (its public API), in Google docstring style.
It reports problems (a name in `__all__` that does not resolve, a module that fails to
import, an annotation it cannot evaluate, ...) as Python warnings and renders on regardless;
here every warning, and every warning logged through `logging` during the build, is an
error: the pages are still written, the exit status is 1 and the warnings are printed.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import List, Sequence

# The documented packages; dynrcnn.ops comes with dynrcnn, whose `__all__` names it. Their
# other submodules are implementation: each package's `__all__` is its API. The op modules
# under dynrcnn.ops share their names with the functions that dynrcnn.ops exports, so pdoc
# would add a page for each; the functions' page is enough.
MODULES = ("dynrcnn", "dynrcnn.dynamic", "dynrcnn.modeling", "dynrcnn.engine",
           "dynrcnn.data", "dynrcnn.study")
EXCLUDE = (r"!dynrcnn\.ops\..+",)
DEFAULT_OUTPUT = Path("build/docs/api")


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.messages: List[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(f"{record.levelname} ({record.name}): {record.getMessage()}")


def _resolve_lazy_exports(modules: Sequence[str]) -> None:
    """Bind the names a package's `__all__` provides through a module `__getattr__` (PEP 562;
    dynrcnn.data loads its synthetic generator on first use): pdoc looks only in the
    module's namespace and would report them as unresolved."""
    for name in modules:
        if name.startswith("!"):
            continue
        module = importlib.import_module(name)
        if "__getattr__" not in vars(module):
            continue
        for export in getattr(module, "__all__", ()):
            if export not in vars(module):
                try:
                    setattr(module, export, getattr(module, export))
                except AttributeError:
                    pass  # pdoc reports it


def build(output: Path, modules: Sequence[str] = MODULES + EXCLUDE) -> List[str]:
    """Write the HTML reference of `modules` (pdoc module specs, `!regex` to leave modules
    out) into `output`, replacing an earlier build there.

    Args:
        output: the directory to write index.html, one page per module and search.js into.
        modules: importable module names, as pdoc takes them.

    Returns:
        The warnings the build raised or logged, as text: the build is clean when empty.
    """
    import pdoc
    import pdoc.doc
    import pdoc.render

    if output.exists():
        if any(output.iterdir()) and not (output / "index.html").exists():
            raise SystemExit(f"{output} holds files that are not an API reference: "
                             "give an empty or new directory")
        shutil.rmtree(output)
    output.mkdir(parents=True)
    # pdoc caches a module's documentation by name: a second build in one process (the
    # tests) must see the modules as imported now
    pdoc.doc.Module.from_name.__func__.cache_clear()
    handler = _Collect()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            _resolve_lazy_exports(modules)
            pdoc.render.configure(docformat="google")
            pdoc.pdoc(*modules, output_directory=output)
    finally:
        root.removeHandler(handler)
    found = [f"{w.category.__name__}: {w.message} ({w.filename}:{w.lineno})" for w in caught]
    return found + handler.messages


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", default=list(MODULES + EXCLUDE),
                        help="pdoc module specs (default: the dynrcnn packages)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT,
                        help=f"output directory (default: {DEFAULT_OUTPUT})")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    problems = build(args.output, args.modules)
    seconds = time.perf_counter() - start
    if problems:
        print(f"API reference: {len(problems)} warning(s), treated as errors:", file=sys.stderr)
        for text in problems:
            print("  " + text.replace("\n", "\n    "), file=sys.stderr)
        return 1
    print(f"API reference written to {args.output}/index.html ({seconds:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
