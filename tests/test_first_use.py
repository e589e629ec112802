"""What a first-time user meets (issue 21, "What a new user hit"): a per-channel argument that
does not fit points at the channel axis (channels-last data without ``axis=-1``), a ragged
nested list is named, and the running statistics come as a pair, as in PyTorch.
"""
import re

import numpy as np
import pytest

import bnfast
from bnfast import reference
from bnfast.distributed import sync_batch_norm_forward

from _helpers import assert_forward_close, make_channel_params, make_float

NHWC = (4, 5, 6, 3)  # 3 channels last; axis 1 (the default) has 5


# ---------------------------------------------------------------- the channel axis

def _channels_last_calls(x, gamma, beta):
    """Every entry point, called on NHWC ``x`` without axis=-1, with C = 3 vectors."""
    mean, invstd = np.zeros(3), np.ones(3)
    rm, rv = np.zeros(3), np.ones(3)
    return {
        "forward": lambda: bnfast.batch_norm_forward(x, gamma, beta),
        "forward-ghost": lambda: bnfast.batch_norm_forward(x, gamma, beta,
                                                           virtual_batch_size=2),
        "forward-running": lambda: bnfast.batch_norm_forward(x, running_mean=rm,
                                                             running_var=rv),
        "inference": lambda: bnfast.batch_norm_inference(x, rm, rv, gamma, beta),
        "backward": lambda: bnfast.batch_norm_backward(x, x, mean, invstd, gamma),
        "renorm": lambda: bnfast.batch_renorm_forward(x, rm, rv, gamma, beta, r_max=3.0,
                                                      d_max=5.0),
    }


@pytest.mark.parametrize("call", ["forward", "forward-ghost", "forward-running", "inference",
                                  "backward", "renorm"])
def test_channels_last_without_axis_points_at_the_channel_axis(rng, call):
    x = make_float(rng, NHWC, -1)
    gamma, beta = make_channel_params(rng, 3)
    name = {"forward-running": "running_mean", "inference": "running_mean",
            "backward": "mean"}.get(call, "gamma")
    with pytest.raises(ValueError, match=(
            rf"^{name}: expected shape \(5,\), got shape \(3,\): one value per channel, and the "
            r"channel axis of x \(shape \(4, 5, 6, 3\)\), axis=1, has 5; for channels-last data "
            r".*whose last axis has 3, pass axis=-1$")):
        _channels_last_calls(x, gamma, beta)[call]()


def test_following_the_suggestion_works(rng):
    """axis=-1, as the message says, gives the reference's channels-last batch norm."""
    x = make_float(rng, NHWC, -1)
    gamma, beta = make_channel_params(rng, 3)
    with pytest.raises(ValueError, match="pass axis=-1"):
        bnfast.batch_norm_forward(x, gamma, beta)
    got = bnfast.batch_norm_forward(x, gamma, beta, axis=-1)
    want = reference.batch_norm_forward(x, gamma, beta, axis=-1)
    assert_forward_close(got, want, x, -1, gamma, beta)


def test_another_axis_of_that_length_is_named(rng):
    x = make_float(rng, (4, 5, 3, 6), 1)  # the length 3 is axis 2, not the last
    with pytest.raises(ValueError, match=r"gamma: .*axis=1, has 5; axis=2 has 3: is that the "
                                         r"channel axis\?$"):
        bnfast.batch_norm_forward(x, np.ones(3))


def test_no_axis_of_that_length_no_suggestion(rng):
    x = make_float(rng, (8, 5), 1)
    with pytest.raises(ValueError) as excinfo:
        bnfast.batch_norm_forward(x, np.ones(7))
    message = str(excinfo.value)
    assert message == ("gamma: expected shape (5,), got shape (7,): one value per channel, "
                       "and the channel axis of x (shape (8, 5)), axis=1, has 5"), message


def test_axis_is_quoted_as_given(rng):
    x = make_float(rng, (4, 3, 5, 6), -3)
    with pytest.raises(ValueError, match=r"axis=-3, has 3; for channels-last .* has 6, "
                                         r"pass axis=-1$"):
        bnfast.batch_norm_forward(x, np.ones(6), axis=-3)


def test_channel_count_is_an_int(rng):
    """The channel count that remembers its input behaves as the int it is."""
    from bnfast._validation import channel_shape
    outer, C, inner = channel_shape(np.empty((2, 5, 3)), 1)
    assert (outer, C, inner) == (2, 5, 3) and isinstance(C, int)
    assert (C,) == (5,) and hash(C) == hash(5) and f"{C}" == "5" and repr((C,)) == "(5,)"
    assert np.empty((outer, C, inner)).shape == (2, 5, 3)


# ---------------------------------------------------------------- ragged input

RAGGED = [[1.0, 2.0], [3.0]]


