"""The step's formerly serial parts as parallel kernels: dropout's counter-based mask and the
optimizer steps. Each must equal its NumPy formula bit for bit and give the same bits for any Numba
thread count; dropout's stream must be seeded, resumable and unbiased."""
from __future__ import annotations

import copy

import numba
import numpy as np
import pytest

import fastcnn
from fastcnn import kernels as nb
from fastcnn import reference as ref
from fastcnn.kernels import optim as kopt
from fastcnn.layers import Dropout
from fastcnn.reference.dropout import dropout_draws

DTYPES = [np.float32, np.float64]


@pytest.fixture
def restore_threads():
    before = numba.get_num_threads()
    yield
    numba.set_num_threads(before)


def _thread_counts():
    return sorted({1, numba.config.NUMBA_NUM_THREADS})


def test_dropout_draws_are_splitmix64_words_in_16_bit_lanes():
    """The documented stream, computed with Python integers: word c = splitmix64(key + (c+1)*golden)."""
    def splitmix(z):
        m = (1 << 64) - 1
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9 & m
        z = (z ^ (z >> 27)) * 0x94D049BB133111EB & m
        return z ^ (z >> 31)
    key = 0x0123456789ABCDEF
    words = [splitmix((key + (c + 1) * 0x9E3779B97F4A7C15) & ((1 << 64) - 1)) for c in range(3)]
    expected = [(w >> (16 * lane)) & 0xFFFF for w in words for lane in range(4)][:10]
    assert dropout_draws(key, 10).tolist() == expected


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(128, 3136), (3, 5), (1, 7, 3, 2), (1,)])
def test_dropout_kernel_equals_reference_for_any_thread_count(shape, dtype, restore_threads):
    rng = np.random.default_rng(3)
    x = rng.standard_normal(shape).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    key, threshold = int(rng.integers(0, 2**63)), 32768
    y_ref, mask_ref = ref.dropout_forward(x, key, threshold)
    dx_ref = ref.dropout_backward(dy, mask_ref)
    for threads in _thread_counts():
        numba.set_num_threads(threads)
        y, mask = nb.dropout_forward(x, key, threshold)
        assert y.dtype == mask.dtype == dtype and y.shape == mask.shape == shape
        assert np.array_equal(y, y_ref) and np.array_equal(mask, mask_ref), threads
        assert np.array_equal(nb.dropout_backward(dy, mask), dx_ref), threads


