"""Manual-gradient training steps against PyTorch eager, and the conv/pool kernels.

Targets (issue 3), as ratios egdnp / torch measured in the same run, float32,
one training step = forward + loss + backward (all parameter gradients, no
optimiser update), same shapes, same machine:

* MLP 784-256-10 (tanh), batch 128: ratio <= 1.0;
* CNN (conv 1->16 3x3 p1, ReLU, maxpool 2, conv 16->32 3x3 p1, ReLU,
  maxpool 2, linear 1568->10), batch 64: ratio <= 2.0 (issue 18: <= 1.0).

Threads: each side runs with its defaults on all cores -- torch's intra-op
OpenMP pool (``torch.get_num_threads()``) in every op; egdnp OpenBLAS's pool in
the GEMMs and one thread in its Numba kernels (they split the batch only from
``egdnp._threads.NN_SPLIT_FROM`` output elements).

``track_ratio_to_torch`` reports the ratio directly: each side timed in a
fresh process of its own (best of 15 blocks of consecutive steps), because
torch's OpenMP pool and Numba's/OpenBLAS's pools slow each other when they
share a process.  ``TrainingStep.time_step`` and ``TorchTrainingStep.time_step``
give the same comparison in asv's own timings.  The torch side exists only
where torch is installed (NotImplementedError -> skipped otherwise); for the
CuPy backend torch runs on CUDA when it can.
"""

from __future__ import annotations

import numpy as np

from egdnp import _backend, nn
from egdnp.nn import functional as F

from ._common import BACKENDS, isolated_time, namespace_or_skip

SHAPES = {
    "mlp": {"batch": 128, "input": (784,), "classes": 10},
    "cnn": {"batch": 64, "input": (1, 28, 28), "classes": 10},
    # a 4-4-2 tanh MLP on 2 examples: almost no arithmetic, so its step time is
    # the library's own per-step cost (validation, dispatch, Python) -- StepOverhead
    "overhead": {"batch": 2, "input": (4,), "classes": 2},
}
# consecutive steps per timed block in track_ratio_to_torch (blocks of >= ~0.5 ms)
STEPS_PER_BLOCK = {"mlp": 50, "cnn": 10, "overhead": 2000}


def _egdnp_model(name):
    if name == "overhead":
        return nn.mlp((4, 4, 2), activation="tanh")
    return nn.mlp((784, 256, 10), activation="tanh") if name == "mlp" else nn.cnn()


def _torch_or_skip():
    try:
        import torch
    except ImportError:
        raise NotImplementedError("torch is not installed") from None
    return torch


def _torch_model(torch, name):
    tnn = torch.nn
    if name == "overhead":
        return tnn.Sequential(tnn.Linear(4, 4), tnn.Tanh(), tnn.Linear(4, 2))
    if name == "mlp":
        return tnn.Sequential(tnn.Linear(784, 256), tnn.Tanh(), tnn.Linear(256, 10))
    return tnn.Sequential(
        tnn.Conv2d(1, 16, 3, padding=1), tnn.ReLU(), tnn.MaxPool2d(2),
        tnn.Conv2d(16, 32, 3, padding=1), tnn.ReLU(), tnn.MaxPool2d(2),
        tnn.Flatten(), tnn.Linear(32 * 7 * 7, 10),
    )


def _data(model):
    shape = SHAPES[model]
    host = np.random.default_rng(0)
    x = host.standard_normal((shape["batch"],) + shape["input"]).astype(np.float32)
    y = host.integers(0, shape["classes"], shape["batch"])
    return x, y


class TrainingStep:
    """One float32 forward + backward of the MLP (batch 128) or the CNN (batch 64), egdnp.

    torch is never imported here: its OpenMP pool would share the cores with
    Numba's and OpenBLAS's (see :func:`._common.isolated_time`).
    """

    params = (["mlp", "cnn"], BACKENDS)
    param_names = ["model", "backend"]
    timeout = 300

    def setup(self, model, backend):
        self.xp = namespace_or_skip(backend)
        x, y = _data(model)
        self.model = _egdnp_model(model)
        self.params = self.model.init(0, xp=self.xp)
        self.x = _backend.to_device(x, self.xp)
        self.y = _backend.to_device(y, self.xp)
        self.sync = lambda: _backend.synchronize(self.xp)
        self.step = lambda: self.model.loss_and_grad(self.params, self.x, self.y)
        self.step()  # compile / cache the Numba kernels outside the timing
        self.sync()

    def time_step(self, model, backend):
        self.step()
        self.sync()

    def track_ratio_to_torch(self, model, backend):
        """egdnp time / torch time (target: <= 1.0 for the MLP, <= 2.0 for the CNN; issue 18: <= 1.0).

        Each side is timed in a process of its own (best of 15 blocks of
        consecutive steps), egdnp with :class:`TrainingStep`, torch with
        :class:`TorchTrainingStep`.
        """
        _torch_or_skip()
        steps = STEPS_PER_BLOCK[model]
        ours = isolated_time("benchmarks.bench_nn", type(self).__name__, (model, backend), "step", number=steps)
        theirs = isolated_time("benchmarks.bench_nn", "TorchTrainingStep", (model, backend), "step", number=steps)
        return ours / theirs

    track_ratio_to_torch.unit = "x"


