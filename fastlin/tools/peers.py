"""The same training step in fastlin and in its peers, for measuring.

Used by ``python -m fastlin compare`` and the ``bench/`` suite; never imported
by ``import fastlin``, and each peer imports its library only when built.

Every backend runs *the same* step on the same float32 data: the forward pass
``Y = X·Wᵀ + b``, the mean squared error, its gradient (analytic, or the
library's autodiff where that is how the library is used) and a plain SGD
update ``p -= lr·g``.  ``step()`` returns the loss as a Python float (as
``fastlin.Linear.step`` does), so device work is finished when it returns.
``fit(steps)`` runs that many steps and returns every loss as a numpy array
(as ``fastlin.Linear.fit`` does in its ``History``).

Backends (``BACKENDS`` keeps them in display order):

fastlin-cpu-1t, fastlin-cpu
    ``Linear.step`` / ``Linear.fit`` with one Numba thread, and with all.
fastlin-cuda
    The same API with ``device="cuda"`` and the data already on the GPU.
numpy
    Vectorised numpy: two BLAS products and in-place updates.
torch, torch-cuda
    Idiomatic eager PyTorch: ``nn.Linear``, ``F.mse_loss``, ``backward()``,
    ``optim.SGD``.
torch-cuda-graph
    The same step captured once as a CUDA graph and replayed.
jax
    ``jax.jit`` of a ``value_and_grad`` step; ``fit`` is one jitted
    ``lax.fori_loop`` that keeps each loss.
"""

from __future__ import annotations

import contextlib
import importlib.util
from dataclasses import dataclass, field

import numpy as np

LR = 0.01


@dataclass
class Problem:
    """One benchmark problem: N rows, D inputs, O outputs, float32, random data."""

    n_rows: int
    n_in: int
    n_out: int
    seed: int = 0
    lr: float = LR
    _data: tuple | None = field(default=None, repr=False, compare=False)

    @property
    def shape(self):
        return (self.n_rows, self.n_in, self.n_out)

    def data(self):
        """``(X, T, W0, b0)``: standard normal X and T (never zeros), torch-style W0, b0."""
        if self._data is None:
            rng = np.random.default_rng(self.seed)
            X = rng.standard_normal((self.n_rows, self.n_in), dtype=np.float32)
            T = rng.standard_normal((self.n_rows, self.n_out), dtype=np.float32)
            bound = 1.0 / np.sqrt(self.n_in)
            W0 = rng.uniform(-bound, bound, (self.n_out, self.n_in)).astype(np.float32)
            b0 = rng.uniform(-bound, bound, self.n_out).astype(np.float32)
            self._data = (X, T, W0, b0)
        return self._data

    def drop(self):
        """Forget the data (frees its memory)."""
        self._data = None


class Backend:
    """Base class: a backend set up for one problem."""

    name = "?"
    label = "?"
    device = "cpu"
    fastlin = False

    @staticmethod
    def unavailable():
        """None when this backend can run here, else the reason it cannot."""

    def context(self):
        """Settings to hold while this backend is timed (thread counts)."""
        return contextlib.nullcontext()

    def step(self):  # pragma: no cover - abstract
        raise NotImplementedError

    def fit(self, steps):  # pragma: no cover - abstract
        raise NotImplementedError

    def close(self):
        """Release device memory and the like."""


def _missing(module, extra):
    if importlib.util.find_spec(module) is None:
        return f"{module} is not installed (pip install {extra})"
    return None


# --------------------------------------------------------------------------
# fastlin
# --------------------------------------------------------------------------
class _NumbaThreads:
    def __init__(self, n):
        self.n = n

    def __enter__(self):
        import numba

        self.saved = numba.get_num_threads()
        numba.set_num_threads(self.n or numba.config.NUMBA_NUM_THREADS)

    def __exit__(self, *exc):
        import numba

        numba.set_num_threads(self.saved)


class FastlinCPU(Backend):
    fastlin = True
    threads: int | None = None  # all

    def __init__(self, problem):
        import fastlin

        X, T, W0, b0 = problem.data()
        self.X, self.T = X, T
        self.model = fastlin.Linear.from_weights(W0, b0)
        self.opt = fastlin.SGD(lr=problem.lr)

    def context(self):
        return _NumbaThreads(self.threads)

    def step(self):
        return self.model.step(self.X, self.T, self.opt)

    def fit(self, steps):
        return self.model.fit(self.X, self.T, steps=steps, opt=self.opt).loss