def test_dropout_kernel_bit_identical_at_two_threads_in_a_child(tmp_path):
    """One core here may mean one Numba thread: the two-thread run then happens in a child process."""
    import subprocess
    import sys
    code = ("import numpy as np, numba; from fastcnn import kernels as nb; from fastcnn import reference as ref\n"
            "assert numba.config.NUMBA_NUM_THREADS == 2\n"
            "x = np.random.default_rng(0).standard_normal((64, 999)).astype(np.float32)\n"
            "y, m = nb.dropout_forward(x, 12345, 20000); y2, m2 = ref.dropout_forward(x, 12345, 20000)\n"
            "assert np.array_equal(y, y2) and np.array_equal(m, m2)\n")
    import os
    proc = subprocess.run([sys.executable, "-c", code], env={**os.environ, "NUMBA_NUM_THREADS": "2"},
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_dropout_mask_drops_the_quantised_share_and_keeps_the_mean():
    x = np.ones((400, 1000), np.float32)
    y, mask = ref.dropout_forward(x, 99, 16384)             # p = 1/4
    dropped = float((mask == 0).mean())
    assert abs(dropped - 0.25) < 0.005, dropped
    assert abs(float(y.mean()) - 1.0) < 0.01
    assert set(np.unique(mask).tolist()) == {0.0, np.float32(65536 / (65536 - 16384))}


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_dropout_layer_is_seeded_and_resumes_from_its_generator_state(backend):
    x = np.random.default_rng(0).standard_normal((8, 50)).astype(np.float32)
    a = Dropout(0.5, rng=np.random.default_rng(7), backend=backend)
    first = a.forward(x, training=True)
    state = copy.deepcopy(a.rng.bit_generator.state)          # what a checkpoint saves
    second = a.forward(x, training=True)
    b = Dropout(0.5, rng=np.random.default_rng(0), backend=backend)
    b.rng.bit_generator.state = state
    assert np.array_equal(b.forward(x, training=True), second)
    assert not np.array_equal(first, second)
    c = Dropout(0.5, rng=np.random.default_rng(7), backend=backend)
    assert np.array_equal(c.forward(x, training=True), first)


def test_dropout_layer_backends_agree_bitwise():
    x = np.random.default_rng(0).standard_normal((16, 300)).astype(np.float32)
    outs = {}
    for backend in ("numpy", "numba"):
        layer = Dropout(0.3, rng=np.random.default_rng(5), backend=backend)
        outs[backend] = (layer.forward(x, training=True), layer.backward(x))
    assert all(np.array_equal(a, b) for a, b in zip(outs["numpy"], outs["numba"]))


def _model_and_grads(dtype, backend, build=fastcnn.mnist_cnn):
    model = build(seed=0, dtype=dtype, backend=backend)
    rng = np.random.default_rng(1)
    for _, _, g in model.named_parameters():
        g[...] = rng.standard_normal(g.shape).astype(dtype)
    return model


@pytest.mark.parametrize("build", [pytest.param(fastcnn.mnist_cnn, id="6-params"),
                                   pytest.param(fastcnn.lenet5, id="10-params")])   # one kernel call, two
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("make", [
    pytest.param(lambda m: fastcnn.AdamW(m, lr=2e-3, weight_decay=1e-2), id="adamw"),
    pytest.param(lambda m: fastcnn.AdamW(m, lr=1e-3, weight_decay=0.0), id="adamw-no-decay"),
    pytest.param(lambda m: fastcnn.SGD(m, lr=0.05, momentum=0.9, weight_decay=5e-4), id="sgd"),
    pytest.param(lambda m: fastcnn.SGD(m, lr=0.05, momentum=0.0), id="sgd-plain"),
])
def test_optimizer_kernels_equal_the_numpy_formulas_for_any_thread_count(make, dtype, build, restore_threads):
    """Three steps on the Numba backend (parallel kernels, all parameters per call) and on the NumPy
    backend (the formulas in fastcnn/optim.py): parameters and state equal bit for bit, at 1 and N
    threads."""
    assert len(list(build().named_parameters())) in (kopt.SLOTS - 2, kopt.SLOTS + 2)
    ref_model = _model_and_grads(dtype, "numpy", build)
    ref_opt = make(ref_model)
    for _ in range(3):
        ref_opt.step()
    for threads in _thread_counts():
        numba.set_num_threads(threads)
        model = _model_and_grads(dtype, "numba", build)
        opt = make(model)
        for _ in range(3):
            opt.step()
        for (name, w, _), (_, w_ref, _) in zip(model.named_parameters(), ref_model.named_parameters()):
            assert np.array_equal(w, w_ref), (name, threads)
        for key, a in opt.state_dict().items():
            assert np.array_equal(a, ref_opt.state_dict()[key]), (key, threads)


class _LargeParameters:
    """Stands in for a model: parameters large enough for the kernels to split them over threads
    (more than two parts' worth in all, a split inside one), in two groups of SLOTS."""

    def __init__(self, backend):
        rng = np.random.default_rng(2)
        sizes = [3, 2 * kopt.ELEMENTS_PER_PART + 5, 1, 7, kopt.ELEMENTS_PER_PART, 2, 9, 1, 4, 1000]
        self.backend_name = backend
        self.params = [(f"p{i}", rng.standard_normal(n).astype(np.float32), rng.standard_normal(n).astype(np.float32))
                       for i, n in enumerate(sizes)]

    def named_parameters(self):
        return iter(self.params)


@pytest.mark.parametrize("make", [lambda m: fastcnn.AdamW(m, lr=2e-3), lambda m: fastcnn.SGD(m, lr=0.05)],
                         ids=["adamw", "sgd"])
def test_optimizer_kernels_split_over_threads_give_the_formulas_bits(make, restore_threads):
    ref_model = _LargeParameters("numpy")
    ref_opt = make(ref_model)
    for _ in range(2):
        ref_opt.step()
    for threads in _thread_counts():
        numba.set_num_threads(threads)
        model = _LargeParameters("numba")
        opt = make(model)
        for _ in range(2):
            opt.step()
        for (name, w, _), (_, w_ref, _) in zip(model.named_parameters(), ref_model.named_parameters()):
            assert np.array_equal(w, w_ref), (name, threads)


def test_optimizer_kernels_reject_mixed_dtypes_and_mismatched_shapes():
    w = np.zeros(4, np.float32)
    with pytest.raises(TypeError, match="float32 or float64"):
        kopt.sgd_step([w], [np.zeros(4, np.float64)], [np.zeros(4, np.float32)], 0.1, 0.9, 0.0)
    with pytest.raises(ValueError, match="shaped like their parameter"):
        kopt.sgd_step([w], [np.zeros(5, np.float32)], [np.zeros(4, np.float32)], 0.1, 0.9, 0.0)
    with pytest.raises(ValueError, match="C-contiguous"):
        kopt.sgd_step([np.zeros(8, np.float32)[::2]], [w], [np.zeros(4, np.float32)], 0.1, 0.9, 0.0)


def test_optimizer_falls_back_to_the_formulas_when_the_kernels_cannot_take_the_state():
    """A non-contiguous state array (set by hand) takes the NumPy formulas: same bits, no error."""
    ref_model, model = _model_and_grads(np.float32, "numpy"), _model_and_grads(np.float32, "numba")
    ref_opt, opt = fastcnn.SGD(ref_model, lr=0.1), fastcnn.SGD(model, lr=0.1)
    name = next(iter(opt.velocity))
    opt.velocity[name] = np.asfortranarray(np.zeros_like(opt.velocity[name]))
    assert opt.velocity[name].ndim < 2 or not opt.velocity[name].flags.c_contiguous
    ref_opt.step()
    opt.step()
    for (_, w, _), (_, w_ref, _) in zip(model.named_parameters(), ref_model.named_parameters()):
        assert np.array_equal(w, w_ref)


@pytest.mark.parametrize("make", [lambda m: fastcnn.AdamW(m, lr=2e-3), lambda m: fastcnn.SGD(m, lr=0.05)],
                         ids=["adamw", "sgd"])
def test_optimizer_kernels_follow_a_parameter_replaced_between_steps(make):
    """The kernels' groups are built once and kept while the same arrays are in place: a parameter
    replaced by a new array (a user's surgery) is the one the next step updates, as on NumPy."""
    ref_model, model = _model_and_grads(np.float32, "numpy"), _model_and_grads(np.float32, "numba")
    ref_opt, opt = make(ref_model), make(model)
    ref_opt.step()
    opt.step()
    groups = opt._groups[-1]
    opt.step()
    assert opt._groups[-1] is groups                               # kept while nothing changed
    ref_opt.step()
    for m in (ref_model, model):
        layer = next(layer for layer in m.layers if "weight" in layer.params)
        layer.params["weight"] = layer.params["weight"] + 1        # a new array, not an in-place change
    ref_opt.step()
    opt.step()
    assert opt._groups[-1] is not groups
    for (name, w, _), (_, w_ref, _) in zip(model.named_parameters(), ref_model.named_parameters()):
        assert np.array_equal(w, w_ref), name
    groups = opt._groups[-1]
    for o in (ref_opt, opt):                                       # a state array replaced by a new one
        state = o.m if hasattr(o, "m") else o.velocity
        name = next(iter(state))
        state[name] = state[name] * 0.5
    ref_opt.step()
    opt.step()
    assert opt._groups[-1] is not groups
    for (name, w, _), (_, w_ref, _) in zip(model.named_parameters(), ref_model.named_parameters()):
        assert np.array_equal(w, w_ref), name


def test_a_copied_optimizer_updates_its_own_model():
    """A deep copy of (model, optimizer) after a step (as a throwaway copy for a trial step is made)
    updates the copy's parameters, not the original's, and the same as the original does."""
    model = _model_and_grads(np.float32, "numba")
    opt = fastcnn.AdamW(model, lr=1e-2)
    opt.step()
    model2, opt2 = copy.deepcopy((model, opt))
    before = [w.copy() for _, w, _ in model.named_parameters()]
    opt2.step()
    assert all(np.array_equal(w, b) for (_, w, _), b in zip(model.named_parameters(), before))
    opt.step()
    for (_, w, _), (_, w2, _) in zip(model.named_parameters(), model2.named_parameters()):
        assert np.array_equal(w, w2) and not np.shares_memory(w, w2)


@pytest.mark.parametrize("bits", [np.random.PCG64, np.random.PCG64DXSM, np.random.Philox, np.random.SFC64,
                                  np.random.MT19937])
def test_dropout_keys_are_the_generators_integers_draws(bits):
    """Each training forward's key is rng.integers(0, 2**64, dtype=uint64), with every bit generator
    (a 64-bit one's raw output is that draw): the same keys, and the generator left in the same state."""
    layer, twin = Dropout(0.5, rng=np.random.Generator(bits(11))), np.random.Generator(bits(11))
    x = np.ones((4, 8), np.float32)
    for _ in range(3):
        _, expected = ref.dropout_forward(x, int(twin.integers(0, 2**64, dtype=np.uint64)), layer._threshold)
        layer.forward(x, training=True)
        assert np.array_equal(layer._mask, expected)
    assert layer.rng.integers(0, 2**62) == twin.integers(0, 2**62)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N, F_in, F_out", [(128, 3136, 10), (5, 300, 7), (1, 3, 1), (9, 257, 2)])
def test_linear_kernels_agree_with_blas_and_are_bit_identical_for_any_thread_count(N, F_in, F_out, dtype,
                                                                                    restore_threads):
    from fastcnn.testing import assert_agree
    rng = np.random.default_rng(N + F_in)
    x = rng.standard_normal((N, F_in)).astype(dtype)
    w = rng.standard_normal((F_out, F_in)).astype(dtype)
    b = rng.standard_normal(F_out).astype(dtype)
    dy = rng.standard_normal((N, F_out)).astype(dtype)
    expected = (ref.linear_forward(x, w, b), *ref.linear_backward(dy, x, w))
    results = []
    for threads in _thread_counts():
        numba.set_num_threads(threads)
        got = (nb.linear_forward(x, w, b), *nb.linear_backward(dy, x, w))
        for name, g, e in zip(("y", "dx", "dw", "db"), got, expected):
            assert g.dtype == dtype and g.shape == e.shape, name
            assert_agree(g, e, name)
        results.append(got)
    assert all(np.array_equal(a, c) for a, c in zip(results[0], results[-1]))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N, F_in, F_out", [(128, 3136, 10), (5, 513, 7), (1, 3, 1), (9, 1030, 4), (6, 4, 3)])
def test_dropout_linear_kernels_are_the_two_ops_bit_for_bit_for_any_thread_count(N, F_in, F_out, dtype,
                                                                                  restore_threads):
    """dropout_linear_forward / _backward on Numba: exactly dropout_forward then linear_forward (and
    linear_backward then dropout_backward) on Numba, at every thread count; the mask is the
    reference's, the rest agrees with it. Row counts that do and do not fill the kernel's row groups,
    features across its blocks, element indices whose draws straddle rows."""
    from fastcnn.testing import assert_agree
    rng = np.random.default_rng(N * F_in)
    x = rng.standard_normal((N, F_in)).astype(dtype)
    w = rng.standard_normal((F_out, F_in)).astype(dtype)
    b = rng.standard_normal(F_out).astype(dtype)
    dy = rng.standard_normal((N, F_out)).astype(dtype)
    key, threshold = int(rng.integers(0, 2**64, dtype=np.uint64)), 21000
    ry, rxd, rmask = ref.dropout_linear_forward(x, key, threshold, w, b)
    rdx, rdw, rdb = ref.dropout_linear_backward(dy, rxd, rmask, w)
    results = []
    for threads in _thread_counts():
        numba.set_num_threads(threads)
        y, xd, mask = nb.dropout_linear_forward(x, key, threshold, w, b)
        dx, dw, db = nb.dropout_linear_backward(dy, xd, mask, w)
        xd2, mask2 = nb.dropout_forward(x, key, threshold)
        dx2, dw2, db2 = nb.linear_backward(dy, xd2, w)
        for got, want in ((y, nb.linear_forward(xd2, w, b)), (xd, xd2), (mask, mask2),
                          (dx, nb.dropout_backward(dx2, mask2)), (dw, dw2), (db, db2)):
            assert got.dtype == dtype and np.array_equal(got, want)
        assert np.array_equal(mask, rmask) and np.array_equal(xd, rxd)
        for name, g, e in (("y", y, ry), ("dx", dx, rdx), ("dw", dw, rdw), ("db", db, rdb)):
            assert_agree(g, e, name)
        results.append((y, xd, mask, dx, dw, db))
    assert all(np.array_equal(a, c) for a, c in zip(results[0], results[-1]))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(16, 32, 28, 28), (3, 5, 4, 7), (2, 1, 1, 1)])
