"""bnfast.torch's smaller contracts: PyTorch's own errors for non-tensors and sparse input, a
friendly ImportError without torch, lazy layers, and the hand-off of small calls to
PyTorch's kernel."""
import numpy as np
import pytest

from _helpers import run_python

torch = pytest.importorskip("torch")
bt = pytest.importorskip("bnfast.torch")


def _raised(fn):
    try:
        fn()
    except Exception as exc:  # noqa: BLE001  (comparing whatever each raises)
        return type(exc), str(exc)
    return None


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("make", [
    pytest.param(lambda: np.zeros((4, 3), np.float32), id="numpy"),
    pytest.param(lambda: torch.ones(4, 3).to_sparse(), id="sparse-coo"),
    pytest.param(lambda: torch.ones(4, 3).to_sparse_csr(), id="sparse-csr"),
    pytest.param(lambda: [[1.0, 2.0, 3.0]] * 4, id="list"),
])
@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
def test_bad_input_raises_pytorchs_own_error(make, training):
    want = _raised(lambda: torch.nn.BatchNorm1d(3).train(training)(make()))
    got = _raised(lambda: bt.BatchNorm1d(3).train(training)(make()))
    assert want is not None and got == want


def test_sparse_4d_input_raises_as_torch():
    x = torch.ones(2, 3, 2, 2).to_sparse()
    want = _raised(lambda: torch.nn.BatchNorm2d(3)(x))
    assert want is not None and _raised(lambda: bt.BatchNorm2d(3)(x)) == want
    want = _raised(lambda: torch.nn.functional.batch_norm(x, None, None, training=True))
    assert _raised(lambda: bt.batch_norm(x, None, None, training=True)) == want


def test_import_without_torch_says_what_to_install():
    done = run_python("import sys\nsys.modules['torch'] = None  # as if not installed\n"
                      "import bnfast\nprint('bnfast imported')\n"
                      "try:\n    import bnfast.torch\n"
                      "except ImportError as exc:\n    print(type(exc).__name__, exc)\n")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "bnfast imported" in done.stdout
    assert "ImportError bnfast.torch needs PyTorch" in done.stdout
    assert "pip install torch" in done.stdout and "ModuleNotFound" not in done.stdout


@pytest.mark.parametrize("lazy, shape", [(torch.nn.LazyBatchNorm1d, (6, 4)),
                                         (torch.nn.LazyBatchNorm2d, (6, 4, 3, 3)),
                                         (torch.nn.LazyBatchNorm3d, (6, 4, 2, 3, 3))])
def test_lazy_layers_are_converted_before_their_first_forward(rng, lazy, shape):
    """convert swaps a lazy layer for bnfast's lazy layer holding the user's uninitialized
    parameters; the first forward materializes them in place (the same objects, so an
    optimizer built before keeps them) and the layer becomes bnfast's BatchNorm*d."""
    torch.manual_seed(0)
    theirs = lazy()
    ours = bt.convert(lazy())
    assert type(ours).__name__ == lazy.__name__ and type(ours).__module__ == "bnfast.torch"
    params = (ours.weight, ours.bias)
    opt = torch.optim.SGD(ours.parameters(), lr=0.5)
    x = torch.from_numpy(rng.standard_normal(shape) + 3)
    dy = torch.from_numpy(rng.standard_normal(shape))
    for layer in (theirs, ours):
        layer.double()
    y_ours, y_theirs = ours(x), theirs(x)
    assert type(ours).__name__ == lazy.cls_to_become.__name__
    assert type(ours) is getattr(bt, lazy.cls_to_become.__name__)
    assert ours.weight is params[0] and ours.bias is params[1]
    assert ours.num_features == 4
    torch.testing.assert_close(y_ours, y_theirs)
    y_ours.backward(dy)
    before = ours.weight.detach().clone()
    opt.step()
    assert not torch.equal(ours.weight, before)  # the optimizer updated the user's tensor
    torch.testing.assert_close(ours.running_var, theirs.running_var)


def test_convert_keeps_an_already_materialized_lazy_layer_working():
    layer = torch.nn.LazyBatchNorm2d()
    layer(torch.randn(4, 3, 2, 2))  # now a torch.nn.BatchNorm2d
    assert type(bt.convert(layer)) is bt.BatchNorm2d