class TrainingStepKeepFreedMemory(TrainingStep):
    """:class:`TrainingStep` after ``egdnp.nn.keep_freed_memory()`` (glibc keeps freed blocks).

    A separate benchmark so that asv runs it in its own process: the malloc
    setting is process-wide.  Since ``loss_and_grad`` serves its temporaries
    from the per-thread step scratch, the default step has no page faults
    either; this class shows that the process-wide setting adds nothing.
    """

    def setup(self, model, backend):
        if not nn.keep_freed_memory():
            raise NotImplementedError("not glibc: mallopt is unavailable")
        super().setup(model, backend)


class StepOverhead(TrainingStep):
    """:class:`TrainingStep` of a 4-4-2 tanh MLP on 2 examples: the per-step cost of the library itself.

    The arithmetic is negligible, so ``time_step`` is what egdnp adds to every
    step (parameter and input checks, namespace dispatch, caches, the Numba
    calls' entry); ``track_ratio_to_torch`` sets it against torch eager's own
    per-step cost.  No target: it tracks regressions between versions.
    """

    params = (["overhead"], BACKENDS)


class TorchTrainingStep:
    """The same step in PyTorch eager (CPU; CUDA for the cupy row where torch has it)."""

    params = (["mlp", "cnn"], BACKENDS)
    param_names = ["model", "backend"]
    timeout = 300

    def setup(self, model, backend):
        namespace_or_skip(backend)
        torch = _torch_or_skip()
        device = "cpu"
        if backend == "cupy":
            if not torch.cuda.is_available():
                raise NotImplementedError("torch has no CUDA here")
            device = "cuda"
        x, y = _data(model)
        tmodel = _torch_model(torch, model).to(device)
        tx, ty = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
        loss_fn = torch.nn.CrossEntropyLoss()

        def step():
            tmodel.zero_grad(set_to_none=True)
            loss_fn(tmodel(tx), ty).backward()
            if device == "cuda":
                torch.cuda.synchronize()

        self.step = step
        self.step()

    def time_step(self, model, backend):
        self.step()


class PopulationForward:
    """Forward-only scoring of a population of inputs, (pop, batch, ...) in one call (EGGROLL/EGD style)."""

    params = (["mlp", "cnn"], BACKENDS, [16])
    param_names = ["model", "backend", "pop"]
    timeout = 300

    def setup(self, model, backend, pop):
        self.xp = namespace_or_skip(backend)
        shape = SHAPES[model]
        x = np.random.default_rng(0).standard_normal((pop, shape["batch"]) + shape["input"]).astype(np.float32)
        self.model = _egdnp_model(model)
        self.params = self.model.init(0, xp=self.xp)
        self.x = _backend.to_device(x, self.xp)
        self.model.apply(self.params, self.x)
        _backend.synchronize(self.xp)

    def time_apply(self, model, backend, pop):
        self.model.apply(self.params, self.x)
        _backend.synchronize(self.xp)


class ConvKernels:
    """im2col / col2im / max-pool: Numba fast path against the array-API oracle path (NumPy)."""

    params = (["numba", "array_api"],)
    param_names = ["impl"]

    def setup(self, impl):
        host = np.random.default_rng(0)
        self.x = host.standard_normal((64, 16, 14, 14)).astype(np.float32)
        self.x_pool = host.standard_normal((64, 16, 28, 28)).astype(np.float32)
        self.cols, _ = F.im2col(self.x, 3, 3, padding=1, transposed=True, impl=impl)
        self.w = host.standard_normal((32, 16, 3, 3)).astype(np.float32)
        out, self.conv_cache = F.conv2d_forward(self.x, self.w, None, 1, 1, impl=impl)
        self.dout = np.ones_like(out)
        pooled, self.pool_cache = F.max_pool2d_forward(self.x_pool, 2, impl=impl)
        self.dpool = np.ones_like(pooled)

    def time_im2col(self, impl):
        F.im2col(self.x, 3, 3, padding=1, transposed=True, impl=impl)

    def time_col2im(self, impl):
        F.col2im(self.cols, self.x.shape, 3, 3, padding=1, transposed=True, impl=impl)

    def time_conv2d_forward(self, impl):
        F.conv2d_forward(self.x, self.w, None, 1, 1, impl=impl)

    def time_conv2d_backward(self, impl):
        F.conv2d_backward(self.dout, self.conv_cache)

    def time_max_pool_forward(self, impl):
        F.max_pool2d_forward(self.x_pool, 2, impl=impl)

    def time_max_pool_backward(self, impl):
        F.max_pool2d_backward(self.dpool, self.pool_cache)
