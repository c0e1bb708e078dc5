"""The API reference (`make docs`, issue 29): pdoc builds it from the docstrings without a
single warning, and every public name of the core packages documents its arguments.

scripts/build_docs.py is what `make docs` runs; a warning there is an error, so these tests
make `make test` fail when the reference would warn (shown once below on a deliberate edit).
"""

import importlib.util
import inspect
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pdoc.doc
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "build_docs.py"

_spec = importlib.util.spec_from_file_location("build_docs", SCRIPT)
build_docs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build_docs)

# The packages whose every public name must document its arguments (issue 29).
CORE = ("dynrcnn.ops", "dynrcnn.dynamic", "dynrcnn.modeling", "dynrcnn.engine")
# Names a reader looks for first, by page.
KEY_NAMES = {
    "dynrcnn/ops.html": ("box_iou", "dynamic_match", "dynamic_smooth_l1", "MatchResult"),
    "dynrcnn/dynamic.html": ("DynamicConfig", "DynamicState", "MatchDiagnostics"),
    "dynrcnn/modeling.html": ("build_detector", "DynamicRoIHeads", "CascadeRoIHeads",
                              "make_dynamic", "to_torchvision"),
    "dynrcnn/engine.html": ("TrainConfig", "EvalConfig", "Trainer", "train", "evaluate"),
    "dynrcnn/data.html": ("CocoDetection", "SyntheticConfig", "make_synthetic_coco"),
    "dynrcnn/study.html": ("Runner", "StudySpec", "paired_difference"),
}


def test_make_docs_builds_the_reference_without_warnings(tmp_path):
    """`make docs`'s command, in a fresh interpreter as make runs it."""
    out = tmp_path / "api"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--output", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "warning" not in (proc.stdout + proc.stderr).lower(), proc.stdout + proc.stderr
    assert (out / "index.html").is_file()
    for page, names in KEY_NAMES.items():
        html = (out / page).read_text()
        module = importlib.import_module(page[:-len(".html")].replace("/", "."))
        # every name of the package's API has its own entry (dynrcnn.dynamic has no __all__)
        for name in getattr(module, "__all__", names):
            assert f'<section id="{name}">' in html, f"{name} missing from {page}"
        for name in names:
            assert f'<section id="{name}">' in html, f"{name} missing from {page}"


GOOD = '''\
"""A package the test edits."""

__all__ = ["area"]


def area(width: float, height: float) -> float:
    """The area of a rectangle.

    Args:
        width: its width.
        height: its height.
    """
    return width * height
'''


def test_a_warning_fails_the_docs_build(tmp_path, monkeypatch, capsys):
    """The deliberate edit: `__all__` names a function that was renamed. pdoc renders on (the
    name just disappears from the page) but warns, and the build fails on the warning."""
    package = tmp_path / "src" / "docs_edit_demo"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(GOOD)
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    assert build_docs.build(tmp_path / "ok", ["docs_edit_demo"]) == []

    (package / "__init__.py").write_text(GOOD.replace('__all__ = ["area"]',
                                                      '__all__ = ["area", "volume"]'))
    sys.modules.pop("docs_edit_demo", None)
    problems = build_docs.build(tmp_path / "edited", ["docs_edit_demo"])
    assert len(problems) == 1
    assert "'volume' in docs_edit_demo.__all__, but it does not resolve" in problems[0]

    sys.modules.pop("docs_edit_demo", None)
    assert build_docs.main(["docs_edit_demo", "--output", str(tmp_path / "main")]) == 1
    err = capsys.readouterr().err
    assert "1 warning(s), treated as errors" in err and "'volume'" in err


def _named(text: str, name: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(name)}(?!\w)", text) is not None


