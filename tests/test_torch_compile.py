"""torch.compile of models with bnfast's layers: fullgraph (no graph break), the operators in
the graph, no more graphs than PyTorch's own batch norm over changing batch sizes, the same
results as eager mode under the eager, aot_eager and inductor backends."""
import copy

import numpy as np
import pytest

from _helpers import sum_tol

torch = pytest.importorskip("torch")
bt = pytest.importorskip("bnfast.torch")
from _torch_helpers import kernels_only  # noqa: E402,F401  (autouse: bnfast's kernels only)


class Recorder:
    """A torch.compile backend that counts the graphs it is given and records their
    operators, then runs them as they are (the eager backend)."""

    def __init__(self):
        self.graphs = 0
        self.targets = []

    def __call__(self, gm, example_inputs):
        self.graphs += 1
        self.targets += [str(n.target).removesuffix(".default") for n in gm.graph.nodes
                         if n.op == "call_function"]
        return gm.forward


def _net(dtype=torch.float64):
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1, bias=False), torch.nn.BatchNorm2d(4),
        torch.nn.ReLU(), torch.nn.Conv2d(4, 4, 3, padding=1), torch.nn.BatchNorm2d(4),
        torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(4 * 5 * 6, 6),
        torch.nn.BatchNorm1d(6)).to(dtype)


def _step(model, x, call=None):
    """Output, input gradient, parameter gradients and buffers after one training step of
    ``model`` (called through ``call``, its compiled form, when given)."""
    x = x.clone().requires_grad_()
    y = (call or model)(x)
    (y * torch.arange(y.numel(), dtype=y.dtype).reshape(y.shape).cos()).sum().backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters()}
    model.zero_grad()
    return y.detach(), x.grad, grads, {k: b.clone() for k, b in model.named_buffers()}


