"""The benchmark package runs and its NumPy twin computes batch norm (no timing asserts)."""
import json
import os
import re
import sys
import time

import numpy as np
import pytest

import bnfast
from _helpers import run_python
from bnfast import bench
from bnfast import reference as ref
from bnfast.bench import busy, cases, cli, fused, half, load, report, scaler, spinners
from bnfast.bench import targets, timing

F64_EPS = np.finfo(np.float64).eps


def test_rows_run_and_agree_with_numpy():
    grid = [(bench.Case((64, 8), "NC", "float32"), op) for op in bench.OPS]
    grid += [(bench.Case((2, 4, 3, 5), "NHWC", "float64"), op) for op in bench.OPS]
    rows = bench.run_rows(grid, threads=1, repeats=1, min_time=0)
    assert len(rows) == len(grid)
    assert all(row["agrees_with_numpy"] for row in rows), rows
    for row in rows:
        assert row["floor_s"] == pytest.approx(bench.PASSES[row["op"]] * row["copy_s"])
        assert row["bnfast_over_floor"] == pytest.approx(row["bnfast_s"] / row["floor_s"])
    table = bench.format_table(rows)
    assert "| train" in table and "| backward" in table
    assert "targets" not in table and "miss" not in table and "PASS" not in table
    assert "| targets" in bench.format_table(rows, targets=True)


def test_grids_hold_the_documented_rows():
    assert len(cases.full_grid()) == 33
    assert len(cases.quick_grid()) == 12
    assert len(cases.short_grid()) == 4
    assert cases.Case((2, 3, 4, 5), "NHWC", "float32").stored_shape == (2, 4, 5, 3)


def test_make_inputs_is_reproducible_and_its_statistics_are_the_batch_statistics():
    case = cases.Case((6, 3, 4, 5), "NHWC", "float64")
    a, b = cases.make_inputs(case, seed=3), cases.make_inputs(case, seed=3)
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.dy, b.dy)
    assert a.x.shape == case.stored_shape and a.gamma.shape == (3,)
    mean, var = ref.moments(a.x, axis=-1)
    # NumPy's float64 mean/var against the reference's two-pass ones over m = 120 values:
    # each is within m * eps of the exact value relative to the data's magnitude
    # (max |x| <= 12 here), so 2 * m * eps * max|x| bounds their difference.
    tol = 2 * 120 * F64_EPS * np.max(np.abs(a.x))
    np.testing.assert_allclose(a.mean, mean, rtol=0, atol=tol)
    np.testing.assert_allclose(1 / a.invstd**2 - cases.EPS, var, rtol=0, atol=8 * tol)
    c = cases.make_inputs(case, seed=3, moments=bnfast.moments)
    np.testing.assert_allclose(c.mean, a.mean, rtol=0, atol=tol)


def _twin_tolerance(x, m):
    # Twin and reference both compute in float64 from the same data: each mean or variance
    # of m values is within about m * eps (relative, naive-summation bound) of the exact one,
    # and x - mean loses up to max|x| / std more; a factor 16 covers the handful of further
    # operations (scale, shift, the backward's two sums), each within an eps.
    spread = np.max(np.abs(x)) / np.min(np.std(x.reshape(-1, x.shape[-1]), axis=0))
    return 16 * m * F64_EPS * max(1.0, spread)


