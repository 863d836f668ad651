"""GPU benchmarks: fastlin's CUDA backend against PyTorch (eager, and a
replayed CUDA graph) in the same run, on the same device-resident float32
data (torch tensors handed to fastlin without a copy).

Groups (``benchmark.group``), one row per library:

``gpu-step:<case>``
    One training step through the public API: ``model.step(X, T, opt)``
    returns the loss as a float, so the device has finished when the clock
    stops.  torch: the eager step + ``.item()``; the captured graph replayed
    + ``.item()``.
``gpu-loop:<case>``
    ``LOOP`` steps queued back to back, one synchronisation at the end, time
    per step: fastlin's ``fit_steps`` (one fused launch a step, or the whole
    loop in one launch for small problems) without the Python API around it;
    torch: the graph replayed ``LOOP`` times, then ``torch.cuda.synchronize``.
    This is the number the issue's "≤ 90 µs a tall step" target is about.
``gpu-fit:<case>``
    ``fit(steps=FIT_STEPS)`` keeping every loss: fastlin's API (one launch for
    the seed's size) against torch eager / graph loops that keep the losses
    on the device and copy them once.

The wide case (the tiled plan) runs twice for fastlin: ``fastlin-cuda`` is
the shipped default (its two products through cuBLAS when CuPy imports,
``extra_info["cublas"]`` says which ran) and ``fastlin-cuda-tiles`` forces
the numba-only register-blocked tiles (``cuda_config.USE_CUPY = False``), so
one GPU run measures both.

``extra_info`` of every benchmark: case, shape, library, steps per call,
bytes and flops per step (an ideal step reads X and T once), the HBM read
bandwidth measured in this run over the case's own X (best of a plain read
kernel and ``torch.sum``), the time that read limit allows
(``limit_s``), ``fraction_of_limit`` = limit / measured, the SGEMM rate
(torch, TF32 off) and the step's first loss (a correctness guard: fastlin's
must match torch's).  ``bench/gpu_table.py`` turns the JSON into the short
table ``bench/gpu_check.sh`` prints last.

Run: ``python -m pytest bench/bench_gpu.py --benchmark-only
--benchmark-json out.json`` on a machine with a GPU.  With
``NUMBA_ENABLE_CUDASIM=1 FASTLIN_BENCH_GPU_TINY=1`` the file runs on tiny
shapes in numba's simulator: a smoke test of this code, not a measurement.
"""

from __future__ import annotations

import functools
import gc
import importlib.util
import math
import os
import time

import numpy as np
import pytest

try:  # kernels must name the module ``cuda`` at module level: the simulator swaps that global
    from numba import cuda
except ImportError:  # no numba-cuda: every benchmark here skips, saying why
    cuda = None

TINY = os.environ.get("FASTLIN_BENCH_GPU_TINY", "") == "1"
LR = 0.01
LOOP = 3 if TINY else 20
FIT_STEPS = 5 if TINY else 100
ROUNDS_SECONDS = 0.2 if TINY else 1.5  # timing budget of one benchmark

# shared/BENCH.md's cases, N × D → O, float32.
CASES = {
    "seed": (1, 5, 2),
    "small": (64, 32, 4),
    "tall": (1_000_000, 64, 1),
    "tall16": (1_000_000, 64, 16),
    "wide": (16_384, 1_024, 256),
    "huge_tall": (16_000_000, 256, 1),
}
if TINY:
    CASES = {name: (min(n, 37), min(d, 9), min(o, 3)) for name, (n, d, o) in CASES.items()}
    CASES["wide"] = (37, 9, 33)  # more outputs than the rows plan takes: still the tiled plan
FIT_CASES = ("seed", "small")
# The cases that take the tiled plan, where cuBLAS (CuPy) and the numba tiles
# are both measured.
TILED_CASES = ("wide",)


def _unavailable():
    from fastlin import _dispatch

    reason = _dispatch.cuda_unavailable_reason()
    if reason is None and _dispatch.cuda_simulated() and not TINY:
        reason = "numba's CUDA simulator has no GPU to time (FASTLIN_BENCH_GPU_TINY=1 smoke-tests this file there)"
    return reason


_REASON = _unavailable()
pytestmark = pytest.mark.skipif(_REASON is not None, reason=f"GPU benchmarks: {_REASON}")


@functools.lru_cache(maxsize=1)
def _torch():
    """torch when it can use the GPU, else None."""
    if importlib.util.find_spec("torch") is None:
        return None
    import torch

    return torch if torch.cuda.is_available() else None


