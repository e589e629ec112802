"""bnfast is typed: mypy is clean over the whole package, and every public function and
method says the types of all its parameters and of its return.

The annotation check reads the source with ``ast`` (nothing is imported). It covers every
``bnfast/**/*.py`` file (``_kernels.pyi`` is checked against the compiled module by
tests/test_stubs.py): module-level functions (also those inside a module-level ``if`` or
``try``), and the methods of public classes, nested public classes included. Names starting
with ``_`` are private and skipped, except dunders (``__init__``, ``__repr__``, ...), which
are part of the interface. Functions nested inside functions are not interface and are skipped.
"""
import ast
import hashlib
import pathlib
import re
import subprocess
import sys
import tempfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "bnfast"

# Public functions and methods that are not fully annotated yet ("file:qualified name"):
# none. Never add a name here: annotate it.
NOT_YET_ANNOTATED: set[str] = set()


def _is_public(name):
    return not name.startswith("_") or (name.startswith("__") and name.endswith("__"))


def _missing_annotations(func, is_method):
    """The parameters of ``func`` without an annotation, plus "return" if it has none."""
    args = func.args
    params = args.posonlyargs + args.args + args.kwonlyargs
    static = any(isinstance(d, ast.Name) and d.id == "staticmethod"
                 for d in func.decorator_list)
    if is_method and not static and params:
        params = params[1:]  # self or cls
    missing = [p.arg for p in params if p.annotation is None]
    missing += ["*" + a.arg for a in (args.vararg,) if a is not None and a.annotation is None]
    missing += ["**" + a.arg for a in (args.kwarg,) if a is not None and a.annotation is None]
    if func.returns is None:
        missing.append("return")
    return missing


def _statements(body):
    """The statements of a module or class body, looking inside ``if`` / ``try`` blocks."""
    for node in body:
        if isinstance(node, ast.If):
            yield from _statements(node.body)
            yield from _statements(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody,
                          *(h.body for h in node.handlers)):
                yield from _statements(block)
        else:
            yield node


def _public_functions(body, prefix="", is_method=False):
    """(qualified name, function node, is_method) of the public functions in ``body``."""
    for node in _statements(body):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _is_public(node.name):
            yield prefix + node.name, node, is_method
        elif isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            yield from _public_functions(node.body, f"{prefix}{node.name}.", True)


def unannotated():
    """{"file:qualified name": [what is missing]} over the package."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        rel = path.relative_to(PACKAGE).as_posix()
        for name, func, is_method in _public_functions(tree.body):
            missing = _missing_annotations(func, is_method)
            if missing:
                found[f"{rel}:{name}"] = missing
    return found


def test_public_functions_are_annotated():
    new = {k: v for k, v in unannotated().items() if k not in NOT_YET_ANNOTATED}
    assert not new, ("public functions without full annotations (annotate them with "
                     f"numpy.typing ArrayLike / NDArray): {new}")


def test_not_yet_annotated_list_is_current():
    annotated_now = NOT_YET_ANNOTATED - set(unannotated())
    assert not annotated_now, (f"annotated (or gone) now, remove from NOT_YET_ANNOTATED: "
                               f"{sorted(annotated_now)}")


def test_annotation_check_sees_what_it_must():
    # The checker itself: each kind of gap is reported, and complete annotations are not.
    source = '''
def ok(x: int, *a: int, k: int = 0, **kw: int) -> int: ...
def no_return(x: int): ...
def no_param(x, y: int) -> None: ...
def _private(x): ...
def __getattr__(name): ...
if True:
    def in_if(x) -> None: ...
class Public:
    def __init__(self, n: int): ...
    def method(self, *args) -> None: ...
    @staticmethod
    def static(x) -> None: ...
    def _hidden(self, x): ...
    class Inner:
        def inner(self) -> int: ...
        def bare(self): ...
class _Private:
    def method(self, x): ...
def outer(x: int) -> None:
    def closure(y): ...
'''
    found = {name: _missing_annotations(func, is_method)
             for name, func, is_method in _public_functions(ast.parse(source).body)}
    found = {name: missing for name, missing in found.items() if missing}
    assert found == {
        "no_return": ["return"],
        "no_param": ["x"],
        "__getattr__": ["name", "return"],
        "in_if": ["x"],
        "Public.__init__": ["return"],
        "Public.method": ["*args"],
        "Public.static": ["x"],
        "Public.Inner.bare": ["return"],
    }


def test_mypy_ignores_no_module():
    # The mypy configuration holds no ignore_errors override: every module is checked.
    config = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert "ignore_errors" not in config


def test_mypy_is_clean_over_the_package():
    pytest.importorskip("mypy")
    # A cache outside the repository, one per checkout, kept between runs (mypy checks it is
    # current), so that a rerun takes seconds instead of the ~30 s of a cold run.
    key = hashlib.sha1(str(ROOT).encode()).hexdigest()[:12]
    cache = pathlib.Path(tempfile.gettempdir()) / f"bnfast-mypy-cache-{key}"
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"),
         "--cache-dir", str(cache), "bnfast"],
        capture_output=True, text=True, cwd=ROOT, timeout=600)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    checked = re.search(r"Success: no issues found in (\d+) source files", output)
    assert checked, output
    # Every module was checked (the .py files and the _kernels.pyi stub): none was excluded.
    n_modules = len(list(PACKAGE.rglob("*.py"))) + len(list(PACKAGE.rglob("*.pyi")))
    assert int(checked.group(1)) >= n_modules, output