@pytest.mark.parametrize("shape, axis", [((50, 6), 1), ((3, 4, 5, 6), 1), ((3, 5, 6, 4), -1)])
def test_numpy_twin_matches_reference(rng, shape, axis):
    x = rng.standard_normal(shape) * 2 + 3
    dy = rng.standard_normal(shape)
    C = shape[axis]
    m = x.size // C
    gamma, beta = rng.uniform(0.5, 2, C), rng.standard_normal(C)
    rm, rv = np.zeros(C), np.ones(C)
    y, mean, invstd = bench.numpy_batch_norm_forward(x, gamma, beta, rm, rv, axis=axis)
    ry, rmean, rinv, rrm, rrv = ref.batch_norm_forward(x, gamma, beta, axis=axis,
                                                       running_mean=np.zeros(C),
                                                       running_var=np.ones(C))
    tol = _twin_tolerance(np.moveaxis(x, axis, -1), m)
    # y, dx and the running statistics are O(10) at most here: tolerances scale with that.
    np.testing.assert_allclose(y, ry, rtol=0, atol=tol * np.max(np.abs(ry)))
    np.testing.assert_allclose(mean, rmean, rtol=0, atol=tol * np.max(np.abs(rmean)))
    np.testing.assert_allclose(invstd, rinv, rtol=0, atol=tol * np.max(rinv))
    np.testing.assert_allclose(rm, rrm, rtol=0, atol=tol * np.max(np.abs(rrm)))
    np.testing.assert_allclose(rv, rrv, rtol=0, atol=tol * np.max(rrv))
    yi = bench.numpy_batch_norm_inference(x, rrm, rrv, gamma, beta, axis=axis)
    ryi = ref.batch_norm_inference(x, rrm, rrv, gamma, beta, axis=axis)
    np.testing.assert_allclose(yi, ryi, rtol=0, atol=tol * np.max(np.abs(ryi)))
    dx, dgamma, dbeta = bench.numpy_batch_norm_backward(dy, x, rmean, rinv, gamma, axis=axis)
    rdx, rdg, rdb = ref.batch_norm_backward(dy, x, rmean, rinv, gamma, axis=axis)
    # dgamma and dbeta are sums of m terms of size max|dy * xhat|: their error scales with m
    # times that, not with the (possibly cancelled) sum itself.
    term = np.max(np.abs(dy)) * np.max(np.abs((x - x.mean()) * rinv.max()))
    np.testing.assert_allclose(dx, rdx, rtol=0, atol=tol * np.max(np.abs(rdx)))
    np.testing.assert_allclose(dgamma, rdg, rtol=0, atol=tol * term)
    np.testing.assert_allclose(dbeta, rdb, rtol=0, atol=tol * np.max(np.abs(dy)))


def test_targets_name_what_a_row_misses():
    row = {"agrees_with_numpy": True, "nbytes": 1 << 24, "bnfast_over_floor": 1.1,
           "bnfast_over_torch": 0.9, "layout": "NC", "op": "train", "shape": [4096, 1024],
           "dtype": "float32", "bnfast_s": 1e-3, "numpy_over_bnfast": 1.0}
    assert targets.missed_targets(row) == []  # np/bn of 1.0 is no miss: target withdrawn
    row.update(bnfast_over_floor=1.3, bnfast_over_torch=1.1)
    assert targets.missed_targets(row) == ["floor", "torch"]
    row.update(layout="NCHW", bnfast_over_torch=0.6, bnfast_over_floor=1.0)
    assert targets.missed_targets(row) == ["torch"]  # 0.5x on NCHW training forward
    small = dict(row, shape=[256, 64], layout="NC", nbytes=65536, bnfast_over_torch=0.5,
                 bnfast_s=11e-6)
    assert targets.missed_targets(small) == ["10us"]


def test_format_time_and_missing_torch():
    assert report.format_time(12.34e-6) == "12.3 us"
    assert report.format_time(4.567e-3) == "4.57 ms"
    assert report.format_time(None) == "n/a"
    assert "not installed" in report.table_notes(2, None)


def test_scaler_child_times_one_scaler():
    pytest.importorskip("sklearn")
    for only in ("bnfast", "sklearn"):
        result = scaler.child(threads=1, only=only, shape=(64, 5))
        assert result[f"{only}_s"] > 0 and result[f"{only}_warm_s"] > 0
        assert result[f"{only}_faults"] >= 0
    with pytest.raises(ValueError, match="only"):
        scaler.child(threads=1, only="torch", shape=(64, 5))


def test_scaler_fresh_processes_summarize_the_distribution():
    pytest.importorskip("sklearn")
    summary = scaler.fresh_processes(1, threads=1, shape=(64, 5))
    assert summary["n_processes"] == len(summary["pairs"]) == 1
    r = summary["pairs"][0]
    assert summary["speedup"]["median"] == pytest.approx(r["sklearn_s"] / r["bnfast_s"])
    for key in ("bnfast_s", "sklearn_s", "speedup"):
        d = summary[key]
        assert d["min"] <= d["median"] <= d["max"]
    text = report.format_scaler(summary)
    assert "1 processes each" in text and "StandardScaler" in text and "median" in text
    assert "n/a" in report.format_scaler(None, "scikit-learn not installed")