class FastlinCPU1(FastlinCPU):
    name = "fastlin-cpu-1t"
    label = "fastlin CPU, 1 thread"
    threads = 1


class FastlinCPUAll(FastlinCPU):
    name = "fastlin-cpu"
    label = "fastlin CPU, all threads"


class FastlinCUDA(Backend):
    name = "fastlin-cuda"
    label = "fastlin CUDA"
    device = "cuda"
    fastlin = True

    @staticmethod
    def unavailable():
        from fastlin._dispatch import cuda_unavailable_reason

        reason = cuda_unavailable_reason()
        if reason is None and importlib.util.find_spec("fastlin.backends.cuda_ops") is None:
            reason = "this fastlin has no CUDA backend (fastlin/backends/cuda_ops.py)"
        if reason is None:
            from numba.cuda import config

            if config.ENABLE_CUDASIM:
                reason = "numba's CUDA simulator is on (NUMBA_ENABLE_CUDASIM=1): there is no GPU to time"
        return reason

    def __init__(self, problem):
        from numba import cuda

        import fastlin

        X, T, W0, b0 = problem.data()
        self.X, self.T = cuda.to_device(X), cuda.to_device(T)
        self.model = fastlin.Linear.from_weights(W0, b0, device="cuda")
        self.opt = fastlin.SGD(lr=problem.lr)

    def step(self):
        return self.model.step(self.X, self.T, self.opt)

    def fit(self, steps):
        return np.asarray(self.model.fit(self.X, self.T, steps=steps, opt=self.opt).loss)

    def close(self):
        self.X = self.T = self.model = None


# --------------------------------------------------------------------------
# numpy
# --------------------------------------------------------------------------
class Numpy(Backend):
    name = "numpy"
    label = "numpy"

    def __init__(self, problem):
        X, T, W0, b0 = problem.data()
        self.X, self.T = X, T
        self.W, self.b = W0.copy(), b0.copy()
        self.lr = np.float32(problem.lr)
        self.scale = np.float32(2.0 / (X.shape[0] * W0.shape[0]))
        self.inv_n = 1.0 / (X.shape[0] * W0.shape[0])

    def step(self):
        X, W, b = self.X, self.W, self.b
        R = X @ W.T  # (N, O): numpy has no way around this temporary
        R += b
        R -= self.T
        loss = float(np.vdot(R, R)) * self.inv_n
        R *= self.scale  # dL/dY
        W -= self.lr * (R.T @ X)
        b -= self.lr * R.sum(axis=0)
        return loss

    def fit(self, steps):
        losses = np.empty(steps)
        for i in range(steps):
            losses[i] = self.step()
        return losses


# --------------------------------------------------------------------------
# torch
# --------------------------------------------------------------------------
class Torch(Backend):
    name = "torch"
    label = "torch eager (CPU)"
    torch_device = "cpu"

    @staticmethod
    def unavailable():
        return _missing("torch", "torch")

    def __init__(self, problem):
        import torch

        X, T, W0, b0 = problem.data()
        dev = self.torch_device
        self.torch = torch
        self.X = torch.from_numpy(X).to(dev)
        self.T = torch.from_numpy(T).to(dev)
        self.model = torch.nn.Linear(W0.shape[1], W0.shape[0]).to(dev)
        with torch.no_grad():
            self.model.weight.copy_(torch.from_numpy(W0))
            self.model.bias.copy_(torch.from_numpy(b0))
        self.opt = torch.optim.SGD(self.model.parameters(), lr=problem.lr)
        self.mse = torch.nn.functional.mse_loss

    def _loss_tensor(self):
        self.opt.zero_grad(set_to_none=True)
        loss = self.mse(self.model(self.X), self.T)
        loss.backward()
        self.opt.step()
        return loss

    def step(self):
        return self._loss_tensor().item()

    def fit(self, steps):
        # Keep the losses on the device and copy once, as a careful user would.
        losses = self.torch.empty(steps, device=self.torch_device)
        for i in range(steps):
            losses[i] = self._loss_tensor().detach()
        return losses.cpu().numpy()

    def close(self):
        self.X = self.T = self.model = self.opt = None


