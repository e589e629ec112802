"""torch.export (strict and non-strict) of models with bnfast's layers: the exported program
calls torch.ops.bnfast and runs like the model; ``revert`` for aten-only tools; torch.jit.trace
with no warnings of bnfast's own."""
import copy
import io
import warnings

import pytest

from _helpers import run_python

torch = pytest.importorskip("torch")
bt = pytest.importorskip("bnfast.torch")
from _torch_helpers import kernels_only  # noqa: E402,F401  (autouse: bnfast's kernels only)


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
        torch.nn.Flatten(), torch.nn.Linear(4 * 5 * 6, 6), torch.nn.BatchNorm1d(6))


def _targets(ep):
    return [str(n.target) for n in ep.graph.nodes if n.op == "call_function"]


@pytest.mark.parametrize("strict", [False, True], ids=["non-strict", "strict"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_export_calls_the_operators(strict, training):
    model = bt.convert(_net()).train(training)
    x = torch.randn(8, 3, 5, 6)
    exported_model = copy.deepcopy(model)
    ep = torch.export.export(exported_model, (x,), strict=strict)
    targets = _targets(ep)
    name = "bnfast.batch_norm_train.default" if training else "bnfast.batch_norm_infer.default"
    assert targets.count(name) == 2, targets
    assert not any("aten" in t and "batch_norm" in t for t in targets), targets
    # Running the exported program is running the model: the same kernels, the same bits,
    # and (training mode) the same buffer updates.
    reference = copy.deepcopy(model)
    module = ep.module()
    for _ in range(2):
        got, want = module(x), reference(x)
        assert torch.equal(got, want)
    if training:
        buffers = dict(module.named_buffers())
        for k, v in reference.named_buffers():
            assert torch.equal(buffers[k], v), k


def test_exported_program_saves_loads_and_runs_in_a_fresh_process(tmp_path):
    model = bt.convert(_net()).eval()
    x = torch.randn(8, 3, 5, 6)
    path = tmp_path / "model.pt2"
    torch.export.save(torch.export.export(model, (x,)), str(path))
    torch.save({"x": x, "y": model(x)}, str(tmp_path / "io.pt"))
    code = f"""
import torch
import bnfast.torch  # registers torch.ops.bnfast, which the program calls
ep = torch.export.load({str(path)!r})
io = torch.load({str(tmp_path / "io.pt")!r})
assert any("bnfast" in str(n.target) for n in ep.graph.nodes)
print("same:", torch.equal(ep.module()(io["x"]), io["y"]))
"""
    done = run_python(code, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "same: True" in done.stdout


def test_revert_is_the_inverse_of_convert():
    theirs = _net()
    layers = [theirs[1], theirs[5]]
    tensors = [(m.weight, m.bias, m.running_mean, m.running_var, m.num_batches_tracked)
               for m in layers]
    ours = bt.convert(theirs)
    assert type(ours[1]) is bt.BatchNorm2d and type(ours[5]) is bt.BatchNorm1d
    ours.eval()
    back = bt.revert(ours)
    assert back is ours  # in place, as convert
    assert type(back[1]) is torch.nn.BatchNorm2d and type(back[5]) is torch.nn.BatchNorm1d
    for m, same in zip((back[1], back[5]), tensors):
        assert all(a is b for a, b in zip((m.weight, m.bias, m.running_mean, m.running_var,
                                           m.num_batches_tracked), same))
        assert not m.training
    sync = bt.convert_sync_batchnorm(torch.nn.Sequential(torch.nn.BatchNorm2d(3)))
    assert type(bt.revert(sync)[0]) is torch.nn.SyncBatchNorm
    assert type(bt.revert(bt.BatchNorm3d(2))) is torch.nn.BatchNorm3d
    lazy = bt.revert(bt.convert(torch.nn.LazyBatchNorm2d()))
    assert type(lazy) is torch.nn.LazyBatchNorm2d


def test_revert_refuses_options_torch_does_not_have():
    model = torch.nn.Sequential(bt.BatchNorm2d(3), bt.BatchNorm2d(3, activation="relu"))
    with pytest.raises(ValueError, match="'1'.*activation='relu'"):
        bt.revert(model)
    assert type(model[0]) is bt.BatchNorm2d  # nothing swapped


def test_reverted_model_scripts_and_traces_to_aten():
    model = bt.revert(bt.convert(_net())).eval()
    x = torch.randn(8, 3, 5, 6)
    scripted = torch.jit.script(model)
    assert torch.equal(scripted(x), model(x))
    buf = io.BytesIO()
    torch.jit.save(scripted, buf)
    assert "bnfast" not in str(scripted.inlined_graph)


def _trace_warnings(model, x):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        traced = torch.jit.trace(model, (x,), check_trace=False)
    return traced, sorted(str(w.message) for w in caught)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_jit_trace_warns_as_torch_does(training):
    """torch.jit.trace of a converted model records aten's batch norm with exactly the
    warnings torch's own layers give: none of bnfast's."""
    x = torch.randn(8, 3, 5, 6)
    theirs = _net().train(training)
    ours = bt.convert(copy.deepcopy(theirs))
    traced_theirs, want = _trace_warnings(theirs, x)
    traced_ours, got = _trace_warnings(ours, x)
    assert got == want
    graph = str(traced_ours.inlined_graph)
    assert graph.count("aten::batch_norm") == 2
    if not training:
        assert torch.equal(traced_ours(x), traced_theirs(x))