def test_handoff_computes_small_calls_with_pytorchs_kernel(rng):
    """With the hand-off, a small plain call is PyTorch's kernel (its bits); without it,
    bnfast's (float64 accumulation: the float32 variance of offset data keeps its digits)."""
    x = torch.from_numpy(rng.standard_normal((64, 8)) + 1e4).float()
    rv_torch, rv_on, rv_off = torch.ones(8), torch.ones(8), torch.ones(8)
    torch.nn.functional.batch_norm(x, torch.zeros(8), rv_torch, training=True, momentum=1.0)
    previous = bt.set_torch_handoff(True)
    try:
        assert bt._policy.torch_is_faster(x, True)
        bt.batch_norm(x, torch.zeros(8), rv_on, training=True, momentum=1.0)
        assert bt.set_torch_handoff(False) is True
        bt.batch_norm(x, torch.zeros(8), rv_off, training=True, momentum=1.0)
    finally:
        bt.set_torch_handoff(previous)
    assert torch.equal(rv_on, rv_torch)
    want = x.double().var(0, unbiased=True)
    err_off = float(((rv_off.double() - want) / want).abs().max())
    # bnfast: the unbiased variance rounded once to float32 (and the float64 sums' error,
    # far below): within 2 float32 ulps. PyTorch's float32 statistics of 1e4 + N(0, 1) lose
    # more than that here (see docs/torch.md); the test only needs bnfast's bound.
    assert err_off <= 2 * np.finfo(np.float32).eps


def test_set_torch_handoff_takes_a_bool_and_the_environment_variable():
    with pytest.raises(TypeError, match="expected True or False"):
        bt.set_torch_handoff(1)
    done = run_python("import bnfast.torch as bt\nprint(bt.set_torch_handoff(True))")
    assert done.stdout.strip() == "True", done.stderr[-2000:]
    import os

    old = os.environ.get("BNFAST_TORCH_HANDOFF")
    os.environ["BNFAST_TORCH_HANDOFF"] = "0"
    try:
        done = run_python("import bnfast.torch as bt\nprint(bt.set_torch_handoff(True))")
    finally:
        if old is None:
            del os.environ["BNFAST_TORCH_HANDOFF"]
        else:
            os.environ["BNFAST_TORCH_HANDOFF"] = old
    assert done.stdout.strip() == "False", done.stderr[-2000:]


@pytest.mark.parametrize("path", ["eager", "operator"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_handoff_of_the_fused_options_is_torchs_composite(rng, path, training):
    """Below the crossover, relu(bn(x) + residual) is PyTorch's batch norm, then the add and
    the ReLU: its bits, forward and backward, in the eager path and inside the operator."""
    shape, C = (6, 3, 2, 2), 3
    x0 = torch.from_numpy(rng.standard_normal(shape) + 1).float()
    r0 = torch.from_numpy(rng.standard_normal(shape)).float()
    w0 = torch.from_numpy(rng.uniform(0.5, 2, C)).float()
    dy = torch.from_numpy(rng.standard_normal(shape)).float()
    rm, rv = torch.zeros(C), torch.ones(C) * 2
    previous = bt.set_torch_handoff(True)
    try:
        assert bt._policy.torch_is_faster(x0, training)
        xs, rs, ws = ([t.clone().requires_grad_() for _ in range(2)] for t in (x0, r0, w0))
        if path == "eager":
            layer = bt.BatchNorm2d(C, activation="relu", bias=False).train(training)
            with torch.no_grad():
                layer.weight.copy_(w0)
                layer.running_var.fill_(2.0)
            ws[0] = layer.weight
            y = layer(xs[0], rs[0])
        elif training:
            y = torch.ops.bnfast.batch_norm_train(xs[0], ws[0], None, rm.clone(), rv.clone(),
                                                  rs[0], 0.1, 1e-5, True)[0]
        else:
            y = torch.ops.bnfast.batch_norm_infer(xs[0], rm, rv, ws[0], None, rs[0], 1e-5,
                                                  True)
        want = torch.relu(torch.nn.functional.batch_norm(
            xs[1], rm.clone(), rv.clone(), ws[1], None, training, 0.1, 1e-5) + rs[1])
    finally:
        bt.set_torch_handoff(previous)
    y.backward(dy)
    want.backward(dy)
    assert torch.equal(y, want)
    for name, got, exp in (("dx", xs[0].grad, xs[1].grad), ("dres", rs[0].grad, rs[1].grad),
                           ("dweight", ws[0].grad, ws[1].grad)):
        if path == "operator" and not training and name != "dres":
            # eval-mode backward stays on the kernels (tests/test_torch_ops.py bounds it)
            torch.testing.assert_close(got, exp)
        else:
            assert torch.equal(got, exp), name
