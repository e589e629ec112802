"""bnfast.moments_state / merge_moments: mergeable Welford states (docs/design.md §7).

Pieces of the data, cut at random, give states whose merge equals the statistics of the
whole (float64 NumPy reference), in any order up to rounding; NaN skipping and sample
weights merge the same way.
"""
import itertools

import numpy as np
import pytest

import bnfast
from _helpers import gamma_n, stat_rtol, sum_tol

F64 = np.float64


def _reference(x, axis, w=None, skipna=False):
    """float64 NumPy (count, mean, biased var) per channel; x as (samples, C) after moving."""
    x = np.asarray(x, F64)
    x2 = x.reshape(-1, 1) if x.ndim == 1 or axis is None else np.moveaxis(x, axis, -1).reshape(
        -1, x.shape[axis])
    if w is None:
        w2 = np.ones_like(x2)
    else:
        w2 = np.broadcast_to(np.asarray(w, F64)[:, None], x2.shape)
    keep = ~np.isnan(x2) if skipna else np.ones(x2.shape, bool)
    w2 = np.where(keep, w2, 0.0)
    xz = np.where(keep, x2, 0.0)
    count = w2.sum(axis=0)
    mean = (w2 * xz).sum(axis=0) / count
    var = (w2 * (xz - mean) ** 2).sum(axis=0) / count
    return count, mean, var


def _cuts(rng, n, pieces):
    """Sorted random cut points splitting range(n) into ``pieces`` (some possibly empty)."""
    return np.sort(rng.integers(0, n + 1, pieces - 1))


def _split(x, cuts, axis):
    return np.split(x, cuts, axis=axis)


def _assert_state(state, count, mean, var, x, weighted=False, pieces=1):
    """The merged (count, mean, M2) vs the reference's over x (n values per channel).

    count: exact for counts of values (integers below 2**53); with weights, both sides sum the
    same n weights (all >= 0, so sum |w| = count) in other orders: within sum_tol(n, count).
    mean and M2 / count: stat_rtol(n), plus 3 roundings per Chan merge of the pieces; atol
    from max |x| (mean) and from max (x - mean)^2 <= (max x - min x)^2 plus the
    gamma_{n+1} max|x|^2 that an error of the mean adds (variance)."""
    c, m, m2 = state
    for a in (c, m, m2):
        assert a.dtype == F64 and a.shape == mean.shape
    x = np.asarray(x, F64)
    n = x.size // mean.size
    if weighted:
        np.testing.assert_allclose(c, count, rtol=0, atol=sum_tol(n, count.max()))
    else:
        np.testing.assert_array_equal(c, count)
    rtol = stat_rtol(n + 3 * pieces)
    biggest = float(np.nanmax(np.abs(x)))
    var_scale = float(np.nanmax(x) - np.nanmin(x)) ** 2 + gamma_n(n + 1) * biggest ** 2
    np.testing.assert_allclose(m, mean, rtol=rtol, atol=rtol * biggest)
    np.testing.assert_allclose(m2 / c, var, rtol=rtol, atol=rtol * var_scale)


CASES = [  # (shape, channel axis, axis to cut along)
    ((400, 6), 1, 0),
    ((400, 6), -1, 0),
    ((12, 4, 7, 5), 1, 0),      # NCHW cut along the batch
    ((12, 4, 7, 5), 1, 2),      # NCHW cut along H
    ((6, 5, 7, 4), -1, 1),      # NHWC
    ((1000,), 0, 0),            # 1-D: one channel
    ((30, 8, 9), None, 1),      # axis=None: one channel
]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape,axis,cut_axis", CASES)
def test_merge_of_random_splits_matches_float64_reference(rng, shape, axis, cut_axis, dtype):
    x = (rng.standard_normal(shape) * 3.0 + 1e3).astype(dtype)
    count, mean, var = _reference(x, axis)
    for pieces in (1, 2, 5):
        parts = _split(x, _cuts(rng, shape[cut_axis], pieces), cut_axis)
        state = bnfast.merge_moments(bnfast.moments_state(p, axis) for p in parts)
        _assert_state(state, count, mean, var, x, pieces=pieces)
    whole = bnfast.moments_state(x, axis)
    _assert_state(whole, count, mean, var, x)
    # and the in-memory moments agree with the merged state (both within the bound of the
    # reference, so within twice of each other: _assert_state's bound, doubled)
    m, v = bnfast.moments(x, axis)
    _assert_state((state[0], m, v * state[0]), count, mean, var, x, pieces=5)


