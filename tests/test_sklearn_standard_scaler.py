"""scikit-learn's own StandardScaler tests, run against ``BatchNormScaler(eps=0)``.

Nothing of scikit-learn is kept in this repository: at test time the installed scikit-learn's
``sklearn/preprocessing/tests/test_data.py`` is copied into a temporary folder, with one line
added after its imports that rebinds the module's ``StandardScaler`` to a BatchNormScaler
whose ``eps`` defaults to 0 (``_bnfast_standard_scaler.py``, written beside it). A conftest
there keeps the tests that use StandardScaler (by their source or their parameters): dense,
sparse and array API. pytest runs them in a subprocess with ``SCIPY_ARRAY_API=1``, which
scipy reads when it is imported and the array-API cases need; array-api-strict and PyTorch
(CPU) provide their namespaces when installed, the GPU cases skip themselves.

Run it alone, with the counts printed: ``pytest tests/test_sklearn_standard_scaler.py -s``.
"""
import ast
import os
import textwrap

import pytest

from _helpers import run_pytest

SUBSTITUTE = textwrap.dedent('''
    """Written by bnfast's tests/test_sklearn_standard_scaler.py."""
    import bnfast


    class BatchNormScaler(bnfast.BatchNormScaler):
        """BatchNormScaler with eps=0 by default: StandardScaler's arithmetic."""

        def __init__(self, *, eps=0.0, momentum=None, with_mean=True, with_std=True,
                     copy=True, n_threads=None):
            super().__init__(eps=eps, momentum=momentum, with_mean=with_mean,
                             with_std=with_std, copy=copy, n_threads=n_threads)


    StandardScaler = BatchNormScaler
''')

CONFTEST = textwrap.dedent('''
    """Written by bnfast's tests/test_sklearn_standard_scaler.py: keep the StandardScaler tests."""
    import inspect

    from _bnfast_standard_scaler import BatchNormScaler


    def _uses_standard_scaler(item):
        function = getattr(item, "function", None)
        if function is not None and "StandardScaler" in inspect.getsource(function):
            return True
        params = getattr(getattr(item, "callspec", None), "params", {})
        return any(p is BatchNormScaler or isinstance(p, BatchNormScaler)
                   for p in params.values())


    def pytest_collection_modifyitems(config, items):
        keep = [item for item in items if _uses_standard_scaler(item)]
        config.hook.pytest_deselected(items=[item for item in items if item not in keep])
        items[:] = keep
''')

# Far fewer than the 392 selected with scikit-learn 1.9.1 (304 passed and 88 skipped with
# torch, array-api-strict and pandas installed): a selection that went wrong (a renamed file,
# say) fails loudly.
MIN_SELECTED = 100


def _with_substitute(source):
    """The test module's source with ``StandardScaler`` rebound right after its imports."""
    body = ast.parse(source).body
    last_import = 0
    for node in body:
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue  # the docstring
        if not isinstance(node, (ast.Import, ast.ImportFrom)):
            break
        last_import = node.end_lineno
    assert last_import, "no import block found in scikit-learn's test_data.py"
    lines = source.splitlines(keepends=True)
    return "".join(lines[:last_import] + [
        "from _bnfast_standard_scaler import StandardScaler  # noqa: E402,F811 (bnfast)\n"]
        + lines[last_import:])


def test_standard_scaler_tests_of_scikit_learn_pass(tmp_path):
    sklearn = pytest.importorskip("sklearn")
    source = os.path.join(os.path.dirname(sklearn.__file__), "preprocessing", "tests",
                          "test_data.py")
    if not os.path.exists(source):
        pytest.skip("this scikit-learn was installed without its tests")
    with open(source, encoding="utf-8") as f:
        (tmp_path / "test_sklearn_data.py").write_text(_with_substitute(f.read()))
    (tmp_path / "_bnfast_standard_scaler.py").write_text(SUBSTITUTE)
    (tmp_path / "conftest.py").write_text(CONFTEST)
    counts, done = run_pytest(["-rfE", f"--rootdir={tmp_path}", "test_sklearn_data.py"],
                              cwd=tmp_path, env={"SCIPY_ARRAY_API": "1"})
    print(f"scikit-learn {sklearn.__version__} StandardScaler tests against "
          f"BatchNormScaler(eps=0): {counts}")
    tail = done.stdout[-6000:] + done.stderr[-3000:]
    assert counts["failed"] == counts["errors"] == 0, f"{counts}\n{tail}"
    assert done.returncode == 0, tail
    assert counts["passed"] + counts["skipped"] >= MIN_SELECTED, f"{counts}\n{tail}"
