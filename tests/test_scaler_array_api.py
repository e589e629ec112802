"""BatchNormScaler and the array API (``sklearn.set_config(array_api_dispatch=True)``):
PyTorch CPU tensors and array-api-strict arrays in, the same namespace and device out, the
kernels reading CPU memory in place (DLPack); the plain array-API path for other devices.

scikit-learn's array API needs SCIPY_ARRAY_API=1 before scipy is imported. Unless it is set
already, the tests of this file run in a subprocess with it set (one test here reports them);
``SCIPY_ARRAY_API=1 pytest tests/test_scaler_array_api.py`` runs them one by one.
"""
import os

import numpy as np
import pytest

from _helpers import assert_bits_equal, run_pytest, stat_rtol, unit_roundoff

pytest.importorskip("sklearn")

IN_CHILD = os.environ.get("SCIPY_ARRAY_API") == "1"


if not IN_CHILD:
    def test_array_api_tests_in_a_subprocess():
        counts, done = run_pytest(["-rfEs", os.path.abspath(__file__)],
                                  env={"SCIPY_ARRAY_API": "1"})
        print(f"array API tests with SCIPY_ARRAY_API=1: {counts}")
        tail = done.stdout[-6000:] + done.stderr[-3000:]
        assert counts["failed"] == counts["errors"] == 0, f"{counts}\n{tail}"
        assert done.returncode in (0, 5), tail  # 5: every test skipped (no namespace)
