"""The step scratch of ``Serial.loss_and_grad`` on NumPy: same results, nothing returned aliases it."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from egdnp import nn
from egdnp.nn import _cpu, _scratch
from egdnp.nn import layers as L

R = np.random.default_rng(5)


def _small_cnn():
    # conv -> relu -> pool -> conv -> pool: every Numba kernel that allocates from the scratch
    return nn.serial(("conv1", L.Conv2d(1, 4, 3, padding=1)), L.ReLU(), L.MaxPool2d(2),
                     ("conv2", L.Conv2d(4, 3, 3, padding=1)), L.MaxPool2d(2))


def _cnn_data(batch=6):
    x = R.standard_normal((batch, 1, 8, 8)).astype(np.float32)
    y = R.integers(0, 10, batch)
    return x, y


def _grads_without_scratch(model, params, x, y, **kw):
    """The reference: the same computation with plain allocations (forward + loss + backward by hand)."""
    out, cache = model.forward(params, x, train=True)
    loss = kw.get("loss", "cross_entropy")
    if loss == "cross_entropy":
        value, dout = nn.softmax_cross_entropy_with_grad(out, y, "mean")
    else:
        value, dout = loss(out, y)
    _, grads = model.backward(params, cache, dout, need_dx=False)
    return value, grads


def _scratch_block():
    return getattr(_scratch._THREAD, "scratch", None).block


def test_repeated_steps_are_bitwise_equal_and_do_not_overwrite_earlier_results():
    model = nn.cnn()
    params = model.init(0)
    x, y = _cnn_data(8)
    x = np.repeat(np.repeat(x, 4, axis=2), 4, axis=3)[:, :, :28, :28].copy()  # the CNN's 28x28 input
    nn.release_step_scratch()
    loss1, grads1 = model.loss_and_grad(params, x, y)  # first step: plain allocations, sizes recorded
    kept = {k: v.copy() for k, v in grads1.items()}
    loss2, grads2 = model.loss_and_grad(params, x, y)  # from the scratch block
    assert _scratch_block().size > 0
    loss3, grads3 = model.loss_and_grad(params, x * 0.5, y)  # reuses (overwrites) the block
    ref_loss, ref_grads = _grads_without_scratch(model, params, x, y)
    assert float(loss1) == float(loss2) == float(ref_loss)
    for k in kept:
        np.testing.assert_array_equal(grads1[k], kept[k])  # untouched by the later steps
        np.testing.assert_array_equal(grads2[k], ref_grads[k])
        for g in (grads1[k], grads2[k], grads3[k]):
            assert not np.may_share_memory(g, _scratch_block())


def test_output_living_in_the_scratch_is_copied_before_a_loss_callable_keeps_it():
    model = _small_cnn()
    params = model.init(1)
    seen = []

    def loss(out, y):
        seen.append(out)  # a callable that keeps the output (logging, say)
        flat = out.reshape(out.shape[0], -1)
        value, dflat = nn.softmax_cross_entropy_with_grad(flat, y, "mean")
        return value, dflat.reshape(out.shape)

    x, y = _cnn_data()
    y = y % 12
    model.loss_and_grad(params, x, y, loss=loss)
    first = seen[0].copy()
    _, grads = model.loss_and_grad(params, x, y, loss=loss)
    model.loss_and_grad(params, -x, y, loss=loss)
    np.testing.assert_array_equal(seen[0], first)
    np.testing.assert_array_equal(seen[1], first)
    for out in seen:
        assert not np.may_share_memory(out, _scratch_block())
    ref_loss, ref_grads = _grads_without_scratch(model, params, x, y, loss=loss)
    for k, g in ref_grads.items():
        np.testing.assert_array_equal(grads[k], g)


def test_a_nested_step_inside_the_loss_allocates_normally():
    outer, inner = _small_cnn(), nn.cnn()
    p_outer, p_inner = outer.init(2), inner.init(3)
    x, y = _cnn_data()
    xi = R.standard_normal((4, 1, 28, 28)).astype(np.float32)
    yi = R.integers(0, 10, 4)
    inner_results = []

    def loss(out, y):
        inner_results.append(inner.loss_and_grad(p_inner, xi, yi))
        flat = out.reshape(out.shape[0], -1)
        value, dflat = nn.softmax_cross_entropy_with_grad(flat, y, "mean")
        return value, dflat.reshape(out.shape)

    for _ in range(3):
        _, grads = outer.loss_and_grad(p_outer, x, y % 12, loss=loss)
    ref_inner = _grads_without_scratch(inner, p_inner, xi, yi)[1]
    ref_outer = _grads_without_scratch(outer, p_outer, x, y % 12, loss=loss)[1]
    for _, g in inner_results:
        for k in ref_inner:
            np.testing.assert_array_equal(g[k], ref_inner[k])
    for k in ref_outer:
        np.testing.assert_array_equal(grads[k], ref_outer[k])


def test_threads_have_their_own_scratch():
    model = nn.cnn()
    params = model.init(4)
    batches = [(R.standard_normal((4, 1, 28, 28)).astype(np.float32), R.integers(0, 10, 4)) for _ in range(2)]
    expected = [_grads_without_scratch(model, params, x, y)[1] for x, y in batches]
    results = [[], []]

    def work(t):
        for _ in range(4):
            results[t].append(model.loss_and_grad(params, *batches[t])[1])

    threads = [threading.Thread(target=work, args=(t,)) for t in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for t in range(2):
        assert len(results[t]) == 4
        for grads in results[t]:
            for k in expected[t]:
                np.testing.assert_array_equal(grads[k], expected[t][k])


def test_an_error_inside_the_step_leaves_the_scratch_inactive():
    model = nn.cnn()
    params = model.init(0)
    x = R.standard_normal((2, 1, 28, 28)).astype(np.float32)
    with pytest.raises(ValueError, match="label"):
        model.loss_and_grad(params, x, np.array([0, 99]))
    assert not getattr(_scratch._THREAD, "active", False)
    assert not np.may_share_memory(_cpu.im2col(x, (3, 3), (1, 1), (1, 1), (1, 1), (28, 28)), _scratch_block())


def test_release_step_scratch_frees_the_block_and_the_next_step_regrows_it():
    model = nn.cnn()
    params = model.init(0)
    x = R.standard_normal((4, 1, 28, 28)).astype(np.float32)
    y = R.integers(0, 10, 4)
    model.loss_and_grad(params, x, y)
    model.loss_and_grad(params, x, y)
    assert _scratch_block().size > 0
    nn.release_step_scratch()
    assert _scratch_block().size == 0
    _, grads = model.loss_and_grad(params, x, y)
    model.loss_and_grad(params, x, y)
    assert _scratch_block().size > 0
    ref = _grads_without_scratch(model, params, x, y)[1]
    for k in ref:
        np.testing.assert_array_equal(grads[k], ref[k])


def test_scratch_hands_out_aligned_disjoint_views_and_falls_back_when_full():
    s = _scratch.StepScratch()
    s.reset()
    a = s.empty((3, 5), np.float32)  # block empty: plain allocation, size recorded
    assert not np.may_share_memory(a, s.block)
    s.empty((7,), np.float64)
    assert s.wanted == 64 + 64
    s.reset()
    assert s.block.size == 128
    a = s.empty((3, 5), np.float32)
    b = s.empty((7,), np.float64)
    c = s.empty((2,), np.int32)  # past the block: plain allocation
    assert a.ctypes.data % 64 == 0 and b.ctypes.data % 64 == 0
    assert np.may_share_memory(a, s.block) and np.may_share_memory(b, s.block)
    assert not np.may_share_memory(a, b) and not np.may_share_memory(c, s.block)
    assert a.shape == (3, 5) and a.dtype == np.float32 and b.dtype == np.float64


def test_loss_and_grad_reports_a_non_array_input_like_forward():
    model = nn.mlp((4, 3, 2))
    with pytest.raises(TypeError, match="x must be an array, got list"):
        model.loss_and_grad(model.init(0), [[1.0] * 4], np.array([0]))


def test_the_scratch_and_the_memory_policy_load_no_numba():
    """``import egdnp`` / ``egdnp.nn`` stay Numba-free: the step scratch lives in nn/_scratch.py (plain
    NumPy), ``keep_freed_memory`` in _backend (re-exported by egdnp and egdnp.nn)."""
    import subprocess
    import sys

    code = (
        "import sys, egdnp, egdnp.nn\n"
        "from egdnp.nn import _scratch\n"
        "assert egdnp.keep_freed_memory is egdnp.nn.keep_freed_memory\n"
        "assert egdnp.nn.release_step_scratch is _scratch.release_step_scratch\n"
        "print('numba' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