def _close(got, want, what):
    # float64 throughout; every value is a sum of at most ~10^4 terms (conv, linear, batch
    # statistics over 16 * 30 values) each side of which is within gamma_n of the exact sum
    # (sum_tol), relative to the largest value compared.
    scale = float(want.abs().max()) if want.numel() else 0.0
    torch.testing.assert_close(got, want, rtol=0, atol=sum_tol(10**4, max(scale, 1.0)) * 8,
                               msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize("backend", ["eager", "aot_eager", "inductor"])
def test_fullgraph_matches_eager(backend):
    torch._dynamo.reset()
    eager = bt.convert(_net())
    compiled_model = copy.deepcopy(eager)
    compiled = torch.compile(compiled_model, backend=backend, fullgraph=True)
    x = torch.randn(16, 3, 5, 6, dtype=torch.float64) * 2 + 1
    for mode in ("train", "eval"):
        eager.train(mode == "train")
        compiled_model.train(mode == "train")
        want, got = _step(eager, x), _step(compiled_model, x, compiled)
        _close(got[0], want[0], f"{backend} {mode} y")
        _close(got[1], want[1], f"{backend} {mode} dx")
        for k in want[2]:
            _close(got[2][k], want[2][k], f"{backend} {mode} grad {k}")
        for k in want[3]:
            _close(got[3][k].double(), want[3][k].double(), f"{backend} {mode} buffer {k}")


def test_graph_holds_the_operators_and_no_break():
    torch._dynamo.reset()
    rec = Recorder()
    model = bt.convert(_net())
    compiled = torch.compile(model, backend=rec, fullgraph=True)
    compiled(torch.randn(8, 3, 5, 6, dtype=torch.float64))
    assert rec.graphs == 1
    assert rec.targets.count("bnfast.batch_norm_train") == 3
    assert rec.targets.count("bnfast.store_running_stats") == 3
    assert not any("batch_norm" in t and "bnfast" not in t for t in rec.targets)
    model.eval()
    compiled(torch.randn(8, 3, 5, 6, dtype=torch.float64))
    assert rec.targets.count("bnfast.batch_norm_infer") == 3


def test_no_more_graphs_than_torch_over_changing_batch_sizes():
    """Batch sizes 16, 16, 16, 8, 12, 16 in training, then two eval calls: as many graphs
    (and recompiles) as PyTorch's own batch norm needs (automatic dynamic shapes)."""
    counts = {}
    for name, convert in (("torch", lambda m: m), ("bnfast", bt.convert)):
        torch._dynamo.reset()
        rec = Recorder()
        model = convert(_net(torch.float32))
        compiled = torch.compile(model, backend=rec, fullgraph=True)
        for n in (16, 16, 16, 8, 12, 16):
            compiled(torch.randn(n, 3, 5, 6)).sum().backward()
        model.eval()
        for n in (16, 8):
            compiled(torch.randn(n, 3, 5, 6))
        counts[name] = rec.graphs
    assert counts["bnfast"] <= counts["torch"], counts


def test_layer_options_compile_fullgraph(rng):
    torch._dynamo.reset()
    x = torch.from_numpy(rng.standard_normal((8, 4, 3, 3)) + 1)
    res = torch.from_numpy(rng.standard_normal((8, 4, 3, 3)))
    for kw, args in (({"activation": "relu"}, (x, res)), ({"virtual_batch_size": 4}, (x,)),
                     ({"renorm": True, "r_max": 1.5, "d_max": 0.5}, (x,))):
        eager = bt.BatchNorm2d(4, dtype=torch.float64, **kw)
        compiled_layer = copy.deepcopy(eager)
        compiled = torch.compile(compiled_layer, backend="aot_eager", fullgraph=True)
        for _ in range(2):  # the second step reads the updated running statistics (renorm)
            xs = [x.clone().requires_grad_() for _ in range(2)]
            want = eager(xs[0], *args[1:])
            got = compiled(xs[1], *args[1:])
            want.square().sum().backward()
            got.square().sum().backward()
            _close(got.detach(), want.detach(), f"{kw} y")
            _close(xs[1].grad, xs[0].grad, f"{kw} dx")
        _close(compiled_layer.running_var, eager.running_var, f"{kw} running_var")


def test_functional_compiles_fullgraph(rng):
    torch._dynamo.reset()
    x = torch.from_numpy(rng.standard_normal((6, 3, 4)))
    rm, rv = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    rm2, rv2 = rm.clone(), rv.clone()

    def fn(x, rm, rv):
        return bt.batch_norm(x, rm, rv, training=True, momentum=0.2)

    got = torch.compile(fn, backend="aot_eager", fullgraph=True)(x, rm, rv)
    want = fn(x, rm2, rv2)
    _close(got, want, "y")
    _close(rm, rm2, "running_mean")
    _close(rv, rv2, "running_var")


def test_sync_batchnorm_without_a_group_compiles_fullgraph():
    """Eval mode or no process group: SyncBatchNorm is plain batch norm on the operators (the
    synchronized forward itself stays eager: tests/test_torch_sync.py compiles around it)."""
    torch._dynamo.reset()
    model = bt.convert_sync_batchnorm(_net())
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    x = torch.randn(8, 3, 5, 6, dtype=torch.float64)
    _close(compiled(x).detach(), copy.deepcopy(model)(x).detach(), "y")


def test_channels_last_output_under_inductor():
    torch._dynamo.reset()
    layer = bt.BatchNorm2d(4)
    x = torch.randn(8, 4, 5, 6).contiguous(memory_format=torch.channels_last)
    y = torch.compile(layer, backend="inductor", fullgraph=True)(x)
    assert y.is_contiguous(memory_format=torch.channels_last)
    want = copy.deepcopy(layer)(x)
    assert np.array_equal(y.detach().numpy(), want.detach().numpy())


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_compiled_handoff_uses_aten_below_the_crossover(training):
    """With the hand-off on, torch.compile traces aten's batch norm (for inductor to fuse)
    below the compiled crossover and bnfast's operator above it; torch.export always keeps
    the operator."""
    bt.set_torch_handoff(True)  # the kernels_only fixture restores it
    for n, ours in ((64, False), (bt._policy._COMPILED_CROSSOVERS[False][(training, "NC")], True)):
        torch._dynamo.reset()
        rec = Recorder()
        layer = bt.BatchNorm1d(8).train(training)
        x = torch.randn(n // 8, 8)
        torch.compile(layer, backend=rec, fullgraph=True)(x)
        names = [t for t in rec.targets if "batch_norm" in t]
        assert names and all(("bnfast" in t) == ours for t in names), (n, names)
    ep = torch.export.export(bt.BatchNorm1d(8).train(training), (torch.randn(8, 8),))
    assert any("bnfast" in str(n.target) for n in ep.graph.nodes)