def _sync():
    cuda.synchronize()
    torch = _torch()
    if torch is not None:
        torch.cuda.synchronize()


def step_bytes(n, d, o):
    """An ideal step: X and T read once, W and b read and written (float32)."""
    return 4 * (n * d + n * o + 2 * (o * d + o))


def step_flops(n, d, o):
    """The two products X·Wᵀ and Rᵀ·X."""
    return 4 * n * d * o


# --------------------------------------------------------------------------
# data on the device, shared by every library
# --------------------------------------------------------------------------
class GpuProblem:
    """X (N, D), T (N, O) float32 on the device, W0, b0 on the host.

    With torch the data is drawn on the GPU (huge_tall's X is 16 GB) and
    fastlin gets zero-copy numba views of the same memory.
    """

    def __init__(self, case):
        self.case = case
        self.n, self.d, self.o = CASES[case]
        rng = np.random.default_rng(0)
        bound = 1.0 / math.sqrt(self.d)
        self.W0 = rng.uniform(-bound, bound, (self.o, self.d)).astype(np.float32)
        self.b0 = rng.uniform(-bound, bound, self.o).astype(np.float32)
        torch = _torch()
        if torch is not None:
            g = torch.Generator(device="cuda").manual_seed(0)
            self.tX = torch.randn(self.n, self.d, device="cuda", generator=g)
            self.tT = torch.randn(self.n, self.o, device="cuda", generator=g)
            self.X, self.T = cuda.as_cuda_array(self.tX), cuda.as_cuda_array(self.tT)
        else:
            if self.n * self.d > 50_000_000:
                pytest.skip(
                    f"{case}: drawing {self.n * self.d * 4 / 1e9:.0f} GB on the host is too slow; needs torch with CUDA"
                )
            self.tX = self.tT = None
            self.X = cuda.to_device(rng.standard_normal((self.n, self.d)).astype(np.float32))
            self.T = cuda.to_device(rng.standard_normal((self.n, self.o)).astype(np.float32))
        _sync()
        self.read_Bps, self.read_method = _read_bandwidth(self)

    def drop(self):
        self.X = self.T = self.tX = self.tT = None


class _Problems:
    def __init__(self):
        self.current = None

    def get(self, case):
        if self.current is None or self.current.case != case:
            if self.current is not None:
                self.current.drop()
            self.current = None
            gc.collect()
            torch = _torch()
            if torch is not None:
                torch.cuda.empty_cache()
            self.current = GpuProblem(case)
        return self.current


@pytest.fixture(scope="module")
def gpu_problems():
    problems = _Problems()
    yield problems
    if problems.current is not None:
        problems.current.drop()


# --------------------------------------------------------------------------
# hardware limits, measured in this run
# --------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _read_kernel():
    @cuda.jit
    def read_all(a, out):
        # Every element is loaded once (coalesced, grid-stride); the store
        # that never happens keeps the loads alive.
        s = np.float32(0.0)
        for k in range(cuda.grid(1), a.shape[0], cuda.gridsize(1)):
            s += a[k]
        if s == np.float32(-1.25e-37):
            out[0] = s

    return read_all


def _best_seconds(fn, repeats):
    fn()
    _sync()
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync()
        best = min(best, time.perf_counter() - t0)
    return best


def _read_bandwidth(problem):
    """Bytes per second of the best plain read of the case's X."""
    flat = problem.X.reshape(problem.n * problem.d)
    out = cuda.device_array(1, dtype=np.float32)
    blocks = 1 if TINY else 132 * 16
    kernel = _read_kernel()[blocks, 32 if TINY else 256]
    repeats = 2 if TINY else 7
    results = {"numba read kernel": flat.nbytes / _best_seconds(lambda: kernel(flat, out), repeats)}
    torch = _torch()
    if torch is not None:
        results["torch.sum"] = flat.nbytes / _best_seconds(lambda: problem.tX.sum(), repeats)
    method = max(results, key=results.get)
    return results[method], method


def _ieee_matmul(torch):
    """fp32 matrix products in IEEE fp32, no TF32.  torch >= 2.9 has
    ``fp32_precision`` and warns about the old ``allow_tf32`` switch (an
    error under pytest's ``filterwarnings = error``)."""
    matmul = torch.backends.cuda.matmul
    if hasattr(matmul, "fp32_precision"):
        matmul.fp32_precision = "ieee"
    else:
        matmul.allow_tf32 = False