@pytest.mark.parametrize("name, call", [
    ("x", lambda: bnfast.batch_norm_forward(RAGGED)),
    ("x", lambda: bnfast.moments(RAGGED)),
    ("x", lambda: bnfast.batch_norm_inference(RAGGED, np.zeros(2), np.ones(2))),
    ("gamma", lambda: bnfast.batch_norm_forward(np.ones((4, 2)), gamma=RAGGED)),
    ("beta", lambda: bnfast.batch_norm_inference(np.ones((4, 2)), np.zeros(2), np.ones(2),
                                                 beta=RAGGED)),
    ("dy", lambda: bnfast.batch_norm_backward(RAGGED, np.ones((2, 2)), np.zeros(2),
                                              np.ones(2))),
    ("sample_weight", lambda: bnfast.moments_state(np.ones((2, 2)), sample_weight=RAGGED)),
    ("x", lambda: bnfast.BatchNorm(2)(RAGGED)),
], ids=["forward", "moments", "inference", "gamma", "beta", "dy", "sample_weight", "layer"])
def test_ragged_list_names_the_argument(name, call):
    with pytest.raises(ValueError, match=rf"^{name}: expected an array-like of real numbers "
                                         r"with a regular shape, got one NumPy cannot make an "
                                         r"array of \(.*inhomogeneous"):
        call()


# ---------------------------------------------------------------- running statistics pairs

PAIR_MESSAGE = (r"^running_mean, running_var: expected both or neither \(they are updated "
                r"together\), got {} without {}$")


@pytest.mark.parametrize("given", ["running_mean", "running_var"])
@pytest.mark.parametrize("kind", ["plain", "validated", "ghost"])
def test_forward_takes_both_running_statistics_or_neither(rng, given, kind):
    """PyTorch's F.batch_norm raises in training for one without the other (torch 2.13:
    "running_mean and running_var must either both be None or neither be None"); bnfast did
    update the one it got. Raised before the fast path, which recognizes one alone as plain;
    the buffer is left as it was."""
    x = make_float(rng, (16, 3), 1)
    if kind == "validated":
        x = x.tolist()
    buffer = rng.standard_normal(3)
    before = buffer.copy()
    missing = "running_var" if given == "running_mean" else "running_mean"
    extra = {"virtual_batch_size": 4} if kind == "ghost" else {}
    with pytest.raises(ValueError, match=PAIR_MESSAGE.format(given, missing)):
        bnfast.batch_norm_forward(x, **{given: buffer}, **extra)
    assert np.array_equal(buffer, before)


def test_sync_forward_takes_both_or_neither(rng):
    x = make_float(rng, (16, 3), 1)
    buffer = np.zeros(3)
    with pytest.raises(ValueError, match=PAIR_MESSAGE.format("running_mean", "running_var")):
        sync_batch_norm_forward(x, all_gather=lambda packed: [packed], running_mean=buffer)
    assert np.array_equal(buffer, np.zeros(3))


def test_dask_forward_takes_both_or_neither(rng):
    da = pytest.importorskip("dask.array")
    import bnfast.dask

    x = da.from_array(make_float(rng, (16, 3), 1), chunks=(8, 3))
    buffer = np.ones(3)
    with pytest.raises(ValueError, match=PAIR_MESSAGE.format("running_var", "running_mean")):
        bnfast.dask.batch_norm_forward(x, running_var=buffer)
    assert np.array_equal(buffer, np.ones(3))


def test_renorm_needs_both(rng):
    x = make_float(rng, (16, 3), 1)
    with pytest.raises(ValueError, match=r"^running_var: .* required .* got None$"):
        bnfast.batch_renorm_forward(x, np.zeros(3), None, r_max=3.0, d_max=5.0)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_layer_with_one_running_statistic_raises(rng, training):
    """The layer keeps both or neither; one set to None by hand is an error in either mode."""
    layer = bnfast.BatchNorm(3, dtype=np.float64)
    layer.train(training)
    layer.running_var = None
    before = layer.running_mean.copy()
    with pytest.raises(ValueError, match=r"^running_mean, running_var: expected both"):
        layer(make_float(rng, (16, 3), 1))
    assert np.array_equal(layer.running_mean, before)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("given", ["running_mean", "running_var"])
def test_torch_functional_raises_as_torch_does(rng, training, given):
    """bnfast.torch.batch_norm with one running statistic: PyTorch's exception and message."""
    torch = pytest.importorskip("torch")
    import bnfast.torch as bt

    x = torch.from_numpy(make_float(rng, (16, 3), 1))
    stats = {"running_mean": None, "running_var": None}
    stats[given] = torch.zeros(3, dtype=torch.float64)
    outcomes = []
    for fn in (torch.nn.functional.batch_norm, bt.batch_norm):
        with pytest.raises((ValueError, RuntimeError)) as excinfo:
            fn(x, stats["running_mean"], stats["running_var"], training=training)
        outcomes.append((type(excinfo.value), str(excinfo.value)))
    assert outcomes[0] == outcomes[1]
    assert re.search("running_mean|running_var", outcomes[0][1])