def _no_torch_cuda():
    reason = _missing("torch", "torch")
    if reason:
        return reason
    import torch

    if not torch.cuda.is_available():
        return "torch sees no CUDA GPU"
    return None


class TorchCUDA(Torch):
    name = "torch-cuda"
    label = "torch eager (CUDA)"
    device = "cuda"
    torch_device = "cuda"

    unavailable = staticmethod(_no_torch_cuda)


class TorchCUDAGraph(Torch):
    """The step captured as one CUDA graph (torch's "whole network capture")."""

    name = "torch-cuda-graph"
    label = "torch CUDA graph"
    device = "cuda"
    torch_device = "cuda"

    unavailable = staticmethod(_no_torch_cuda)

    def __init__(self, problem):
        super().__init__(problem)
        torch = self.torch
        # Warm up on a side stream (allocates the grads), as torch's docs ask.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                self._loss_tensor()
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        self.opt.zero_grad(set_to_none=True)
        with torch.cuda.graph(self.graph):
            self.static_loss = self.mse(self.model(self.X), self.T)
            self.static_loss.backward()
            self.opt.step()

    def step(self):
        self.graph.replay()
        return self.static_loss.item()

    def fit(self, steps):
        losses = self.torch.empty(steps, device="cuda")
        for i in range(steps):
            self.graph.replay()
            losses[i] = self.static_loss.detach()
        return losses.cpu().numpy()

    def close(self):
        self.graph = self.static_loss = None
        super().close()


# --------------------------------------------------------------------------
# JAX
# --------------------------------------------------------------------------
_jax_fns = None


def _jax_functions():
    global _jax_fns
    if _jax_fns is None:
        import jax
        import jax.numpy as jnp
        from jax import lax

        def loss_fn(W, b, X, T):
            R = X @ W.T + b - T
            return jnp.mean(R * R)

        grad_fn = jax.value_and_grad(loss_fn, argnums=(0, 1))

        def update(W, b, X, T, lr):
            loss, (gW, gb) = grad_fn(W, b, X, T)
            return W - lr * gW, b - lr * gb, loss

        step = jax.jit(update, donate_argnums=(0, 1))

        def fit(W, b, X, T, lr, steps):
            def body(i, carry):
                W, b, losses = carry
                W, b, loss = update(W, b, X, T, lr)
                return W, b, losses.at[i].set(loss)

            return lax.fori_loop(0, steps, body, (W, b, jnp.zeros(steps, X.dtype)))

        fit = jax.jit(fit, static_argnums=5, donate_argnums=(0, 1))
        _jax_fns = (jax, step, fit)
    return _jax_fns


class Jax(Backend):
    name = "jax"
    label = "JAX jit (CPU)"

    @staticmethod
    def unavailable():
        return _missing("jax", "jax")

    def __init__(self, problem):
        jax, self._step, self._fit = _jax_functions()
        X, T, W0, b0 = problem.data()
        dev = jax.devices("cpu")[0]
        self.X, self.T = jax.device_put(X, dev), jax.device_put(T, dev)
        self.W, self.b = jax.device_put(W0, dev), jax.device_put(b0, dev)
        self.lr = np.float32(problem.lr)

    def step(self):
        self.W, self.b, loss = self._step(self.W, self.b, self.X, self.T, self.lr)
        return float(loss)

    def fit(self, steps):
        self.W, self.b, losses = self._fit(self.W, self.b, self.X, self.T, self.lr, steps)
        return np.asarray(losses)

    def close(self):
        self.X = self.T = self.W = self.b = None


BACKENDS = {
    cls.name: cls for cls in (FastlinCPU1, FastlinCPUAll, FastlinCUDA, Numpy, Torch, TorchCUDA, TorchCUDAGraph, Jax)
}
PEERS = tuple(name for name, cls in BACKENDS.items() if not cls.fastlin)


def unavailable(name):
    """None when backend ``name`` can run here, else why not (one line)."""
    reason = BACKENDS[name].unavailable()
    return None if reason is None else " ".join(str(reason).split())


def build(name, problem):
    """Set backend ``name`` up for ``problem`` (raises if it cannot run here)."""
    cls = BACKENDS[name]
    reason = unavailable(name)
    if reason:
        raise RuntimeError(f"{name} cannot run here: {reason}")
    return cls(problem)