@functools.lru_cache(maxsize=1)
def _gemm_rate():
    """fp32 SGEMM flop/s (torch, TF32 off), or None without torch."""
    torch = _torch()
    if torch is None or TINY:
        return None
    _ieee_matmul(torch)
    a = torch.randn(8192, 8192, device="cuda")
    return 2 * 8192**3 / _best_seconds(lambda: a @ a, 5)


# --------------------------------------------------------------------------
# the libraries
# --------------------------------------------------------------------------
class FastlinRunner:
    """fastlin; ``tiles=True`` keeps the tiled plan on the numba tiles
    (``cuda_config.USE_CUPY = False`` around every call) even where CuPy
    imports."""

    def __init__(self, p, tiles=False):
        import fastlin
        from fastlin.backends import cuda_config, cuda_ops

        self.p, self.ops, self.config = p, cuda_ops, cuda_config
        self.use_cupy = False if tiles else cuda_config.USE_CUPY
        self.model = fastlin.Linear.from_weights(p.W0, p.b0, device="cuda")
        self.opt = fastlin.SGD(LR)

    def _call(self, fn, *args, **kwargs):
        saved, self.config.USE_CUPY = self.config.USE_CUPY, self.use_cupy
        try:
            return fn(*args, **kwargs)
        finally:
            self.config.USE_CUPY = saved

    def step(self):
        return self._call(self.model.step, self.p.X, self.p.T, self.opt)

    def uses_cublas(self):
        """Whether the tiled plan goes through cuBLAS in this configuration."""
        from fastlin.backends import cuda_cublas

        if self.ops.path_for(self.p.o, self.p.d) != "tiled":
            return False
        return self._call(cuda_cublas.cupy_module) is not None

    def loop(self):
        """LOOP steps through the backend interface: queued launches, one wait."""
        m, ops = self.model, self.ops
        if not hasattr(self, "_plan"):
            self._plan = ops.fit_plan(self.p.n, self.p.o, self.p.d, None, False, 0, m.dtype)
            self._losses = ops.empty((LOOP,), np.float64)
            self._state = self.opt.state_for(m, ops)
            self._hyper = self.opt.hyper()
        done, status = self._call(
            ops.fit_steps,
            self.p.X,
            self.p.T,
            m._W,
            m._bvec,
            m.has_bias,
            self._state,
            self._hyper,
            False,
            self._plan,
            self._losses,
        )
        assert done == LOOP and status == 0, (done, status)

    def fit(self):
        return self._call(self.model.fit, self.p.X, self.p.T, steps=FIT_STEPS, opt=self.opt).loss


class TorchRunner:
    """Idiomatic torch: nn.Linear, F.mse_loss, backward(), optim.SGD."""

    def __init__(self, p, graph):
        torch = _torch()
        self.torch, self.p, self.graph = torch, p, None
        self.model = torch.nn.Linear(p.d, p.o).cuda()
        with torch.no_grad():
            self.model.weight.copy_(torch.from_numpy(p.W0))
            self.model.bias.copy_(torch.from_numpy(p.b0))
        self.opt = torch.optim.SGD(self.model.parameters(), lr=LR)
        self.mse = torch.nn.functional.mse_loss
        if graph:
            self._capture()

    def _loss(self):
        self.opt.zero_grad(set_to_none=True)
        loss = self.mse(self.model(self.p.tX), self.p.tT)
        loss.backward()
        self.opt.step()
        return loss

    def _capture(self):
        torch = self.torch
        first = self._loss().item()  # the first step, eagerly: the correctness guard reads it
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                self._loss()
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        self.opt.zero_grad(set_to_none=True)
        with torch.cuda.graph(self.graph):
            self.static_loss = self.mse(self.model(self.p.tX), self.p.tT)
            self.static_loss.backward()
            self.opt.step()
        self.first_loss = first

    def step(self):
        if self.graph is None:
            return self._loss().item()
        self.graph.replay()
        return self.static_loss.item()

    def loop(self):
        for _ in range(LOOP):
            self.graph.replay() if self.graph is not None else self._loss()
        self.torch.cuda.synchronize()

    def fit(self):
        losses = self.torch.empty(FIT_STEPS, device="cuda")
        for i in range(FIT_STEPS):
            if self.graph is None:
                losses[i] = self._loss().detach()
            else:
                self.graph.replay()
                losses[i] = self.static_loss.detach()
        return losses.cpu().numpy()