def test_bench_run_writes_json_and_prints_no_verdict(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "quick_grid",
                        lambda: [(cases.Case((32, 4), "NC", "float64"), op) for op in cases.OPS])
    monkeypatch.setattr(cli, "fused_cases",
                        lambda quick: [cases.Case((16, 4, 3, 5), "NHWC", "float32")])
    monkeypatch.setattr(cli, "half_cases",
                        lambda quick: [cases.Case((16, 4, 3, 5), "NCHW", "float32")])
    path = tmp_path / "bench.json"
    args = cli.build_parser().parse_args(["--quick", "--threads", "1", "--repeats", "1",
                                          "--json", str(path)])
    assert cli.run(args) == 0
    out = capsys.readouterr().out
    assert "| train" in out and "bn/floor" in out
    assert "miss" not in out and "PASS" not in out and "rows meet" not in out
    assert "fused activation" in out and "relu/p" in out and "PASS" not in out
    document = json.loads(path.read_text())
    assert len(document["rows"]) == 3 and document["settings"]["quick"] is True
    assert len(document["fused"]) == 1
    assert document["fused"][0]["relu_over_plain"] > 0
    assert "half precision" in out and "f16/f32" in out
    assert len(document["half"]["rows"]) == 3
    assert document["half"]["rows"][0]["float16_over_float32"] > 0
    assert set(document["load"]) == {"load_average", "cpus", "runnable_others", "steal"}
    args = cli.build_parser().parse_args(["--quick", "--threads", "1", "--repeats", "1",
                                          "--targets"])
    assert cli.run(args) == 0
    out = capsys.readouterr().out
    assert "rows meet every target" in out and "| targets" in out
    assert "fused relu 0/1" in out or "fused relu 1/1" in out
    assert "relu/p <= 1.05" in out
    assert re.search(r"; half precision [0-3]/3", out)
    assert "bf16/f32 <= 0.6" in out
    assert ">= 10" not in out  # the NumPy target is withdrawn


def test_fused_section_times_every_variant_and_its_ratio_to_plain():
    grid = [cases.Case((64, 8), "NC", "float32"), cases.Case((2, 4, 3, 5), "NCHW", "float32"),
            cases.Case((2, 4, 3, 5), "NHWC", "float32")]
    rows = fused.run_fused(grid, threads=1, repeats=1, min_time=0, warmup=False)
    assert len(rows) == 3
    for row in rows:
        assert row["agrees"] is True
        assert set(row["times"]) == set(fused.VARIANTS)
        plain = row["plain_s"]
        assert np.isfinite(plain) and plain > 0
        for v in fused.VARIANTS[1:]:
            ratio = row[fused.key(v) + "_over_plain"]
            assert np.isfinite(ratio) and ratio == pytest.approx(row[fused.key(v) + "_s"] / plain)
        # The verdict is the ratio's, whatever the (noisy) timing gave.
        assert ("relu" in row["missed"]) == (row["relu_over_plain"] > fused.FUSED_RELU_TARGET)
    json.dumps(rows)  # the rows go into --json as they are
    table = fused.format_fused(rows)
    assert "relu/p" in table and "bn;+r;max/p" in table and "PASS" not in table
    assert "| targets" in fused.format_fused(rows, targets=True)


def test_fused_check_catches_a_wrong_fused_call(monkeypatch):
    problem = fused.FusedProblem(cases.Case((64, 8), "NC", "float32"), threads=1)
    assert problem.fused_agrees()
    calls = problem.calls()
    # A "fused" ReLU that forgets the ReLU: its output has negative values, the
    # unfused sequence's has none, and the check must say so.
    monkeypatch.setattr(problem, "calls", lambda: dict(calls, relu=calls["plain"]))
    assert not problem.fused_agrees()


def test_fused_cases_are_float32_and_quick_ones_are_smaller():
    full, quick = fused.fused_cases(), fused.fused_cases(quick=True)
    assert [c.layout for c in full] == ["NC", "NCHW", "NHWC"]
    assert 1 <= len(quick) <= 2
    assert all(c.dtype == "float32" for c in full + quick)
    assert max(c.nbytes for c in quick) < min(c.nbytes for c in full)


# -- the busy machine: spinners, the load note, per-call timing, the busy table -----------

