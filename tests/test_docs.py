"""The documentation stays true: its code runs, its links resolve, and every "§n" cited in
the repository names a section of docs/design.md.

Conventions for code in README.md and docs/*.md (write new examples this way):

- A fenced block whose info string is ``python`` is run. The ``python`` blocks of one file
  run in order, in one fresh interpreter, sharing their names, as a reader pasting them one
  after the other into ``python`` would run them. A ``pycon`` block (or a ``python`` block
  whose first line starts with ``>>>``) is an interactive session: it runs in the same
  interpreter, in its turn, and its printed results are checked with doctest.
- A block that must run as a program of its own (a cluster, several processes) is preceded,
  on the line before its fence, by ``<!-- run-as-script: NAME.py -->``. The text around it
  tells the reader to save it as ``NAME.py`` and run ``python NAME.py``, and the test does
  exactly that, in a fresh folder, in a fresh process; the text must contain
  ``python NAME.py``.
- Every ``python`` block (scripts too) also pastes into the Python 3.11 REPL as it stands:
  the REPL ends an indented block only at a blank line, so a statement back at the top level
  needs a blank line before it, and a blank line inside an indented block ends that block
  early. The test feeds each block to ``codeop`` line by line, as the REPL does, and fails on
  the SyntaxError the REPL would print.
- Each block stands on its own, so that a reader can paste any one of them: it imports and
  makes what it uses, or its first line is a comment naming what it takes from the blocks
  before it (``# continues the example above: uses x, gamma from it``).
- Blocks in any other language (``bash``, ``text``, ...) are not run.
- A block that needs an optional package that is not installed (torch, dask, scikit-learn,
  ...) is reported as skipped, naming the package; so is a block of the same file that then
  fails on a name the skipped block would have defined. CI installs them all.

Citations: every "§n" (n a number) in a tracked text file of the repository (code, tests,
docs) must name a section ``## n. Title`` of docs/design.md, written either bare ("§n") or as
"docs/design.md §n". A "§n" (or "section n") right after another document's name (an
upper-case word such as a DESIGN, or a file name such as notes.md) cites a document the
repository does not have, and fails the test.
"""
import ast
import builtins
import codeop
import doctest
import importlib.util
import json
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import bnfast

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")
DESIGN = os.path.join(DOCS, "design.md")
README = os.path.join(ROOT, "README.md")

# Where this process imports bnfast from: the subprocesses use the same build.
BNFAST_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(bnfast.__file__)))

# Packages a block may need that a plain `pip install .` does not bring.
OPTIONAL = {"torch", "dask", "distributed", "sklearn", "mpi4py", "threadpoolctl", "pandas",
            "scipy", "asv"}
# bnfast modules that import an optional package as they are imported.
IMPLIES = {"bnfast.dask": "dask", "bnfast.torch": "torch", "bnfast.preprocessing": "sklearn"}

TIMEOUT_S = 300  # per subprocess; the whole module takes well under a minute on 2 cores

FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})(?P<info>[^`]*)$")
SCRIPT_MARK = re.compile(r"^\s*<!--\s*run-as-script:\s*(?P<name>[\w.-]+\.py)\s*-->\s*$")


def _doc_files():
    files = [README]
    if os.path.isdir(DOCS):
        files += sorted(os.path.join(DOCS, f) for f in os.listdir(DOCS) if f.endswith(".md"))
    return [f for f in files if os.path.exists(f)]


def _rel(path):
    return os.path.relpath(path, ROOT).replace(os.sep, "/")


def parse_blocks(path):
    """The fenced code blocks of a Markdown file: dicts with file, line (of the first line of
    code, 1-based), lang, kind ("python", "doctest" or "script"), script name and source."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    blocks = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, info = m["fence"], m["info"].strip()
        lang = info.split()[0].lower() if info else ""
        start = i + 1
        j = start
        while j < len(lines):
            close = FENCE.match(lines[j])
            if (close and close["fence"][0] == fence[0] and len(close["fence"]) >= len(fence)
                    and not close["info"].strip()):
                break
            j += 1
        else:
            raise AssertionError(f"{_rel(path)}:{i + 1}: unclosed code fence")
        indent = len(m["indent"])
        source = "\n".join(line[indent:] if line[:indent].isspace() else line
                           for line in lines[start:j]) + "\n"
        prev = lines[i - 1] if i > 0 else ""
        mark = SCRIPT_MARK.match(prev)
        if lang in ("python", "py", "python3", "pycon"):
            if mark:
                kind = "script"
            elif lang == "pycon" or source.lstrip().startswith(">>>"):
                kind = "doctest"
            else:
                kind = "python"
            blocks.append({"file": _rel(path), "line": start + 1, "lang": lang, "kind": kind,
                           "script": mark["name"] if mark else None, "source": source})
        elif mark:
            raise AssertionError(f"{_rel(path)}:{i}: run-as-script marks a {lang or 'plain'} "
                                 "block; only python blocks can run as scripts")
        i = j + 1
    return blocks


def _block_id(block):
    return f"{block['file']}:{block['line']}"


ALL_BLOCKS = [b for path in _doc_files() for b in parse_blocks(path)]
SESSION_BLOCKS = [b for b in ALL_BLOCKS if b["kind"] != "script"]
SCRIPT_BLOCKS = [b for b in ALL_BLOCKS if b["kind"] == "script"]


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [BNFAST_PARENT, env.get("PYTHONPATH")]))
    env.setdefault("PYTHONHASHSEED", "0")
    return env


# Runs the session blocks of one file in order in a fresh interpreter; reads the blocks as
# JSON on stdin and writes one result per block as JSON to the file named by argv[1].
SESSION_DRIVER = textwrap.dedent('''
    import doctest, importlib.util, io, json, sys, traceback

    OPTIONAL = set(json.loads(sys.argv[2]))

    def missing_optional(exc):
        """The optional package whose absence raised exc (walking its causes), or None."""
        seen = set()
        while exc is not None and id(exc) not in seen:
            seen.add(id(exc))
            if isinstance(exc, ModuleNotFoundError) and exc.name:
                root = exc.name.split(".")[0]
                if root in OPTIONAL and importlib.util.find_spec(root) is None:
                    return root
            exc = exc.__cause__ or exc.__context__
        return None

    blocks = json.load(sys.stdin)
    ns = {"__name__": "__main__", "__builtins__": __builtins__}
    results, skipped = [], []
    for b in blocks:
        where = f"{b['file']}:{b['line']}"
        print(f"--- {where} ({b['kind']})", flush=True)
        padded = "\\n" * (b["line"] - 1) + b["source"]  # tracebacks name the Markdown lines
        try:
            if b["kind"] == "doctest":
                test = doctest.DocTestParser().get_doctest(padded, ns, where, b["file"], 0)
                out = io.StringIO()
                runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
                outcome = runner.run(test, out=out.write, clear_globs=False)
                ns.update(test.globs)
                if outcome.failed:
                    results.append({"status": "failed", "detail": out.getvalue()})
                    continue
            else:
                exec(compile(padded, b["file"], "exec"), ns)
            results.append({"status": "passed"})
        except BaseException as exc:
            root = missing_optional(exc) if isinstance(exc, ImportError) else None
            if root is not None:
                skipped.append(where)
                results.append({"status": "skipped",
                                "detail": f"needs {root}, which is not installed"})
            elif isinstance(exc, NameError) and skipped:
                results.append({"status": "skipped",
                                "detail": f"uses a name from a block skipped earlier "
                                          f"({', '.join(skipped)}): {exc}"})
                skipped.append(where)
            else:
                results.append({"status": "failed", "detail": traceback.format_exc()})
    with open(sys.argv[1], "w") as f:
        json.dump(results, f)
''')


def _imported_roots(source):
    roots = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module]
        else:
            continue
        for name in names:
            roots.add(name.split(".")[0])
            for prefix, needs in IMPLIES.items():
                if name == prefix or name.startswith(prefix + "."):
                    roots.add(needs)
    return roots


def _missing_optional(source):
    return sorted(r for r in _imported_roots(source) & OPTIONAL
                  if importlib.util.find_spec(r) is None)


class _Job:
    """One subprocess, started at once, waited for when its test asks."""

    def __init__(self, args, cwd, stdin_text=None):
        self.proc = subprocess.Popen(args, cwd=cwd, env=_env(), text=True,
                                     stdin=subprocess.PIPE if stdin_text is not None else None,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.stdin_text = stdin_text
        self.output = None

    def wait(self):
        if self.output is None:
            try:
                self.output = self.proc.communicate(self.stdin_text, timeout=TIMEOUT_S)[0]
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.output = self.proc.communicate()[0] + f"\n(killed after {TIMEOUT_S} s)"
        return self.proc.returncode, self.output


@pytest.fixture(scope="module")
def jobs(tmp_path_factory):
    """Every session and every script, started side by side (they spend much of their time
    starting interpreters, clusters and process groups), keyed by file or block id."""
    root = tmp_path_factory.mktemp("doc-runs")
    started = {}
    for file in dict.fromkeys(b["file"] for b in SESSION_BLOCKS):
        blocks = [b for b in SESSION_BLOCKS if b["file"] == file]
        work = root / ("session-" + re.sub(r"\W", "_", file))
        work.mkdir()
        job = _Job([sys.executable, "-c", SESSION_DRIVER, str(work / "results.json"),
                    json.dumps(sorted(OPTIONAL))], work, json.dumps(blocks))
        job.results_path, job.blocks = work / "results.json", blocks
        started[file] = job
    for block in SCRIPT_BLOCKS:
        if _missing_optional(block["source"]):
            continue
        work = root / ("script-" + re.sub(r"\W", "_", _block_id(block)))
        work.mkdir()
        (work / block["script"]).write_text(block["source"], encoding="utf-8")
        started[_block_id(block)] = _Job([sys.executable, block["script"]], work)
    yield started
    for job in started.values():
        if job.proc.poll() is None:
            job.proc.kill()
            job.proc.wait()


def test_the_docs_have_runnable_examples():
    """The extraction itself works: README has session blocks and script blocks."""
    readme = [b for b in ALL_BLOCKS if b["file"] == "README.md"]
    assert sum(b["kind"] == "python" for b in readme) >= 3, readme
    assert any(b["kind"] == "script" for b in readme), "no run-as-script block in README.md"


@pytest.mark.parametrize("block", SESSION_BLOCKS, ids=_block_id)
def test_block_runs_in_order(block, jobs):
    job = jobs[block["file"]]
    code, output = job.wait()
    if code != 0 or not job.results_path.exists():
        pytest.fail(f"the interpreter running the blocks of {block['file']} exited with "
                    f"{code}:\n{output[-4000:]}")
    results = dict(zip(map(_block_id, job.blocks), json.loads(job.results_path.read_text())))
    result = results[_block_id(block)]
    if result["status"] == "skipped":
        pytest.skip(f"{_block_id(block)}: {result['detail']}")
    assert result["status"] == "passed", (
        f"{_block_id(block)} failed (the blocks of {block['file']} run in order in one "
        f"interpreter):\n{result['detail']}\n--- the session's output (last 4000 characters):\n"
        f"{output[-4000:]}")


@pytest.mark.parametrize("block", SCRIPT_BLOCKS, ids=_block_id)
def test_script_block_runs_as_told(block, jobs):
    with open(os.path.join(ROOT, block["file"]), encoding="utf-8") as f:
        text = f.read()
    name = block["script"]
    prose = text.replace(f"run-as-script: {name}", "")
    assert f"python {name}" in prose, (
        f"{_block_id(block)}: the text should tell the reader to run `python {name}`")
    missing = _missing_optional(block["source"])
    if missing:
        pytest.skip(f"{_block_id(block)} ({name}) needs {', '.join(missing)}, not installed")
    code, output = jobs[_block_id(block)].wait()
    if code != 0:
        # An optional package imported indirectly (the scaler needs scikit-learn, say).
        for root in re.findall(r"No module named '(\w+)", output):
            if root in OPTIONAL and importlib.util.find_spec(root) is None:
                pytest.skip(f"{_block_id(block)} ({name}) needs {root}, not installed")
    assert code == 0, f"{_block_id(block)}: `python {name}` exited with {code}\n{output[-4000:]}"


# ---------------------------------------------------------------- pasted into the REPL

def repl_syntax_errors(source):
    """The errors the Python REPL (3.11's, line by line) prints for ``source`` pasted into it.

    Each line is added to the pending input and compiled as the REPL compiles it
    (``codeop.CommandCompiler`` in "single" mode, which remembers ``from __future__``
    imports): incomplete input waits for more lines, complete input runs (here: is dropped),
    and a SyntaxError is printed and drops the pending input, as in the REPL. Returns
    ``(line number in the block, message, line)`` for each error.
    """
    compiler = codeop.CommandCompiler()
    errors, pending = [], []
    for number, line in enumerate(source.splitlines(), 1):
        pending.append(line)
        try:
            code = compiler("\n".join(pending), "<stdin>", "single")
        except (SyntaxError, OverflowError, ValueError) as exc:
            errors.append((number, f"{type(exc).__name__}: {getattr(exc, 'msg', exc)}", line))
            pending = []
            continue
        if code is not None:
            pending = []
    return errors


def test_repl_check_catches_what_the_repl_rejects():
    """The check itself: what the REPL rejects fails it, the fixed forms pass."""
    after_loop = "total = 0\nfor i in range(3):\n    total += i\nprint(total)\n"
    assert [e[0] for e in repl_syntax_errors(after_loop)] == [4]
    assert repl_syntax_errors(after_loop.replace("\nprint", "\n\nprint")) == []
    blank_in_body = "def f():\n    x = 1\n\n    return x\n"
    assert [e[0] for e in repl_syntax_errors(blank_in_body)] == [4]
    # Blank lines inside brackets and strings do not end anything.
    assert repl_syntax_errors('x = (1,\n\n     2)\ny = """a\n\nb"""\n') == []


@pytest.mark.parametrize("block", [b for b in ALL_BLOCKS if b["kind"] != "doctest"],
                         ids=_block_id)
def test_block_pastes_into_the_repl(block):
    errors = repl_syntax_errors(block["source"])
    assert not errors, (
        f"{_block_id(block)}: pasted into the Python REPL, this block fails (a statement back "
        "at the top level needs a blank line before it; a blank line inside an indented block "
        "ends it):\n" + "\n".join(f"  {block['file']}:{block['line'] + n - 1}: {msg}: {line!r}"
                                  for n, msg, line in errors))


# ---------------------------------------------------------------- each block on its own

# First line of a block that takes names from the blocks before it, naming them.
USES_EARLIER = re.compile(r"^#.*\buses ([\w, ]+?) from ")


def _block_code(block):
    """A block's Python source (the examples of a doctest session, joined)."""
    if block["kind"] == "doctest":
        examples = doctest.DocTestParser().get_examples(block["source"])
        return "".join(example.source for example in examples)
    return block["source"]


def unbound_names(source):
    """The names ``source`` reads but never binds (assigns, imports, defines, takes as an
    argument) and that are not builtins: what it needs from code that ran before it."""
    bound, read = set(), set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Name):
            (read if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
    return read - bound - set(dir(builtins))


def test_unbound_names_finds_what_a_block_takes_from_earlier_ones():
    source = "import numpy as np\ny = np.ones(3) + x\ndef f(a):\n    return a + len(y)\n"
    assert unbound_names(source) == {"x"}
    assert USES_EARLIER.match("# continues the example above: uses x, gamma from it")[1] \
        == "x, gamma"


@pytest.mark.parametrize("block", ALL_BLOCKS, ids=_block_id)
def test_block_is_self_contained(block):
    """A reader may paste any one block alone: it imports and makes what it uses, or its first
    line says which names it takes from the blocks before it (``# ... uses x, y from ...``)."""
    source = _block_code(block)
    declared = USES_EARLIER.match(source.lstrip().split("\n", 1)[0])
    allowed = {n.strip() for n in declared[1].split(",")} if declared else set()
    missing = sorted(unbound_names(source) - allowed)
    assert not missing, (
        f"{_block_id(block)} uses {', '.join(missing)} without defining or importing them: "
        "import and make them in the block, or start it with a comment such as "
        f"'# continues the example above: uses {', '.join(missing)} from it'")


# ---------------------------------------------------------------- § citations

SECTION_HEADING = re.compile(r"^## (\d+)\. \S", re.M)
# A "§n", with the word before it (when there is one) to tell which document it cites.
CITATION = re.compile(r"(?:(?P<before>[\w./-]+)[ \t]+)?§[ \t]*(?P<num>\d+)")
# "<document> section n" too, for the naming check only.
NAMED_SECTION = re.compile(r"(?P<before>[\w./-]+)[ \t]+section[ \t]+(?P<num>\d+)")
OTHER_DOCUMENT = re.compile(r"^(?:[\w./-]+\.(?:md|rst|txt|pdf)|[A-Z][A-Z0-9_]{2,})$")
TEXT_EXTENSIONS = (".py", ".pyx", ".pxi", ".pxd", ".pyi", ".h", ".md", ".rst", ".txt", ".toml",
                   ".cfg", ".ini", ".sh", ".yml", ".yaml", ".json", ".in")
SKIP_DIRS = {".git", "build", "dist", "__pycache__", ".hypothesis", ".pytest_cache", ".asv",
             "env", "results", "html", ".eggs"}


def _text_files():
    """The repository's tracked (and new, not ignored) text files; outside a git checkout,
    every file with a text extension outside build and environment folders."""
    try:
        proc = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                               "--exclude-standard"], cwd=ROOT, capture_output=True, timeout=60)
        listed = proc.returncode == 0 and os.path.exists(os.path.join(ROOT, ".git"))
    except OSError:
        listed = False
    if listed:
        paths = [p for p in proc.stdout.decode().split("\0") if p]
    else:
        paths = []
        for dirpath, dirnames, filenames in os.walk(ROOT):
            dirnames[:] = [d for d in dirnames
                           if d not in SKIP_DIRS and not d.startswith((".venv", ".ci-venv"))
                           and not d.endswith(".egg-info")]
            paths += [os.path.relpath(os.path.join(dirpath, f), ROOT) for f in filenames
                      if f.endswith(TEXT_EXTENSIONS)]
    for rel in sorted(paths):
        full = os.path.join(ROOT, rel)
        if not os.path.isfile(full) or os.path.getsize(full) > 4_000_000:
            continue
        try:
            with open(full, encoding="utf-8") as f:
                yield rel.replace(os.sep, "/"), f.read()
        except (UnicodeDecodeError, OSError):
            continue  # a binary file


def _design_sections():
    assert os.path.exists(DESIGN), "docs/design.md is missing: the code cites its sections"
    with open(DESIGN, encoding="utf-8") as f:
        return [int(n) for n in SECTION_HEADING.findall(f.read())]


def _citations(patterns=(CITATION,)):
    for rel, text in _text_files():
        for m in (m for pattern in patterns for m in pattern.finditer(text)):
            line = text.count("\n", 0, m.start()) + 1
            yield rel, line, m["before"], int(m["num"]), m.group(0)


def test_design_sections_are_numbered_in_order():
    sections = _design_sections()
    assert sections == list(range(1, len(sections) + 1)), sections
    assert len(sections) >= 7, sections  # §1-§7 are cited by the code


def test_every_section_citation_resolves():
    sections = set(_design_sections())
    dangling = [f"{rel}:{line}: {text!r} (docs/design.md has no section {num})"
                for rel, line, _, num, text in _citations() if num not in sections]
    assert not dangling, "\n".join(dangling)


def test_citations_name_docs_design_md():
    wrong = [f"{rel}:{line}: {text!r} cites {before!r}, a document the repository does not "
             f"have (write 'docs/design.md §{num}' or '§{num}')"
             for rel, line, before, num, text in _citations((CITATION, NAMED_SECTION))
             if before and before.rstrip(".,:;") not in ("docs/design.md", "design.md")
             and OTHER_DOCUMENT.match(before.rstrip(",:;"))]
    assert not wrong, "\n".join(wrong)


# ---------------------------------------------------------------- links between the pages

LINK = re.compile(r"\]\((?P<target>[^)\s]+)\)")


def _slug(heading):
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_relative_links_resolve():
    """Every relative link of README.md and docs/*.md names a file that exists and, with
    '#anchor', a heading of that file."""
    broken = []
    for path in _doc_files():
        with open(path, encoding="utf-8") as f:
            text = f.read()
        for m in LINK.finditer(text):
            target = m["target"]
            if re.match(r"^[a-z]+:", target):
                continue  # http:, https:, mailto:
            file, _, anchor = target.partition("#")
            full = os.path.normpath(os.path.join(os.path.dirname(path), file)) if file else path
            where = f"{_rel(path)}:{text.count(chr(10), 0, m.start()) + 1}: {target}"
            if not os.path.exists(full):
                broken.append(f"{where} (no such file)")
            elif anchor and full.endswith(".md"):
                with open(full, encoding="utf-8") as f:
                    slugs = {_slug(h) for h in re.findall(r"^#+ (.+)$", f.read(), re.M)}
                if anchor not in slugs:
                    broken.append(f"{where} (no heading with that anchor)")
    assert not broken, "\n".join(broken)


# ---------------------------------------------------------------- the README's dtype table

DTYPE_TABLE_HEADER = "| input `x` | computed in | `y` and `dx` |"
# The words of the table, as dtypes.
TABLE_DTYPES = {
    "float16": [np.float16], "float32": [np.float32], "float64": [np.float64],
    "integers": [np.int8, np.uint8, np.int32, np.int64, np.uint64], "bool": [np.bool_],
    "bfloat16": [],
}
try:  # ml_dtypes is a test dependency; without it the bfloat16 row is read but not run
    import ml_dtypes
    TABLE_DTYPES["bfloat16"] = [ml_dtypes.bfloat16]
except ImportError:
    pass


def _readme_dtype_table():
    with open(README, encoding="utf-8") as f:
        lines = f.read().splitlines()
    start = lines.index(DTYPE_TABLE_HEADER) + 2  # past the header and its rule
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        inputs, computed, output = (cell.strip() for cell in line.strip("|").split("|"))
        rows.append(([t for word in inputs.split(", ") for t in TABLE_DTYPES[word]],
                     computed, output))
    return rows


def test_readme_dtype_table_is_what_bnfast_does(rng):
    """Every row of the README's dtype table, for the forward, the inference and the backward:
    y and dx of the dtype the table says, with the bits of the same call on the input cast to
    the dtype it says they are computed in; statistics, dgamma and dbeta float64."""
    rows = _readme_dtype_table()
    assert len(rows) >= 3, rows
    for dtypes, computed, output in rows:
        for dtype in dtypes:
            x = (rng.random((40, 3)) < 0.4 if dtype is np.bool_
                 else rng.integers(0, 100, (40, 3)) if np.dtype(dtype).kind in "iu"
                 else rng.standard_normal((40, 3)) * 3 + 5).astype(dtype)
            dy = rng.standard_normal(x.shape).astype(x.dtype if x.dtype.kind in "fV" else "f8")
            y, mean, invstd = bnfast.batch_norm_forward(x)
            yi = bnfast.batch_norm_inference(x, mean, 1 / invstd**2)
            dx, dgamma, dbeta = bnfast.batch_norm_backward(dy, x, mean, invstd)
            want = x.dtype if output.startswith("the input's dtype") else np.dtype(output)
            assert y.dtype == yi.dtype == dx.dtype == want, (dtype, y.dtype, dx.dtype)
            assert {a.dtype for a in (mean, invstd, dgamma, dbeta, *bnfast.moments(x))} \
                == {np.dtype(np.float64)}, dtype
            if computed != "its own dtype":
                w = np.dtype(computed)
                assert np.array_equal(y, bnfast.batch_norm_forward(x.astype(w))[0].astype(want))
                assert np.array_equal(dx, bnfast.batch_norm_backward(
                    dy.astype(w), x.astype(w), mean, invstd)[0].astype(want))
