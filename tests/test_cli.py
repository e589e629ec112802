"""``python -m bnfast``: run as a user runs it, in a fresh process from another folder.

Nothing here asserts a timing: the bench's figures are printed, never checked.
"""
import math
import os
import subprocess
import sys


import bnfast

# The folder that holds the bnfast package being tested (installed or a checkout).
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(bnfast.__file__)))


def _run(args, cwd, code=None, timeout=600):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_ROOT, env.get("PYTHONPATH")) if p)
    cmd = [sys.executable] + (["-c", code] if code else ["-m", "bnfast"]) + list(args)
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


def test_version(tmp_path):
    done = _run(["--version"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"bnfast {bnfast.__version__}\n"


def test_help_is_plain_text_listing_the_commands(tmp_path):
    done = _run(["--help"], tmp_path)
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert text.startswith("usage: python -m bnfast")
    for word in ("check", "bench", "--version", "reference",
                 "speed table"):
        assert word in text, word
    for rest in ("``", "::", ":func:", ".. "):
        assert rest not in text, rest


def test_bench_help_lists_its_options(tmp_path):
    done = _run(["bench", "--help"], tmp_path)
    assert done.returncode == 0, done.stderr
    for option in ("--quick", "--threads", "--json", "--targets", "--scaler-processes",
                   "--busy", "--busy-per-core"):
        assert option in done.stdout, option
    assert "``" not in done.stdout


def test_unknown_command_is_an_error(tmp_path):
    done = _run(["frobnicate"], tmp_path)
    assert done.returncode == 2
    assert "invalid choice" in done.stderr


def test_check_passes(tmp_path):
    done = _run(["check"], tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "self-check passed" in done.stdout
    assert "FAIL" not in done.stdout


def test_bench_quick_prints_the_table(tmp_path):
    done = _run(["bench", "--quick", "--threads", "1", "--repeats", "1"], tmp_path)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    header = next(line for line in out.splitlines() if line.startswith("| op"))
    columns = [c.strip() for c in header.strip("|").split("|")]
    assert columns == ["op", "layout", "shape", "dtype", "MiB", "bnfast", "NumPy", "torch",
                       "floor", "bn/floor", "bn/torch", "np/bn"]
    lines = out.splitlines()
    # The main table, the fused activation table (header and 2 quick cases), then the half
    # precision table (header and 3 quick cases of 3 ops).
    assert sum(line.startswith("| ") for line in lines) == (1 + 12) + (1 + 2) + (1 + 9)
    half_title = next(line for line in lines if line.startswith("half precision"))
    half_header = [c.strip() for c in lines[lines.index(half_title) + 1].strip("|").split("|")]
    assert half_header == ["op", "layout", "shape", "MiB f16", "float32", "float16",
                           "bfloat16", "f16/f32", "bf16/f32"]
    title = lines.index(next(line for line in lines if line.startswith("fused activation")))
    fused_header = [c.strip() for c in lines[title + 1].strip("|").split("|")]
    assert fused_header == ["layout", "shape", "MiB", "plain", "relu", "res+relu", "bn;max",
                            "bn;+r;max", "relu/p", "res+relu/p", "bn;max/p", "bn;+r;max/p"]
    for line in lines[title + 3:title + 5]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[0] in ("NCHW", "NHWC")
        ratios = [float(c) for c in cells[-4:]]
        assert all(math.isfinite(r) and r > 0 for r in ratios), line
    assert "miss" not in out and "rows meet every target" not in out
    assert "scaler fit_transform: n/a" in out


def test_bench_busy_prints_the_busy_table(tmp_path):
    done = _run(["bench", "--busy", "0", "--quick", "--repeats", "1"], tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    header = next(line for line in lines if line.startswith("| k "))
    columns = [c.strip() for c in header.strip("|").split("|")]
    assert columns == ["k", "op", "layout", "shape", "dtype", "MiB", "default", "def p90",
                       "1 thread", "1t p90", "torch", "torch p90", "def/1t", "p90/def",
                       "def/torch"]
    rows = [line for line in lines if line.startswith("| 0 ")]
    assert len(rows) == 9  # the quick busy grid, one level
    for line in rows:
        ratios = [c.strip() for c in line.strip("|").split("|")][-3:]
        assert all(r == "n/a" or float(r) > 0 for r in ratios), line
    assert "bn/floor" not in done.stdout and "PASS" not in done.stdout


def test_bench_busy_options_are_checked(tmp_path):
    done = _run(["bench", "--busy", "1", "--busy-per-core", "1"], tmp_path)
    assert done.returncode == 2 and "not allowed with" in done.stderr
    done = _run(["bench", "--busy", "-1"], tmp_path)
    assert done.returncode == 2 and "expected an integer >= 0" in done.stderr
    done = _run(["bench", "--busy", "0", "--threads", "1"], tmp_path)
    assert done.returncode != 0 and "--threads does not apply" in done.stderr


# Importing a module set to None in sys.modules raises ImportError: torch and scikit-learn
# look uninstalled.
_WITHOUT_TORCH_SKLEARN = (
    "import sys; sys.modules['torch'] = None; sys.modules['sklearn'] = None\n"
    "from bnfast.__main__ import main; sys.exit(main(sys.argv[1:]))\n")


def test_main_job_without_torch_or_sklearn(tmp_path):
    done = _run([], tmp_path, code=_WITHOUT_TORCH_SKLEARN)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "self-check passed" in out
    assert "torch: not installed" in out
    table = [line for line in out.splitlines() if line.startswith("| ")]
    assert len(table) == 1 + 4
    assert all(" n/a " in line for line in table[1:])  # the torch columns
