"""The benchmark package runs and its NumPy twin computes batch norm (no timing asserts)."""
import json

import numpy as np
import pytest

import bnfast
from bnfast import bench
from bnfast import reference as ref
from bnfast.bench import cases, cli, fused, report, scaler, targets

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
    args = cli.build_parser().parse_args(["--quick", "--threads", "1", "--repeats", "1",
                                          "--targets"])
    assert cli.run(args) == 0
    out = capsys.readouterr().out
    assert "rows meet every target" in out and "| targets" in out
    assert "fused relu 0/1" in out or "fused relu 1/1" in out
    assert "relu/p <= 1.05" in out
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