else:
    import sklearn

    import bnfast
    from bnfast import _scaler_xp

    F64 = np.float64

    def _namespaces():
        """(name, make(ndarray) -> array of the namespace, device) of those installed."""
        out = []
        try:
            import torch
        except ImportError:
            pass
        else:
            out.append(pytest.param(lambda a: torch.asarray(a), "torch-cpu", id="torch"))
        try:
            import array_api_strict as xps
        except ImportError:
            pass
        else:
            for dev in ("CPU_DEVICE", "device1"):
                out.append(pytest.param(
                    lambda a, dev=dev: xps.asarray(a, device=xps.Device(dev)), dev,
                    id=f"array_api_strict-{dev}"))
        return out

    NAMESPACES = _namespaces()

    @pytest.fixture(autouse=True)
    def _dispatch():
        with sklearn.config_context(array_api_dispatch=True):
            yield

    def _data(rng, n=300, p=5, dtype=F64, nan=True):
        X = rng.standard_normal((n, p)) * rng.uniform(0.5, 4, p) + rng.uniform(-10, 10, p)
        X[:, 2] = 3.0  # constant: scale_ 1 (eps=0)
        if nan:
            X[rng.random(X.shape) < 0.05] = np.nan
        return X.astype(dtype)

    def _same_place(a, like):
        from sklearn.utils._array_api import get_namespace_and_device
        xp_a, _, dev_a = get_namespace_and_device(a)
        xp_b, _, dev_b = get_namespace_and_device(like)
        assert xp_a.__name__ == xp_b.__name__ and dev_a == dev_b, (xp_a, dev_a, xp_b, dev_b)

    def _host(a):
        return np.asarray(_scaler_xp.to_host(a))

    @pytest.mark.parametrize("make, device", NAMESPACES)
    @pytest.mark.parametrize("dtype", [np.float32, F64])
    @pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
    def test_cpu_namespaces_match_numpy_bit_for_bit(rng, make, device, dtype, weighted):
        """The kernels run on the array's own memory: every attribute and output has the
        bits of the NumPy run, in the input's namespace and on its device."""
        X = _data(rng, dtype=dtype)
        w = rng.uniform(0, 2, len(X)) if weighted else None
        Xa = make(X)
        wa = None if w is None else make(w)
        ours = bnfast.BatchNormScaler(eps=0).fit(Xa, sample_weight=wa)
        ref = bnfast.BatchNormScaler(eps=0).fit(X, sample_weight=w)
        for attr in ("mean_", "var_", "scale_", "n_samples_seen_"):
            got = getattr(ours, attr)
            _same_place(got, Xa)
            assert_bits_equal(_host(got), np.asarray(getattr(ref, attr)), attr)
        Y = ours.transform(Xa)
        _same_place(Y, Xa)
        assert_bits_equal(_host(Y), ref.transform(X), "transform")
        back = ours.inverse_transform(Y)
        _same_place(back, Xa)
        assert_bits_equal(_host(back), ref.inverse_transform(ref.transform(X)),
                          "inverse_transform")
        ft = bnfast.BatchNormScaler(eps=0).fit_transform(make(X), sample_weight=wa)
        assert_bits_equal(_host(ft), ref.transform(X), "fit_transform")
        assert_bits_equal(_host(Xa), X, "the input (copy=True)")

    @pytest.mark.parametrize("make, device", NAMESPACES)
    def test_partial_fit_and_momentum(rng, make, device):
        X = _data(rng)
        for momentum in (None, 0.3):
            ours, ref = (bnfast.BatchNormScaler(eps=0, momentum=momentum) for _ in range(2))
            for a, b in ((0, 100), (100, 300)):
                ours.partial_fit(make(X[a:b]))
                ref.partial_fit(X[a:b])
            for attr in ("mean_", "var_", "scale_", "n_samples_seen_"):
                assert_bits_equal(_host(getattr(ours, attr)), np.asarray(getattr(ref, attr)),
                                  attr)

    def test_torch_memory_is_read_and_written_in_place(rng, monkeypatch):
        """fit reads the tensor's own buffer (DLPack, no copy); transform(copy=False) writes
        it and returns the tensor itself."""
        torch = pytest.importorskip("torch")
        X = torch.asarray(_data(rng, nan=False))
        seen = []
        real = bnfast._scaler_stats.moments_state

        def spy(x, *args, **kwargs):
            seen.append(np.shares_memory(x, X.numpy()))
            return real(x, *args, **kwargs)

        monkeypatch.setattr(bnfast._scaler_stats, "moments_state", spy)
        scaler = bnfast.BatchNormScaler(eps=0).fit(X)
        assert seen == [True]
        want = scaler.transform(X)
        assert not torch.equal(want, X)
        out = scaler.transform(X, copy=False)
        assert out is X and torch.equal(X, want)

    @pytest.mark.parametrize("make, device", NAMESPACES)
    @pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
    def test_plain_array_api_path(rng, monkeypatch, make, device, weighted):
        """What arrays off the CPU take (forced here): the statistics in the namespace itself
        (corrected two-pass), within stat_rtol of the kernels' (both float64 sums of n terms
        over a shift within the spread); outputs in the namespace, one rounding apart."""
        monkeypatch.setattr(_scaler_xp, "host_view", lambda X: None)
        X = _data(rng)
        w = rng.uniform(0, 2, len(X)) if weighted else None
        ours = bnfast.BatchNormScaler(eps=0).fit(make(X), sample_weight=None if w is None
                                                 else make(w))
        ours.partial_fit(make(X[:50]), sample_weight=None if w is None else make(w[:50]))
        ref = bnfast.BatchNormScaler(eps=0).fit(X, sample_weight=w)
        ref.partial_fit(X[:50], sample_weight=None if w is None else w[:50])
        big = np.nanmax(np.abs(X), axis=0)
        rtol = 2 * stat_rtol(len(X) + 3)
        np.testing.assert_allclose(_host(ours.n_samples_seen_), ref.n_samples_seen_,
                                   rtol=rtol)
        assert np.all(np.abs(_host(ours.mean_) - ref.mean_) <= rtol * big)
        assert np.all(np.abs(_host(ours.var_) - ref.var_) <= rtol * 4 * big ** 2)
        assert _host(ours.scale_)[2] == ref.scale_[2] == 1.0
        Xa = make(X)
        Y = ours.transform(Xa)
        _same_place(Y, Xa)
        y_ref = ref.transform(X)
        # statistics' error over scale_, and the two or three roundings of each pass
        tol = (rtol * 8 * big ** 2 / ref.scale_ ** 2 + 8 * unit_roundoff()) * np.nanmax(
            np.abs(y_ref), axis=0)
        assert np.all((np.abs(_host(Y) - y_ref) <= tol) | np.isnan(y_ref))
        back = ours.inverse_transform(Y)
        _same_place(back, Xa)
        np.testing.assert_allclose(_host(back), X, rtol=1e-12, atol=1e-12 * big.max())

    def test_a_tensor_that_requires_grad_takes_the_plain_path(rng):
        torch = pytest.importorskip("torch")
        X = _data(rng, nan=False)
        T = torch.asarray(X).requires_grad_(True)
        assert _scaler_xp.host_view(T) is None  # DLPack refuses it
        scaler = bnfast.BatchNormScaler(eps=0).fit(T.detach())
        Y = scaler.transform(T.detach())
        ref = bnfast.BatchNormScaler(eps=0).fit(X)
        np.testing.assert_allclose(Y.numpy(), ref.transform(X), rtol=0, atol=1e-12)

    def test_fitted_namespace_must_match(rng):
        torch = pytest.importorskip("torch")
        X = _data(rng, nan=False)
        scaler = bnfast.BatchNormScaler().fit(torch.asarray(X))
        with pytest.raises(ValueError, match="must use the same namespace"):
            scaler.transform(X)

    def test_without_dispatch_tensors_become_numpy(rng):
        torch = pytest.importorskip("torch")
        X = _data(rng, nan=False)
        with sklearn.config_context(array_api_dispatch=False):
            scaler = bnfast.BatchNormScaler().fit(torch.asarray(X))
            assert isinstance(scaler.mean_, np.ndarray)
            assert isinstance(scaler.transform(torch.asarray(X)), np.ndarray)

    def test_tag_says_array_api_support():
        assert bnfast.BatchNormScaler().__sklearn_tags__().array_api_support

    def _array_api_checks():
        """scikit-learn's array-API estimator checks (those check_estimator yields for an
        estimator whose tag says array_api_support), for two scalers."""
        try:
            from sklearn.utils.estimator_checks import (
                _get_check_estimator_ids,
                _yield_array_api_checks,
            )
        except ImportError:  # private: another scikit-learn version
            return []
        out = []
        for est in (bnfast.BatchNormScaler(), bnfast.BatchNormScaler(eps=0, with_mean=False)):
            for check in _yield_array_api_checks(est):
                out.append(pytest.param(est, check, id=f"{_get_check_estimator_ids(est)}-"
                                                       f"{_get_check_estimator_ids(check)}"))
        return out

    @pytest.mark.parametrize("estimator, check", _array_api_checks())
    def test_scikit_learn_array_api_checks(estimator, check):
        with sklearn.config_context(array_api_dispatch=False):  # the checks turn it on
            check(type(estimator).__name__, estimator)
