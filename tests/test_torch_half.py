"""bnfast.torch with float16 and bfloat16 tensors: straight into the half kernels with no
copy, both layouts and directions, and a bfloat16 autocast training step against PyTorch's."""
import copy

import pytest

torch = pytest.importorskip("torch")
bt = pytest.importorskip("bnfast.torch")
from bnfast import _kernels  # noqa: E402
from bnfast.torch import _arrays  # noqa: E402
from _torch_helpers import kernels_only  # noqa: E402,F401  (autouse: bnfast's kernels only)

HALVES = [pytest.param(torch.float16, id="f16"), pytest.param(torch.bfloat16, id="bf16")]
FORMATS = [pytest.param(torch.contiguous_format, id="NCHW"),
           pytest.param(torch.channels_last, id="channels_last")]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", HALVES)
def test_half_tensors_reach_the_kernels_without_a_copy(dtype, fmt, monkeypatch):
    x = torch.randn(4, 6, 5, 7).to(dtype).contiguous(memory_format=fmt)
    held, array, axis = _arrays.to_kernel(x)
    assert held.data_ptr() == x.data_ptr() and array.ctypes.data == x.data_ptr()
    assert array.itemsize == 2 and axis == (1 if fmt is torch.contiguous_format else -1)
    seen = []
    real = _kernels.forward_train

    def spy(xa, *args):
        result = real(xa, *args)
        seen.append((xa.ctypes.data, result is not None))
        return result

    monkeypatch.setattr(_kernels, "forward_train", spy)
    layer = bt.BatchNorm2d(6)
    xg = x.clone().requires_grad_()
    y = layer(xg)
    y.backward(torch.ones_like(y))
    assert seen == [(xg.data_ptr(), True)]  # the input's own memory, the kernel's fast path
    assert y.dtype == xg.grad.dtype == dtype
    assert y.is_contiguous(memory_format=fmt) and xg.grad.is_contiguous(memory_format=fmt)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", HALVES)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_half_forward_and_backward_match_float64(seed, dtype, fmt, training):
    """y and dx within one rounding to the half type of the float64 answer on the same
    values, plus the float32 pass's error (design §1, "Half precision"): 5 float32 roundings
    of the terms, and the statistics' float64 rounding, below 1e-12 here."""
    gen = torch.Generator().manual_seed(seed % 2**63)
    x = (torch.randn(6, 4, 5, 5, generator=gen) * 2 + 1).to(dtype).contiguous(memory_format=fmt)
    dy = torch.randn(x.shape, generator=gen).to(dtype)
    layer = bt.BatchNorm2d(4).train(training)
    with torch.no_grad():
        layer.weight.uniform_(0.5, 2.0, generator=gen)
        layer.bias.uniform_(-1, 1, generator=gen)
        layer.running_var.uniform_(0.5, 2.0, generator=gen)
    ref = copy.deepcopy(layer).double()
    ref.__class__ = torch.nn.BatchNorm2d  # PyTorch's own layer, in float64
    xg, x64 = x.clone().requires_grad_(), x.double().requires_grad_()
    y, y64 = layer(xg), ref(x64)
    y.backward(dy)
    y64.backward(dy.double())
    u = 2.0 ** -11 if dtype == torch.float16 else 2.0 ** -8
    u32 = 2.0 ** -24
    beta = layer.bias.detach().double().abs().max()
    for got, want, terms in ((y, y64, y64.abs() + beta),
                             (xg.grad, x64.grad, None)):
        got, want = got.double(), want.detach()
        if terms is None:  # dx: its terms are bounded by |gamma| invstd |dy| (2 + xhat^2)
            g = layer.weight.detach().double().abs().max()
            inv = 1 / torch.sqrt((layer.running_var if not training else
                                  x.double().var((0, 2, 3), unbiased=False)).double() + 1e-5)
            terms = g * inv.max() * dy.double().abs().max() * (2 + 16)
        bound = u * want.abs() + 5 * u32 * terms * (1 + u) + 1e-12 * terms
        assert torch.all((got - want).abs() <= bound), float(((got - want).abs() - bound).max())