def _parameters(signature: inspect.Signature, constructor: bool = False) -> list:
    """The parameters a docstring must name: all but self/cls and `_private` ones; for a
    constructor that only passes (*args, **kwargs) on (exceptions, autograd.Function),
    none."""
    params = [p for p in signature.parameters.values()
              if p.name not in ("self", "cls") and not p.name.startswith("_")]
    kinds = {p.kind for p in params}
    if constructor and kinds == {inspect.Parameter.VAR_POSITIONAL,
                                 inspect.Parameter.VAR_KEYWORD}:
        return []
    return [p.name for p in params]


def _function_problems(label: str, doc: pdoc.doc.Function) -> list:
    if not doc.docstring.strip():
        return [f"{label}: no docstring"]
    return [f"{label}: argument {name!r} not described"
            for name in _parameters(doc.signature) if not _named(doc.docstring, name)]


def _class_problems(label: str, doc: pdoc.doc.Class) -> list:
    problems = [] if doc.docstring.strip() else [f"{label}: no docstring"]
    init = doc.members.get("__init__")
    text = doc.docstring + "\n" + (init.docstring if init is not None else "")
    try:
        arguments = _parameters(inspect.signature(doc.obj), constructor=True)
    except ValueError:  # a builtin's constructor (exceptions): nothing of ours to describe
        arguments = []
    problems += [f"{label}: constructor argument {name!r} not described"
                 for name in arguments if not _named(text, name)]
    for member in doc.own_members:
        if member.name.startswith("_"):
            continue
        if isinstance(member, pdoc.doc.Function):
            problems += _function_problems(f"{label}.{member.name}", member)
        elif isinstance(inspect.getattr_static(doc.obj, member.name, None), property):
            if not member.docstring.strip():
                problems.append(f"{label}.{member.name}: property without a docstring")
    return problems


def undocumented(module_name: str) -> list:
    """What the API reference of `module_name` leaves undocumented, by the rules of
    test_core_api_documents_its_arguments."""
    module = pdoc.doc.Module.from_name(module_name)
    problems = []
    for name, doc in module.members.items():
        label = f"{module_name}.{name}"
        if isinstance(doc, pdoc.doc.Function):
            problems += _function_problems(label, doc)
        elif isinstance(doc, pdoc.doc.Class):
            problems += _class_problems(label, doc)
        elif not doc.docstring.strip():
            problems.append(f"{label}: no docstring")
    return problems


@pytest.mark.parametrize("module_name", CORE)
def test_core_api_documents_its_arguments(module_name):
    """Every name the reference shows for the package (its `__all__`; for dynrcnn.dynamic,
    which has none, its public names) has a docstring, and the docstring names every
    argument: a function's parameters, a class's constructor parameters (a dataclass's or
    NamedTuple's fields, listed in the class docstring) and the parameters of the class's
    own public methods; properties and constants have a docstring. Parameters starting with
    an underscore are private and left out."""
    problems = undocumented(module_name)
    assert not problems, "\n".join(problems)


def test_the_rules_catch_a_missing_argument(tmp_path, monkeypatch):
    package = tmp_path / "docs_rules_demo"
    package.mkdir()
    (package / "__init__.py").write_text(textwrap.dedent('''\
        from dataclasses import dataclass

        __all__ = ["area", "Box", "LIMIT"]

        LIMIT = 3


        def area(width: float, height: float) -> float:
            """The area; width: its width."""
            return width * height


        @dataclass
        class Box:
            """A box.

            x: left
            """

            x: float
            y: float

            def moved(self, dx: float) -> "Box":
                """The box moved right by dx."""
                return Box(self.x + dx, self.y)

            def scaled(self, factor: float) -> "Box":
                return Box(self.x * factor, self.y * factor)
        '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    assert undocumented("docs_rules_demo") == [
        "docs_rules_demo.area: argument 'height' not described",
        "docs_rules_demo.Box: constructor argument 'y' not described",
        "docs_rules_demo.Box.scaled: no docstring",
        "docs_rules_demo.LIMIT: no docstring",
    ]
