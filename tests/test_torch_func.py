"""torch.func with bnfast's layers, against PyTorch's own: grad, vmap, vmap(grad), jvp,
jacrev, hessian and functional_call, in train and eval mode, and
replace_all_batch_norm_modules_ on converted models. Where PyTorch's layers raise (a
transform that would update captured buffers in place), bnfast's raise too."""
import copy

import pytest

from _helpers import sum_tol

torch = pytest.importorskip("torch")
bt = pytest.importorskip("bnfast.torch")
from _torch_helpers import kernels_only  # noqa: E402,F401  (autouse: bnfast's kernels only)

func = pytest.importorskip("torch.func")


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
        torch.nn.Flatten(), torch.nn.Linear(4 * 3 * 3, 5), torch.nn.BatchNorm1d(5)).double()


def _run(model, how, training, x, xs):
    model = copy.deepcopy(model).train(training)
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = dict(model.named_buffers())

    def out(p, x):
        return func.functional_call(model, (p, buffers), (x,))

    def loss(p, x):
        return (out(p, x) * torch.linspace(-1, 2, 5, dtype=torch.float64)).square().sum()

    if how == "functional_call":
        return out(params, x)
    if how == "grad":
        return func.grad(loss)(params, x)
    if how == "vmap":
        return func.vmap(lambda x: out(params, x))(xs)
    if how == "vmap_grad":  # per-example gradients, each example a mini-batch
        return func.vmap(func.grad(loss), in_dims=(None, 0))(params, xs)
    if how == "jvp":
        return func.jvp(lambda x: out(params, x), (x,), (torch.cos(x),))
    if how == "jacrev":
        return func.jacrev(lambda w: loss({**params, "1.weight": w}, x))(params["1.weight"])
    if how == "hessian":
        return func.hessian(lambda w: loss({**params, "1.weight": w}, x))(params["1.weight"])
    raise AssertionError(how)


def _compare(theirs, ours, what):
    want, spec = torch.utils._pytree.tree_flatten(theirs)
    got, spec2 = torch.utils._pytree.tree_flatten(ours)
    assert spec == spec2, what
    for g, w in zip(got, want):
        # float64; each value a chain of sums over at most ~10^3 terms on either side
        # (sum_tol), doubled for the second-order transforms' two passes.
        scale = max(float(w.abs().max()), 1.0)
        torch.testing.assert_close(g, w, rtol=0, atol=2 * sum_tol(10**3, scale) * 4,
                                   msg=lambda m: f"{what}: {m}")


HOWS = ["functional_call", "grad", "vmap", "vmap_grad", "jvp", "jacrev", "hessian"]


@pytest.mark.parametrize("how", HOWS)
@pytest.mark.parametrize("mode", ["train", "eval", "train-untracked"])
def test_transform_matches_torch(rng, how, mode):
    """Training mode with running statistics: PyTorch's layers raise under grad and vmap
    (the in-place updates of captured buffers); bnfast's raise the same exception type.
    "train-untracked": training mode after replace_all_batch_norm_modules_, which drops them."""
    theirs = _net()
    if mode == "train-untracked":
        func.replace_all_batch_norm_modules_(theirs)
    ours = bt.convert(copy.deepcopy(theirs))
    assert type(ours[1]) is bt.BatchNorm2d
    x = torch.from_numpy(rng.standard_normal((6, 3, 3, 3)) * 2 + 1)
    xs = torch.from_numpy(rng.standard_normal((3, 6, 3, 3, 3)) * 2 + 1)
    training = mode != "eval"
    try:
        want = _run(theirs, how, training, x, xs)
    except RuntimeError as exc:
        with pytest.raises(type(exc)):
            _run(ours, how, training, x, xs)
        return
    _compare(want, _run(ours, how, training, x, xs), f"{how} {mode}")


def test_replace_all_batch_norm_modules_on_a_converted_model(rng):
    ours = bt.convert(_net())
    func.replace_all_batch_norm_modules_(ours)
    for layer in (ours[1], ours[5]):
        assert type(layer).__module__ == "bnfast.torch"
        assert layer.running_mean is None and not layer.track_running_stats
    xs = torch.from_numpy(rng.standard_normal((3, 6, 3, 3, 3)))
    params = dict(ours.named_parameters())
    got = func.vmap(lambda x: func.functional_call(ours, params, (x,)))(xs)
    want = torch.stack([ours(x) for x in xs])
    _compare(want.detach(), got.detach(), "vmap after replace_all_batch_norm_modules_")


def test_grad_of_the_functional_and_its_second_order(rng):
    x = torch.from_numpy(rng.standard_normal((5, 3, 4)) + 2)
    w = torch.from_numpy(rng.uniform(0.5, 2, 3))

    def loss(fn, x, w):
        return fn(x, None, None, w, None, training=True).pow(3).sum()

    for argnums in (0, 1):
        # grad of grad needs a scalar: the second order of the sum of the first gradient
        results = [func.grad(lambda x, w, fn=fn: func.grad(
            lambda x, w: loss(fn, x, w), argnums=argnums)(x, w).sum(), argnums=argnums)(x, w)
            for fn in (torch.nn.functional.batch_norm, bt.batch_norm)]
        _compare(results[0], results[1], f"grad of grad, argnums={argnums}")