def _resnet_block_model(width=8):
    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = torch.nn.Conv2d(width, width, 3, padding=1, bias=False)
            self.bn1 = torch.nn.BatchNorm2d(width)
            self.conv2 = torch.nn.Conv2d(width, width, 3, padding=1, bias=False)
            self.bn2 = torch.nn.BatchNorm2d(width)

        def forward(self, x):
            out = torch.relu(self.bn1(self.conv1(x)))
            return torch.relu(self.bn2(self.conv2(out)) + x)

    return torch.nn.Sequential(
        torch.nn.Conv2d(3, width, 3, padding=1, bias=False), torch.nn.BatchNorm2d(width),
        torch.nn.ReLU(), Block(), Block(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
        torch.nn.Linear(width, 10))


def test_bfloat16_autocast_training_step_matches_pytorch(seed):
    """Under torch.autocast("cpu", bfloat16) the convolutions run in bfloat16 and batch norm
    receives bfloat16 input with float32 parameters, as PyTorch's own layer does. One SGD
    step of a small ResNet-style model: the two losses differ by the bfloat16 rounding of
    the batch norms' outputs (one rounding each side, on different float32 values) carried
    through the following layers, which average it: within 2 * 2^-8 relative (measured at
    most 3e-4 over 40 seeds); a wrong statistic or a dropped scale errs by far more."""
    torch.manual_seed(seed % 2**31)
    theirs = _resnet_block_model()
    ours = bt.convert(copy.deepcopy(theirs))
    x = torch.randn(16, 3, 16, 16)
    target = torch.randint(0, 10, (16,))
    losses = []
    for model in (ours, theirs):
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        step_losses = []
        for _ in range(2):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = torch.nn.functional.cross_entropy(model(x), target)
            opt.zero_grad()
            loss.backward()
            opt.step()
            step_losses.append(float(loss.detach()))
        losses.append(step_losses)
        assert all(p.grad is not None and p.grad.dtype == torch.float32
                   for p in model.parameters())
    for a, b in zip(*losses):
        assert abs(a - b) <= 2 * 2.0 ** -8 * abs(b), losses


@pytest.mark.parametrize("dtype", HALVES)
def test_half_handoff_thresholds(dtype, monkeypatch, request):
    """With the hand-off on, half-precision calls follow the half thresholds (1 thread):
    a training call of 1M values is bnfast's kernel, half of it PyTorch's, and an eval call
    of 1M values PyTorch's; the kernel spy sees exactly the calls bnfast computes, and the
    result matches PyTorch's layer either way."""
    bt.set_torch_handoff(True)  # the kernels_only fixture restores it
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the 1-thread table: the smaller sizes
    request.addfinalizer(lambda: torch.set_num_threads(threads))
    calls = []
    for name in ("forward_train", "forward_infer"):
        real = getattr(_kernels, name)
        monkeypatch.setattr(_kernels, name,
                            lambda *a, _real=real, _name=name: calls.append(_name) or _real(*a))
    big = torch.randn(bt._policy._CROSSOVERS[(True, False)][(True, "NC")] // 8, 8).to(dtype)
    small = big[: big.shape[0] // 2]
    for x, training, want in ((big, True, ["forward_train"]), (small, True, []),
                              (big, False, [])):
        calls.clear()
        layer = bt.BatchNorm1d(8).to(dtype).train(training)
        with torch.no_grad():
            y = layer(x)
        assert calls == want, (x.shape, training)
        ref = torch.nn.BatchNorm1d(8).to(dtype).train(training)
        with torch.no_grad():
            want_y = ref(x)
        tol = 8 * float(torch.finfo(dtype).eps)  # a few roundings to the half type
        assert torch.allclose(y.float(), want_y.float(), rtol=tol, atol=tol)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["f32", "f16"])
def test_crossover_follows_dtype_and_threads(dtype, threads, request):
    """The hand-off reads the table of the input's precision and PyTorch's thread count:
    a call exactly at the threshold is bnfast's, one value less is PyTorch's."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    request.addfinalizer(lambda: torch.set_num_threads(before))
    bt.set_torch_handoff(True)  # the kernels_only fixture restores it
    table = bt._policy._CROSSOVERS[(dtype is torch.float16, threads > 1)]
    x = torch.empty(0, 4, dtype=dtype)
    for training in (True, False):
        n = table[(training, "NC")]
        assert bt._policy.crossover(x, training) == n
        assert not bt._policy.torch_is_faster(torch.empty(n // 4, 4, dtype=dtype), training)
        assert bt._policy.torch_is_faster(torch.empty(n // 4 - 1, 4, dtype=dtype), training)