def test_merge_is_order_independent_up_to_rounding(rng):
    x = rng.standard_normal((300, 5)) * rng.uniform(0.1, 10, 5) + rng.uniform(-50, 50, 5)
    parts = _split(x, _cuts(rng, 300, 4), 0)
    states = [bnfast.moments_state(p) for p in parts]
    first = bnfast.merge_moments(states)
    # Only the 3 merges differ between orders: each computes mean = mean_a + delta * w (delta =
    # mean_b - mean_a, |delta| <= max|x| - min|x|) and M2 = M2_a + M2_b + delta^2 n_a n_b / n,
    # a few roundings each, so two orders differ by at most gamma_{12} times those terms.
    spread = float(x.max() - x.min())
    tol = 2 * gamma_n(3 * 4)
    for perm in itertools.permutations(states):
        merged = bnfast.merge_moments(perm)
        np.testing.assert_array_equal(merged[0], first[0])
        np.testing.assert_allclose(merged[1], first[1], rtol=tol, atol=tol * spread)
        np.testing.assert_allclose(merged[2], first[2], rtol=tol, atol=tol * 300 * spread ** 2)
    # a tree (pairs first) gives the same as left to right
    tree = bnfast.merge_moments([bnfast.merge_moments(states[:2]),
                                 bnfast.merge_moments(states[2:])])
    np.testing.assert_allclose(tree[1], first[1], rtol=tol, atol=tol * spread)
    np.testing.assert_allclose(tree[2], first[2], rtol=tol, atol=tol * 300 * spread ** 2)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_merge_with_skipna(rng, dtype):
    x = (rng.standard_normal((250, 4)) * 2 + 7).astype(dtype)
    x[rng.random(x.shape) < 0.2] = np.nan
    x[:, 3] = np.nan  # a channel with no values at all
    x[5, 3] = 2.5     # ... but one
    count, mean, var = _reference(x, 1, skipna=True)
    parts = _split(x, _cuts(rng, 250, 5), 0)
    state = bnfast.merge_moments(bnfast.moments_state(p, skipna=True) for p in parts)
    _assert_state(state, count, mean, var, x, pieces=5)
    # without skipna, NaN poisons its channel through the merge too
    plain = bnfast.merge_moments(bnfast.moments_state(p) for p in parts)
    assert np.isnan(plain[1]).all()


def test_merge_with_sample_weights(rng):
    x = rng.standard_normal((200, 3)) * [1.0, 5.0, 0.1] + [0.0, 100.0, -3.0]
    w = rng.uniform(0.0, 3.0, 200)
    w[:10] = 0.0
    count, mean, var = _reference(x, 1, w=w)
    cuts = _cuts(rng, 200, 4)
    state = bnfast.merge_moments(
        bnfast.moments_state(p, sample_weight=q)
        for p, q in zip(_split(x, cuts, 0), np.split(w, cuts)))
    _assert_state(state, count, mean, var, x, weighted=True, pieces=4)
    # integer weights are repetitions: the same statistics of the same multiset of values
    reps = rng.integers(0, 4, 200)
    repeated = np.repeat(x, reps, axis=0)
    rep_state = bnfast.moments_state(repeated)
    weighted = bnfast.moments_state(x, sample_weight=reps)
    np.testing.assert_array_equal(weighted[0], rep_state[0])  # integer sums: exact
    count, mean, var = _reference(repeated, 1)
    _assert_state(weighted, count, mean, var, repeated)
    _assert_state(rep_state, count, mean, var, repeated)


def test_weights_and_skipna_together(rng):
    x = rng.standard_normal((120, 3)) + 4
    x[rng.random(x.shape) < 0.25] = np.nan
    w = rng.uniform(0.5, 2.0, 120)
    count, mean, var = _reference(x, 1, w=w, skipna=True)
    cuts = _cuts(rng, 120, 3)
    state = bnfast.merge_moments(
        bnfast.moments_state(p, skipna=True, sample_weight=q)
        for p, q in zip(_split(x, cuts, 0), np.split(w, cuts)))
    _assert_state(state, count, mean, var, x, weighted=True, pieces=3)


def test_empty_pieces_are_neutral(rng):
    x = rng.standard_normal((50, 3))
    empty = bnfast.moments_state(x[:0])
    np.testing.assert_array_equal(empty[0], 0.0)
    full = bnfast.moments_state(x)
    merged = bnfast.merge_moments([empty, full, empty])
    for a, b in zip(merged, full):
        np.testing.assert_array_equal(a, b)


def test_merge_does_not_modify_or_alias_its_inputs(rng):
    states = [bnfast.moments_state(rng.standard_normal((20, 3))) for _ in range(3)]
    before = [tuple(a.copy() for a in s) for s in states]
    merged = bnfast.merge_moments(states)
    for s, b in zip(states, before):
        for a, c in zip(s, b):
            np.testing.assert_array_equal(a, c)
    single = bnfast.merge_moments(states[:1])
    for a, b in zip(single, states[0]):
        assert not np.shares_memory(a, b)
    assert all(not np.shares_memory(m, a) for m in merged for s in states for a in s)


def test_merge_accepts_a_scalar_count_and_lists():
    s1 = (3, [2.0, 5.0], [2.0, 8.0])
    s2 = (np.array([1.0, 1.0]), np.array([4.0, 1.0]), np.zeros(2))
    count, mean, m2 = bnfast.merge_moments([s1, s2])
    np.testing.assert_array_equal(count, [4.0, 4.0])
    # small integers and quarters: exact in any order of the merge's operations
    np.testing.assert_array_equal(mean, [2.5, 4.0])
    np.testing.assert_array_equal(m2, [2.0 + 3 * 1 / 4 * 4.0, 8.0 + 3 * 1 / 4 * 16.0])


def test_merge_errors():
    with pytest.raises(ValueError, match="at least one"):
        bnfast.merge_moments([])
    s3 = bnfast.moments_state(np.ones((4, 3)))
    s2 = bnfast.moments_state(np.ones((4, 2)))
    with pytest.raises(ValueError, match="channels"):
        bnfast.merge_moments([s3, s2])
    with pytest.raises(ValueError, match="triple"):
        bnfast.merge_moments([s3, (1.0, 2.0)])