def _alive(pid):
    """Whether process ``pid`` still runs (a zombie, exited but not yet reaped, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _wait_gone(pid, timeout=30.0):
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not _alive(pid)


linux_only = pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads /proc")


@linux_only
def test_spinners_run_until_stopped_also_on_ctrl_c():
    with spinners.Spinners(2) as s:
        pids = [p.pid for p in s.processes]
        assert len(pids) == 2 and s.running() == 2
        assert all(_alive(pid) for pid in pids)
    assert s.processes == [] and not any(_alive(pid) for pid in pids)
    with pytest.raises(KeyboardInterrupt):
        with spinners.Spinners(1) as s:
            pid = s.processes[0].pid
            raise KeyboardInterrupt
    assert not _alive(pid)
    with spinners.Spinners(0) as s:
        assert s.running() == 0
    with pytest.raises(ValueError, match="k:"):
        spinners.Spinners(-1)


@linux_only
def test_spinners_stop_by_themselves_at_their_deadline_and_when_the_parent_dies():
    s = spinners.Spinners(1, lifetime=0.2).start()
    try:
        assert s.processes[0].wait(timeout=30) == 0  # exited by itself, not killed
    finally:
        s.stop()
    # A parent that dies without stopping its spinner (os._exit skips every cleanup).
    done = run_python("import os\nfrom bnfast.bench.spinners import Spinners\n"
                      "s = Spinners(1, lifetime=60).start()\n"
                      "print(s.processes[0].pid, flush=True)\nos._exit(0)\n")
    assert done.returncode == 0, done.stderr
    assert _wait_gone(int(done.stdout.split()[0]))


def test_busy_note_words_with_injected_loads():
    # Idle: nothing to say.
    assert load.busy_note(0.1, 2) == ""
    assert load.busy_note(None, 2) == ""
    assert load.level(0.49, 2) == "idle"
    # Not idle: from a quarter of a CPU's load per CPU.
    note = load.busy_note(0.6, 2, threads=2)
    assert note.startswith("This machine is not idle: load 0.6 on 2 CPUs.")
    assert "slower and noisier" in note and "bnfast's 2 threads" in note
    assert "\n" not in note
    # Busy: the case, load 6.8 on 2 CPUs.
    note = load.busy_note(6.8, 2, hint="Try this.")
    lines = note.splitlines()
    assert lines[0].startswith("This machine is busy: load 6.8 on 2 CPUs.")
    assert "slower and noisier than on an idle machine" in lines[0]
    assert "bnfast's default threads" in lines[1] and "single-threaded NumPy" in lines[1]
    assert lines[2] == "Try this."
    # One thread: nothing said about threads.
    assert "several threads" not in load.busy_note(6.8, 2, threads=1)
    # Load exactly at the CPU count is not over it; just over is.
    assert load.level(2.0, 2) == "not idle" and load.level(2.01, 2) == "busy"
    assert load.level(1.0, 1) == "not idle" and load.level(1.5, 1) == "busy"
    # Runnable tasks measured now count like the load average; the larger one is said.
    assert load.level(0.1, 2, runnable_others=3.0) == "busy"
    assert "3.0 other tasks ready to run" in load.busy_note(0.1, 2, runnable_others=3.0)
    assert "other tasks" not in load.busy_note(6.8, 2, runnable_others=3.0)
    # A hypervisor taking CPU time (steal) makes a quiet-looking VM busy.
    assert load.level(0.0, 2, steal=0.02) == "not idle"
    assert load.level(0.0, 2, steal=0.15) == "busy"
    assert "host took 15% of its CPU time" in load.busy_note(0.0, 2, steal=0.15)
    assert load.busy_note(0.0, 1, steal=0.15).startswith("This machine is busy: ")


def test_load_sample_reports_what_it_measured():
    measured = load.sample(duration=0.01, reads=2)
    assert set(measured) == {"load_average", "cpus", "runnable_others", "steal"}
    assert measured["cpus"] >= 1
    if measured["runnable_others"] is not None:
        assert measured["runnable_others"] >= 0
    if measured["steal"] is not None:
        assert 0 <= measured["steal"] <= 1
    assert isinstance(load.note_for(measured), str)


def test_quantile_matches_numpy_and_measure_calls_times_every_call(rng):
    samples = list(rng.standard_normal(37))
    for q in (0, 0.25, 0.5, 0.9, 1):
        # Linear interpolation between order statistics, like NumPy: equal up to the
        # rounding of one interpolation (a few ulps of the samples' magnitude).
        assert timing.quantile(samples, q) == pytest.approx(np.percentile(samples, 100 * q),
                                                            rel=0, abs=1e-14)
    with pytest.raises(ValueError):
        timing.quantile([], 0.5)
    counter = {"a": 0, "b": 0}

    def count(name):
        def call():
            counter[name] += 1
        return call

    times = timing.measure_calls({"a": count("a"), "b": count("b")}, rounds=4, min_time=0)
    for name, t in times.items():
        assert t["calls"] == 4
        assert counter[name] == 1 + 4  # a warm-up call, then one per round
        assert t["min"] <= t["p25"] <= t["median"] <= t["p75"] <= t["p90"] <= t["max"]
    # A turn lasts min_time, and never more than MAX_BATCH calls.
    times = timing.measure_calls({"a": count("a")}, rounds=2, min_time=10.0)
    assert times["a"]["calls"] == 2 * timing.MAX_BATCH


def test_busy_levels_and_grid():
    assert busy.spinner_levels([0, 2, 4], None) == [0, 2, 4]
    assert busy.spinner_levels(None, [1, 2], cpus=2) == [2, 4]
    assert busy.spinner_levels(None, [1], cpus=3) == [3]
    full, quick = busy.busy_grid(), busy.busy_grid(quick=True)
    assert len(full) == 18 and len(quick) == 9
    sizes = [case.nbytes / 2**20 for case, _ in full]
    assert min(sizes) == 0.25 and max(sizes) == 50
    assert {case.layout for case, _ in full} == {"NC", "NCHW"}


def test_busy_targets_name_what_a_row_misses():
    row = {"default_over_one": 1.4, "default_p90_over_median": 2.9, "default_over_torch": 0.9}
    assert targets.missed_busy_targets(row) == []
    row.update(default_over_one=1.6, default_p90_over_median=3.1, default_over_torch=1.1)
    assert targets.missed_busy_targets(row) == ["1thread", "p90", "torch"]
    row.update(default_over_torch=None)  # no PyTorch: no verdict against it
    assert targets.missed_busy_targets(row) == ["1thread", "p90"]


def _tiny_busy_grid(quick=False):
    return [(cases.Case((64, 8), "NC", "float64"), op) for op in cases.OPS] + [
        (cases.Case((2, 4, 3, 5), "NCHW", "float32"), "train")]


def test_run_busy_times_each_contender_beside_spinners():
    result = busy.run_busy([0, 1], _tiny_busy_grid(), rounds=2, min_time=0)
    rows = result["rows"]
    assert [row["spinners"] for row in rows] == [0] * 4 + [1] * 4
    assert [lv["spinners"] for lv in result["levels"]] == [0, 1]
    assert result["levels"][1]["spinners_running_at_end"] == 1
    for row in rows:
        assert row["default_over_one"] == pytest.approx(row["default_s"] / row["one_s"])
        assert row["default_p90_over_median"] == pytest.approx(
            row["default_p90_s"] / row["default_s"])
        if row["torch_s"] is None:
            assert row["default_over_torch"] is None
        else:
            assert row["default_over_torch"] == pytest.approx(row["default_s"] / row["torch_s"])
        assert row["missed"] == targets.missed_busy_targets(row)
    json.dumps(result)  # it goes into --json as it is
    table = busy.format_busy(result)
    assert "| k | op" in table and "def/1t" in table and "p90/def" in table
    assert "PASS" not in table and "miss" not in table
    verdicts = busy.format_busy(result, targets=True)
    assert "| targets" in verdicts and "def/1t <= 1.5" in verdicts
    assert "rows meeting every busy target: k=0: " in verdicts


def test_busy_users_calls_update_running_statistics_and_match_the_reference():
    problem = bench.Problem(cases.Case((64, 8), "NC", "float64"), threads=1)
    calls = busy.user_calls(problem, "train", torch=None)
    assert set(calls) == {"default", "1 thread"}
    rm, rv = problem.running["bnfast"]
    rm0 = rm.copy()
    y, _, _ = calls["1 thread"]()
    assert y is not problem.out["bnfast"]  # no out=: a fresh result, as users call it
    ry, _, _, rrm, _ = ref.batch_norm_forward(problem.x, problem.gamma, problem.beta, axis=1,
                                              running_mean=rm0, running_var=rv.copy(),
                                              momentum=cases.MOMENTUM, eps=cases.EPS)
    # float64 against the float64 reference over m = 64 values: a few eps of the scale
    # times m (naive summation bound), far below any real mistake.
    tol = 64 * 16 * F64_EPS
    np.testing.assert_allclose(y, ry, rtol=0, atol=tol * np.max(np.abs(ry)))
    np.testing.assert_allclose(rm, rrm, rtol=0, atol=tol * np.max(np.abs(rrm)))


def test_busy_spinners_are_stopped_when_the_bench_fails(monkeypatch):
    started = []
    real = spinners.Spinners

    class Recorded(real):
        def start(self):
            started.append(self)
            return super().start()

    def fail(*args, **kwargs):
        raise RuntimeError("failed in the middle")

    monkeypatch.setattr(busy, "Spinners", Recorded)
    monkeypatch.setattr(busy, "measure_calls", fail)
    with pytest.raises(RuntimeError, match="middle"):
        busy.run_busy([1], _tiny_busy_grid(), rounds=1, min_time=0)
    assert len(started) == 1 and started[0].processes == []


def test_bench_busy_prints_only_the_busy_table(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(busy, "busy_grid", _tiny_busy_grid)
    monkeypatch.setattr(load, "sample", lambda *a, **k: {
        "load_average": 0.0, "cpus": 2, "runnable_others": 0.0, "steal": 0.0})
    path = tmp_path / "busy.json"
    args = cli.build_parser().parse_args(["--busy", "0", "--repeats", "1", "--json",
                                          str(path)])
    assert cli.run(args) == 0
    out = capsys.readouterr().out
    assert out.startswith("busy machine:")  # idle: no note above the table
    assert "| k | op" in out and "bn/floor" not in out and "half precision" not in out
    assert "PASS" not in out
    document = json.loads(path.read_text())
    assert document["settings"]["busy"] == [0] and len(document["busy"]["rows"]) == 4
    args = cli.build_parser().parse_args(["--busy-per-core", "0", "--repeats", "1",
                                          "--targets"])
    assert cli.run(args) == 0
    assert "rows meeting every busy target: k=0: " in capsys.readouterr().out
    with pytest.raises(SystemExit, match="--threads does not apply"):
        cli.run(cli.build_parser().parse_args(["--busy", "0", "--threads", "2"]))


def test_bench_and_short_table_say_when_the_machine_is_busy(monkeypatch, capsys):
    monkeypatch.setattr(load, "sample", lambda *a, **k: {
        "load_average": 6.8, "cpus": 2, "runnable_others": 5.0, "steal": 0.0})
    monkeypatch.setattr(cli, "short_grid",
                        lambda: [(cases.Case((32, 4), "NC", "float32"), "train")])
    cli.short_table(threads=2)
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith("This machine is busy: load 6.8 on 2 CPUs.")
    assert "bnfast's 2 threads" in lines[1] and lines[2] == cli.MAIN_HINT
    assert lines[4].startswith("| op")  # the note is the table's header
    monkeypatch.setattr(cli, "quick_grid",
                        lambda: [(cases.Case((32, 4), "NC", "float32"), "train")])
    monkeypatch.setattr(cli, "fused_cases", lambda quick: [])
    monkeypatch.setattr(cli, "half_cases", lambda quick: [])
    args = cli.build_parser().parse_args(["--quick", "--threads", "1", "--repeats", "1"])
    assert cli.run(args) == 0
    out, err = capsys.readouterr()
    assert out.startswith("This machine is busy: load 6.8 on 2 CPUs.")
    assert "several threads" not in out and cli.BENCH_HINT in out
    assert "warning" not in err


# -- half precision ----------------------------------------------------------------------

def test_half_support_is_found_by_trying_a_call():
    assert half.unsupported("float16") is None
    try:
        import ml_dtypes
    except ImportError:
        assert "ml_dtypes is not installed" in half.unsupported("bfloat16")
        return
    x = np.ones((4, 2), dtype=ml_dtypes.bfloat16)
    one = np.ones(2, np.float32)
    try:
        y = bnfast.batch_norm_forward(x, one, one, axis=1)[0]
    except TypeError as e:
        assert half.unsupported("bfloat16") == (
            f"this bnfast rejects bfloat16 arrays (TypeError: {e})")
    else:
        assert (half.unsupported("bfloat16") is None) == (y.dtype == x.dtype)


def test_importing_bnfast_and_its_bench_needs_no_ml_dtypes():
    done = run_python("import sys\nsys.modules['ml_dtypes'] = None\n"
                      "import bnfast, bnfast.bench, bnfast.bench.cli, bnfast.bench.half\n"
                      "print(bnfast.bench.half.unsupported('bfloat16'))\n")
    assert done.returncode == 0, done.stderr
    assert "ml_dtypes is not installed" in done.stdout


def test_half_rows_skip_bfloat16_without_ml_dtypes(monkeypatch):
    monkeypatch.setitem(sys.modules, "ml_dtypes", None)  # import ml_dtypes: ImportError
    assert half.unsupported("bfloat16") == "ml_dtypes is not installed (pip install ml_dtypes)"
    result = half.run_half([cases.Case((64, 8), "NC", "float32")], threads=1, repeats=1,
                           min_time=0, warmup=False)
    assert set(result["skipped"]) == {"bfloat16"}
    assert all(row["bfloat16_s"] is None for row in result["rows"])
    text = half.format_half(result)
    assert "bfloat16: skipped: ml_dtypes is not installed" in text


def test_half_rows_time_each_op_against_float32():
    grid = [cases.Case((64, 8), "NC", "float32"), cases.Case((2, 4, 3, 5), "NCHW", "float32"),
            cases.Case((2, 4, 3, 5), "NHWC", "float32")]
    result = half.run_half(grid, threads=1, repeats=1, min_time=0, warmup=False)
    rows = result["rows"]
    assert [(row["layout"], row["op"]) for row in rows] == [
        (case.layout, op) for case in grid for op in cases.OPS]
    for row in rows:
        assert row["agrees"] is True
        for d in cases.HALF_DTYPES:
            if d in result["skipped"]:
                assert row[d + "_s"] is None and row[d + "_over_float32"] is None
                continue
            assert row[d + "_over_float32"] == pytest.approx(row[d + "_s"] / row["float32_s"])
            assert (d in row["missed"]) == (row[d + "_over_float32"] > targets.HALF_TARGET)
    json.dumps(result)
    table = half.format_half(result)
    assert "f16/f32" in table and "bf16/f32" in table and "PASS" not in table
    assert "| targets" in half.format_half(result, targets=True)
    # Every case of the section is 1 MiB or more in half precision (the target's arrays).
    for quick in (False, True):
        assert all(case.nbytes // 2 >= 2**20 for case in half.half_cases(quick))


def test_bench_half_prints_only_the_half_table(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(cli, "half_cases",
                        lambda quick: [cases.Case((16, 4, 3, 5), "NHWC", "float32")])
    path = tmp_path / "half.json"
    args = cli.build_parser().parse_args(["--half", "--threads", "1", "--repeats", "1",
                                          "--targets", "--json", str(path)])
    assert cli.run(args) == 0
    out = capsys.readouterr().out
    assert "half precision" in out and "bn/floor" not in out and "fused" not in out
    assert "bf16/f32 <= 0.6" in out
    document = json.loads(path.read_text())
    assert document["settings"]["half"] is True and len(document["half"]["rows"]) == 3


def test_half_check_catches_a_wrong_half_result():
    problems = {d: bench.Problem(cases.Case((64, 8), "NC", d), threads=1)
                for d in ("float32", "float16")}
    assert half.agrees_with_float32(problems, "train")
    problems["float16"].beta += 1  # a shifted output, as a kernel mistake would give
    assert not half.agrees_with_float32(problems, "train")


def test_make_inputs_draws_the_same_values_in_half_precision():
    a = cases.make_inputs(cases.Case((6, 3, 4, 5), "NCHW", "float32"), seed=5)
    h = cases.make_inputs(cases.Case((6, 3, 4, 5), "NCHW", "float16"), seed=5)
    assert h.x.dtype == np.float16 and h.dy.dtype == np.float16
    assert h.gamma.dtype == h.running_var.dtype == np.float32  # as in PyTorch
    np.testing.assert_array_equal(h.x, a.x.astype(np.float16))
    np.testing.assert_array_equal(h.gamma, a.gamma)
    assert cases.Case((4, 8), "NC", "bfloat16").nbytes == 64