FASTLIN = ("fastlin-cuda", "fastlin-cuda-tiles")


def _runner(library, p):
    if library in FASTLIN:
        return FastlinRunner(p, tiles=library == "fastlin-cuda-tiles")
    if _torch() is None:
        pytest.skip(f"{library}: torch with CUDA is not available")
    return TorchRunner(p, graph=library == "torch-cuda-graph")


LIBRARIES = ("fastlin-cuda", "torch-cuda", "torch-cuda-graph")


def _first_loss(library, p):
    """The loss of the first step from (W0, b0): every library must agree."""
    if library in FASTLIN:
        return _runner(library, p).step()
    if _torch() is None:
        return None
    runner = TorchRunner(p, graph=library == "torch-cuda-graph")
    return runner.first_loss if runner.graph is not None else runner.step()


def _time(benchmark, fn):
    """Warm up (compile, capture, fill caches), size the rounds to the
    budget, then let pytest-benchmark time ``fn`` (which synchronises)."""
    for _ in range(2):
        fn()
    t0 = time.perf_counter()
    fn()
    once = time.perf_counter() - t0
    rounds = int(max(3, min(200, ROUNDS_SECONDS / max(once, 1e-6))))
    benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=0)


def _record(benchmark, kind, case, library, p, steps_per_call, first_loss, runner=None):
    n, d, o = p.n, p.d, p.o
    nbytes, flops = step_bytes(n, d, o), step_flops(n, d, o)
    limit_s = nbytes / p.read_Bps
    info = benchmark.extra_info
    info.update(
        kind=kind,
        case=case,
        library=library,
        shape=[n, d, o],
        steps=steps_per_call,
        bytes=nbytes,
        flops=flops,
        hbm_read_GBps=p.read_Bps / 1e9,
        read_method=p.read_method,
        limit_s=limit_s,
        first_loss=first_loss,
        tiny=TINY,
    )
    if isinstance(runner, FastlinRunner):
        info["cublas"] = runner.uses_cublas()
    gemm = _gemm_rate()
    if gemm is not None:
        info["gemm_TFLOPs"] = gemm / 1e12
    stats = getattr(benchmark, "stats", None)
    if stats:
        per_step = stats.stats.median / steps_per_call
        info["median_per_step_s"] = per_step
        info["fraction_of_limit"] = limit_s / per_step
        info["achieved_GBps"] = nbytes / per_step / 1e9
        info["achieved_TFLOPs"] = flops / per_step / 1e12


# --------------------------------------------------------------------------
# the benchmarks
# --------------------------------------------------------------------------
def _params(cases, libraries):
    """(case, library) pairs; the numba tiles' row only for the tiled cases."""
    return [
        pytest.param(c, lib, id=f"{c}-{lib}")
        for c in cases
        for lib in libraries
        if lib != "fastlin-cuda-tiles" or c in TILED_CASES
    ]


@pytest.mark.parametrize(("case", "library"), _params(CASES, (*LIBRARIES, "fastlin-cuda-tiles")))
def test_gpu_step(benchmark, gpu_problems, case, library):
    p = gpu_problems.get(case)
    first = _first_loss(library, p)
    if library in FASTLIN and _torch() is not None:
        # Correctness guard: same data, same start, same first loss as torch.
        assert first == pytest.approx(_first_loss("torch-cuda", p), rel=1e-4)
    runner = _runner(library, p)
    benchmark.group = f"gpu-step:{case}"
    _time(benchmark, runner.step)
    _record(benchmark, "step", case, library, p, 1, first, runner)


@pytest.mark.parametrize(
    ("case", "library"), _params(CASES, ("fastlin-cuda", "fastlin-cuda-tiles", "torch-cuda-graph"))
)
def test_gpu_loop(benchmark, gpu_problems, case, library):
    p = gpu_problems.get(case)
    runner = _runner(library, p)
    benchmark.group = f"gpu-loop:{case}"
    _time(benchmark, runner.loop)
    _record(benchmark, "loop", case, library, p, LOOP, None, runner)


@pytest.mark.parametrize(("case", "library"), _params(FIT_CASES, LIBRARIES))
def test_gpu_fit(benchmark, gpu_problems, case, library):
    p = gpu_problems.get(case)
    runner = _runner(library, p)
    benchmark.group = f"gpu-fit:{case}"
    _time(benchmark, runner.fit)
    _record(benchmark, "fit", case, library, p, FIT_STEPS, None, runner)