def test_batchnorm_kernels_agree_with_numpy_and_are_bit_identical_for_any_thread_count(shape, dtype,
                                                                                       restore_threads):
    from fastcnn.layers import BatchNorm2D
    from fastcnn.testing import assert_agree
    rng = np.random.default_rng(sum(shape))
    x = (3 * rng.standard_normal(shape) + 1).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)

    weight = rng.standard_normal(shape[1]).astype(dtype)

    def run(backend):
        layer = BatchNorm2D(shape[1], dtype=dtype, backend=backend)
        layer.params["weight"][...] = weight
        y = layer.forward(x, training=True)
        dx = layer.backward(dy)
        return [y, dx, layer.grads["weight"], layer.grads["bias"], layer.buffers["running_mean"],
                layer.buffers["running_var"]]

    expected = run("numpy")
    results = []
    for threads in _thread_counts():
        numba.set_num_threads(threads)
        got = run("numba")
        for name, g, e in zip(("y", "dx", "dweight", "dbias", "running_mean", "running_var"), got, expected):
            assert g.dtype == dtype and g.shape == e.shape, name
            assert_agree(g, e, name)
        results.append(got)
    assert all(np.array_equal(a, c) for a, c in zip(results[0], results[-1]))


@pytest.mark.parametrize("dtype", DTYPES)
def test_all_finite_kernel_finds_every_kind_of_non_finite_value_anywhere(dtype, restore_threads):
    """The input check reads bit patterns in parallel blocks: a NaN, +inf or -inf at the first and
    last element and on either side of a block boundary is found at any thread count; the largest
    finite value, subnormals and -0.0 are finite; views and odd sizes as the reference."""
    from fastcnn.kernels.batch import BLOCK
    info = np.finfo(dtype)
    finite = np.array([info.max, -info.max, info.tiny / 4, -0.0, 0.0, 1.0], dtype)
    n = 3 * BLOCK + 5
    for threads in _thread_counts():
        numba.set_num_threads(threads)
        x = np.resize(finite, n).astype(dtype)
        assert nb.all_finite(x) and ref.all_finite(x)
        for bad in (np.nan, np.inf, -np.inf):
            for i in (0, BLOCK - 1, BLOCK, 2 * BLOCK + 1, n - 1):
                y = x.copy()
                y[i] = bad
                assert not nb.all_finite(y), (bad, i, threads)
                assert not nb.all_finite(y.reshape(1, n, 1)[:, ::-1]), (bad, i, threads)      # a view
    for shape in [(1,), (7, 3), (2, 1, 5, 5), (0, 3)]:
        x = np.random.default_rng(1).standard_normal(shape).astype(dtype)
        assert nb.all_finite(x) == ref.all_finite(x) is True
    assert nb.all_finite(np.array([np.nan], np.float16)) is False       # other floats: the reference


@pytest.mark.parametrize("dtype", DTYPES)
def test_count_correct_kernel_takes_np_argmax_choice(dtype):
    """Ties go to the first largest logit and a NaN counts as the largest, as np.argmax chooses;
    any integer labels."""
    rng = np.random.default_rng(3)
    z = rng.standard_normal((67, 10)).astype(dtype)
    z[:5] = 1.0                                               # all tied: class 0
    z[5, 3] = z[5, 7] = 9.0                                   # tied maxima: the first
    z[6, 2], z[6, 8] = np.nan, np.nan                         # NaNs: the first
    z[7, 0] = np.nan
    z[8] = -np.inf
    z[9, 4] = np.inf
    for labels in (rng.integers(0, 10, 67), np.argmax(z, axis=1), np.full(67, 7)):
        for lab in (labels.astype(np.int64), labels.astype(np.uint8)):
            assert nb.count_correct(z, lab) == ref.count_correct(z, lab)
    assert nb.count_correct(z, np.argmax(z, axis=1)) == 67
    assert nb.count_correct(z[:, :1], np.zeros(67, np.int64)) == 67
    assert nb.count_correct(z[::2, ::3], np.zeros(34, np.int64)) == ref.count_correct(z[::2, ::3], np.zeros(34))
