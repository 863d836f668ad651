"""``python -m fastlin compare``: fastlin against its peers over a grid of sizes.

For each shape (D inputs → O outputs) and each number of rows N, every
backend present here runs the same full-batch training step (see
:mod:`fastlin.tools.peers`): fastlin on the CPU with one thread and with all,
fastlin on CUDA when a GPU is usable, and numpy, torch (CPU and, with a GPU,
CUDA eager and CUDA graph) and JAX when installed.  It prints a table of the
median time per step, the spread between rounds, the speed-up over numpy and
the fraction of the hardware limit measured in the same run, writes the
results as JSON, and (with matplotlib) plots speed-up against N, marking
where the GPU starts to beat the CPU.  Without a GPU it says so and compares
fastlin on the CPU with numpy, torch and JAX.

Noise.  The backends are timed in rounds: each round times every backend
once, in a rotating order, so that a burst of other work on the machine
lands on several of them.  At least ``repeats`` (3) rounds run, and more (up
to three times as many) while any backend's rounds disagree by more than
``SPREAD_TARGET``.  A backend's time is the median of its rounds, and its
*spread* is ``(slowest round − fastest round) / median``.  Two backends
differ only when their ranges of rounds do not overlap; a ratio within the
spread is printed as ``≈``.  A fraction of the hardware limit above 100%
means the limit was measured too low: it is measured again, and a fraction
that still exceeds 100% is not printed.

The crossover it reports is the number of rows, and the work per step
``N·D·O``, from which fastlin on CUDA beats fastlin on the CPU for each
shape; ``device="auto"`` should switch there (see bench/RESULTS.md).  A
crossover is stated only where the differences around it exceed the spread;
otherwise the report says that the machine was too noisy to tell.

Nothing here is imported by ``import fastlin``.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

# Bound as _peers/_roofline: the functions below use "peers" for their own lists of backends.
from . import peers as _peers
from . import roofline as _roofline

# (in_features, out_features): bandwidth-bound, mixed, GEMM-bound (BENCH.md's tall, tall16, wide).
SHAPES = ((64, 1), (64, 16), (1024, 256))
SIZES = (100, 1_000, 10_000, 100_000, 1_000_000)
# A size is skipped for a shape when one step would exceed this many
# multiply-adds (N·D·O): 2^32 is 16,384 rows of the wide shape, ~0.1 s a step.
MAX_WORK = 1 << 32
QUICK_SHAPES = ((64, 1), (64, 16))
QUICK_SIZES = (1_000, 100_000)
# Timing rounds: at least MIN_ROUNDS (the spread of fewer is unknown), and
# more, up to MAX_ROUNDS_FACTOR times the least number, while a backend's
# rounds disagree by more than SPREAD_TARGET.
MIN_ROUNDS = 3
MAX_ROUNDS_FACTOR = 3
SPREAD_TARGET = 0.10
# A fraction of the limit above 100% is impossible: the limit is measured
# again, up to this many more times, before the fraction is dropped.
LIMIT_REMEASURES = 3


@dataclass
class Result:
    n_rows: int
    n_in: int
    n_out: int
    backend: str
    device: str
    seconds: float | None = None  # median per step, over the rounds
    samples: int = 0
    speedup_vs_numpy: float | None = None
    fraction_of_limit: float | None = None
    limit_seconds: float | None = None
    error: str | None = None
    rounds: list = field(default_factory=list)  # each round's median seconds per step
    spread: float | None = None  # (slowest - fastest round) / median
    speedup_significant: bool | None = None  # this backend and numpy differ by more than their spreads
    limit_note: str | None = None

    @property
    def low(self):
        return min(self.rounds) if self.rounds else self.seconds

    @property
    def high(self):
        return max(self.rounds) if self.rounds else self.seconds


@dataclass
class Report:
    """Everything ``compare`` measured, as written to compare.json."""

    date: str
    cpu: str
    blas: str
    gpu: str | None
    backends: list
    skipped: dict
    gemm_flops_per_s: float
    gemm_method: str
    gpu_limits: dict | None
    results: list = field(default_factory=list)
    read_bandwidth: dict = field(default_factory=dict)  # "N×D" -> bytes/s
    crossover: dict = field(default_factory=dict)
    loadavg: list | None = None
    rounds: int = 0  # the least number of rounds per size

    def rows_for(self, shape):
        return [r for r in self.results if (r.n_in, r.n_out) == shape]


# --------------------------------------------------------------------------
# timing
# --------------------------------------------------------------------------
def time_step(fn, budget, warm_up=True, min_samples=3):
    """Median seconds per call of ``fn`` over about ``budget`` seconds.

    Two untimed calls first (compilation, allocation, caches) unless
    ``warm_up`` is False; then samples of enough calls each to last
    ``budget/20`` (at least one call), at least ``min_samples``.  Returns
    ``(median, n_samples)``.
    """
    if warm_up:
        fn()
        fn()
    t0 = time.perf_counter()
    fn()
    once = max(time.perf_counter() - t0, 1e-9)
    inner = max(1, int(budget / 20 / once))
    samples = []
    deadline = time.perf_counter() + budget
    while len(samples) < min_samples or (time.perf_counter() < deadline and len(samples) < 100):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        samples.append((time.perf_counter() - t0) / inner)
    return float(np.median(samples)), len(samples)


# --------------------------------------------------------------------------
# GPU limits (only with torch and a GPU)
# --------------------------------------------------------------------------
def _gpu_name():
    try:
        from numba import cuda

        name = cuda.get_current_device().name
        return name.decode() if isinstance(name, bytes) else str(name)
    except Exception:  # noqa: BLE001 (only a label: any failure means "unknown")
        return "a CUDA GPU"


def _gpu_limits(quick):
    """HBM read bandwidth and fp32 GEMM rate through torch, when it sees a GPU."""
    try:
        import torch

        if not torch.cuda.is_available():
            return None
    except ImportError:
        return None
    try:
        return _measure_gpu(torch, quick)
    finally:
        torch.cuda.empty_cache()  # give the probe arrays back before the backends run


def _measure_gpu(torch, quick):
    n = (64 << 20) if quick else (1 << 30)  # float32 elements: 256 MiB or 4 GiB
    x = torch.ones(n, device="cuda")
    a = torch.randn(8192, 8192, device="cuda")

    def best(fn, reps=10):
        fn()
        torch.cuda.synchronize()
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        return min(times)

    # IEEE fp32 products, no TF32.  torch >= 2.9 warns about the old allow_tf32
    # switch, so the new one is used where it exists.
    matmul = torch.backends.cuda.matmul
    name = "fp32_precision" if hasattr(matmul, "fp32_precision") else "allow_tf32"
    old = getattr(matmul, name)
    setattr(matmul, name, "ieee" if name == "fp32_precision" else False)
    try:
        read = x.numel() * 4 / best(x.sum)
        gemm = 2 * 8192**3 / best(lambda: a @ a, reps=5)
    finally:
        setattr(matmul, name, old)
    return {"read_bytes_per_s": read, "gemm_flops_per_s": gemm, "method": "torch (x.sum(), fp32 matmul without TF32)"}


# --------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------
def _grid(sizes, shapes, max_work):
    for n_in, n_out in shapes:
        for n in sizes:
            if n * n_in * n_out <= max_work:
                yield n, n_in, n_out


def run(
    sizes=SIZES, shapes=SHAPES, backends=None, budget=0.1, max_work=MAX_WORK, quick=False, repeats=MIN_ROUNDS, log=print
):
    """Measure the grid; returns a :class:`Report`.

    Each backend gets about ``budget`` seconds of timing per size and round.
    At least ``max(repeats, MIN_ROUNDS)`` rounds interleave the backends, and
    more run (up to ``MAX_ROUNDS_FACTOR`` times as many) while a backend's
    spread exceeds ``SPREAD_TARGET``; its time is the median of its rounds.
    """
    wanted = list(_peers.BACKENDS) if backends is None else list(backends)
    unknown = [b for b in wanted if b not in _peers.BACKENDS]
    if unknown:
        raise ValueError(f"unknown backend(s) {', '.join(unknown)}; choose from {', '.join(_peers.BACKENDS)}")
    present, skipped = [], {}
    for name in wanted:
        reason = _peers.unavailable(name)
        if reason:
            skipped[name] = reason
        else:
            present.append(name)
    if "numpy" not in present:
        present.append("numpy")  # the reference of every speed-up
    gpu_backends = [b for b in present if _peers.BACKENDS[b].device == "cuda"]
    min_rounds = max(MIN_ROUNDS, int(repeats))
    # --quick stays quick: its rounds give the spread but add none for it.
    max_rounds = min_rounds if quick else MAX_ROUNDS_FACTOR * min_rounds

    log("measuring the hardware limits ...")
    rate, rate_method = _roofline.gemm_rate(512 if quick else 2048, repeats=3 if quick else 5)
    gpu_limits = _gpu_limits(quick) if gpu_backends else None
    report = Report(
        date=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        cpu=_roofline.cpu_name(),
        blas=_roofline.blas_summary(),
        gpu=_gpu_name() if gpu_backends else None,
        backends=present,
        skipped=skipped,
        gemm_flops_per_s=rate,
        gemm_method=rate_method,
        gpu_limits=gpu_limits,
        loadavg=list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        rounds=min_rounds,
    )
    for n, n_in, n_out in _grid(sizes, shapes, max_work):
        problem = _peers.Problem(n, n_in, n_out, seed=0)
        X = problem.data()[0]
        key = f"{n}x{n_in}"
        bw, _ = _roofline.read_bandwidth(X, repeats=3 if quick else 5)
        report.read_bandwidth[key] = max(bw, report.read_bandwidth.get(key, 0.0))
        row, built = [], {}
        for name in present:
            cls = _peers.BACKENDS[name]
            res = Result(n, n_in, n_out, name, cls.device)
            try:
                built[name] = cls(problem)  # availability was checked once, above
            except Exception as exc:  # noqa: BLE001 (one broken backend must not hide the others)
                res.error = f"{type(exc).__name__}: {exc}"
            row.append(res)
        _time_rounds(row, built, budget, min_rounds, max_rounds, min_samples=1 if quick else 3)
        for backend in built.values():
            backend.close()
        built.clear()
        numpy_res = next((r for r in row if r.backend == "numpy" and r.seconds), None)
        for res in row:
            if numpy_res is not None and res.seconds:
                res.speedup_vs_numpy = numpy_res.seconds / res.seconds
                res.speedup_significant = differ(res, numpy_res) if res is not numpy_res else None
        report.results.extend(row)
        bw, _ = _roofline.read_bandwidth(X, repeats=3 if quick else 5)  # again, after the row: keep the best
        report.read_bandwidth[key] = max(bw, report.read_bandwidth[key])
        log(_progress_line(row))
        problem.drop()
        gc.collect()
    # A ceiling is the best the machine showed: measure the SGEMM rate again
    # at the end (the machine may have been busier at the start).
    rate2, method2 = _roofline.gemm_rate(512 if quick else 2048, repeats=3 if quick else 5)
    if rate2 > report.gemm_flops_per_s:
        report.gemm_flops_per_s, report.gemm_method = rate2, method2
    _fill_limits(report)
    _remeasure_impossible_limits(report, quick, remeasures=1 if quick else LIMIT_REMEASURES)
    report.crossover = crossovers(report)
    return report


def _time_rounds(row, built, budget, min_rounds, max_rounds, min_samples=3):
    """Time every built backend of ``row`` in interleaved rounds (see the module's docstring)."""
    live = [res for res in row if res.backend in built and not res.error]
    done = 0
    while live and done < max_rounds:
        # Rotate the order, so that no backend always runs first (or right
        # after the most memory-hungry one).
        shift = done % len(live)
        for res in live[shift:] + live[:shift]:
            if res.error:
                continue
            backend = built[res.backend]
            try:
                with backend.context():
                    t, k = time_step(backend.step, budget, warm_up=done == 0, min_samples=min_samples)
                res.rounds.append(t)
                res.samples += k
            except Exception as exc:  # noqa: BLE001 (reported in the table, as above)
                res.error = f"{type(exc).__name__}: {exc}"
        done += 1
        live = [res for res in live if not res.error]
        if done >= min_rounds and all(_spread(res.rounds) <= SPREAD_TARGET for res in live):
            break
    for res in row:
        if res.rounds and not res.error:
            res.seconds = float(np.median(res.rounds))
            res.spread = _spread(res.rounds) if len(res.rounds) > 1 else None  # JSON has no inf


def _spread(rounds):
    """(slowest - fastest) / median of a backend's rounds; inf with fewer than two."""
    if len(rounds) < 2:
        return float("inf")
    return float((max(rounds) - min(rounds)) / np.median(rounds))


def differ(a, b):
    """True when results ``a`` and ``b`` differ by more than their spreads:
    their ranges of rounds do not overlap.  Results without rounds (made up,
    or from an older compare.json) count as exact."""
    if not a.seconds or not b.seconds:
        return False
    return a.high < b.low or b.high < a.low


def _fill_limits(report):
    """Each result's roofline time (CPU or GPU ceilings) and the fraction of it reached."""
    gpu = report.gpu_limits
    for res in report.results:
        nbytes = _roofline.step_bytes(res.n_rows, res.n_in, res.n_out)
        flops = _roofline.step_flops(res.n_rows, res.n_in, res.n_out)
        if res.device == "cuda":
            res.limit_seconds = max(nbytes / gpu["read_bytes_per_s"], flops / gpu["gemm_flops_per_s"]) if gpu else None
        else:
            bw = report.read_bandwidth[f"{res.n_rows}x{res.n_in}"]
            res.limit_seconds = max(nbytes / bw, flops / report.gemm_flops_per_s)
        res.fraction_of_limit = None
        if res.seconds and res.limit_seconds:
            res.fraction_of_limit = res.limit_seconds / res.seconds


def _remeasure_impossible_limits(report, quick, remeasures=LIMIT_REMEASURES):
    """A step can never beat the limit: where one seems to, the ceiling was
    measured too low (a busy moment).  Measure it again, longer, keeping the
    best; a fraction still above 100% is dropped, with a note."""
    for _ in range(remeasures):
        over = [r for r in report.results if r.fraction_of_limit is not None and r.fraction_of_limit > 1.0]
        if not over:
            return
        cpu_keys = sorted({(r.n_rows, r.n_in) for r in over if r.device == "cpu"})
        for n_rows, n_in in cpu_keys:
            X = _peers.Problem(n_rows, n_in, 1, seed=0).data()[0]
            bw, _ = _roofline.read_bandwidth(X, repeats=15 if quick else 25)
            key = f"{n_rows}x{n_in}"
            report.read_bandwidth[key] = max(bw, report.read_bandwidth[key])
        if cpu_keys:
            rate, method = _roofline.gemm_rate(512 if quick else 2048, repeats=5 if quick else 9)
            if rate > report.gemm_flops_per_s:
                report.gemm_flops_per_s, report.gemm_method = rate, method
        _fill_limits(report)
    for r in report.results:
        if r.fraction_of_limit is not None and r.fraction_of_limit > 1.0:
            r.limit_note = (
                f"the step ({_roofline.format_seconds(r.seconds)}) beat the limit measured for it "
                f"({_roofline.format_seconds(r.limit_seconds)}) even after measuring the limit again: no fraction given"
            )
            r.fraction_of_limit = None


def _progress_line(row):
    r0 = row[0]
    times = ", ".join(f"{r.backend} {_roofline.format_seconds(r.seconds) if r.seconds else 'error'}" for r in row)
    return f"  N={r0.n_rows:,} {r0.n_in}→{r0.n_out}: {times}"


# --------------------------------------------------------------------------
# crossovers
# --------------------------------------------------------------------------
NOISY = "too noisy to tell"


def _crossing(points):
    """First N from which the ratio exceeds 1 for every larger N.

    ``points`` are ``(N, ratio)`` or ``(N, ratio, significant)``, sorted by
    N, where ``significant`` says the two timings differ by more than their
    spreads (assumed when absent).  The crossing is interpolated linearly in
    log N and log ratio between the last losing and the first winning size.
    It is stated only when every point it rests on is significant: the wins
    from it on, and the loss just before it.  Returns ``(N or None, how)``,
    ``how`` one of "interpolated", "at or below the smallest size", "never in
    the grid", :data:`NOISY` or "no data".
    """
    points = [(p[0], p[1], True if len(p) < 3 else bool(p[2])) for p in points]
    points = [p for p in points if p[1] and p[1] > 0]
    if not points:
        return None, "no data"
    k = len(points)
    while k > 0 and points[k - 1][1] > 1.0:
        k -= 1
    if k == len(points):
        # It loses at the largest size: a loss there must be real to say "never".
        return (None, "never in the grid") if points[-1][2] else (None, NOISY)
    if not all(p[2] for p in points[k:]):
        return None, NOISY
    if k == 0:
        return points[0][0], "at or below the smallest size"
    (n0, r0, sig0), (n1, r1, _) = points[k - 1], points[k]
    if not sig0:
        return None, NOISY
    t = (0.0 - math.log(r0)) / (math.log(r1) - math.log(r0))
    return float(math.exp(math.log(n0) + t * (math.log(n1) - math.log(n0)))), "interpolated"


def crossovers(report):
    """Per shape: where the GPU beats the CPU (fastlin CUDA vs fastlin CPU, best
    thread count), and where fastlin CPU beats the best CPU peer.  Each point
    is ``(N, ratio, significant)``."""
    out = {}
    shapes = sorted({(r.n_in, r.n_out) for r in report.results})
    for shape in shapes:
        rows = report.rows_for(shape)
        by_n = {}
        for r in rows:
            if r.seconds:
                by_n.setdefault(r.n_rows, {})[r.backend] = r
        entry = {}
        gpu_pts, cpu_pts = [], []
        for n in sorted(by_n):
            t = by_n[n]
            cpu = min(
                (t[b] for b in ("fastlin-cpu", "fastlin-cpu-1t") if b in t), key=lambda r: r.seconds, default=None
            )
            if cpu and "fastlin-cuda" in t:
                gpu = t["fastlin-cuda"]
                gpu_pts.append((n, cpu.seconds / gpu.seconds, differ(cpu, gpu)))
            peers = [t[b] for b in _peers.PEERS if b in t and _peers.BACKENDS[b].device == "cpu"]
            if cpu and peers:
                best = min(peers, key=lambda r: r.seconds)
                cpu_pts.append((n, best.seconds / cpu.seconds, differ(cpu, best)))
        if gpu_pts:
            n, how = _crossing(gpu_pts)
            entry["gpu_over_cpu_rows"] = n
            entry["gpu_over_cpu_work"] = None if n is None else n * shape[0] * shape[1]
            entry["gpu_over_cpu_how"] = how
            entry["gpu_over_cpu_ratios"] = gpu_pts
        if cpu_pts:
            n, how = _crossing(cpu_pts)
            entry["fastlin_over_best_cpu_peer_rows"] = n
            entry["fastlin_over_best_cpu_peer_how"] = how
            entry["fastlin_over_best_cpu_peer_ratios"] = cpu_pts
        out[f"{shape[0]}x{shape[1]}"] = entry
    return out


# --------------------------------------------------------------------------
# output
# --------------------------------------------------------------------------
COLUMNS = ("D→O", "N", "backend", "time/step", "spread", "× numpy", "% of limit")


def table_rows(report):
    """The table as rows of strings (header first)."""
    rows = [COLUMNS]
    for r in report.results:
        rows.append(
            (
                f"{r.n_in}→{r.n_out}",
                f"{r.n_rows:,}",
                r.backend,
                "error" if r.error else _roofline.format_seconds(r.seconds),
                _format_spread(r.spread),
                _format_ratio(r.speedup_vs_numpy, r.speedup_significant is not False),
                "–" if r.fraction_of_limit is None else f"{100 * min(r.fraction_of_limit, 1.0):.0f}%",
            )
        )
    return rows


def _format_spread(spread):
    if spread is None or not math.isfinite(spread):
        return "–"
    return f"±{50 * spread:.0f}%"


def _format_ratio(ratio, significant=True):
    """``1.52×``; ``≈1.05×`` when the difference is within the spread."""
    if ratio is None:
        return "–"
    return f"{ratio:.2f}×" if significant else f"≈{ratio:.2f}×"


def format_table(report, markdown=False):
    rows = table_rows(report)
    if markdown:
        lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
        lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    align = ("<", ">", "<", ">", ">", ">", ">")
    out, last = [], None
    for i, r in enumerate(rows):
        key = r[:2]
        if i > 1 and key != last:
            out.append("")
        last = key
        out.append("  ".join(f"{cell:{a}{w}}" for cell, a, w in zip(r, align, widths)))
        if i == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def _clear_wins(points):
    """ " (faster beyond the spread at N = …)" for the sizes where the ratio is a real win, else ""."""
    wins = [n for n, r, *rest in points if r > 1 and (rest[0] if rest else True)]
    return f" (faster beyond the spread at N = {', '.join(f'{n:,}' for n in wins)})" if wins else ""


def _ratios(points):
    return ", ".join(f"{n:,}: {_format_ratio(r, sig)}" for n, r, *rest in points for sig in [rest[0] if rest else True])


def crossover_lines(report):
    lines = []
    has_gpu = any(_peers.BACKENDS[b].device == "cuda" for b in report.backends)
    noisy = False
    for shape, entry in report.crossover.items():
        d, o = shape.split("x")
        if "gpu_over_cpu_rows" in entry:
            n, how = entry["gpu_over_cpu_rows"], entry["gpu_over_cpu_how"]
            ratios = _ratios(entry["gpu_over_cpu_ratios"])
            if how == NOISY:
                noisy = True
                lines.append(
                    f"{d}→{o}: fastlin CUDA vs fastlin CPU: {ratios} -> {NOISY} where the GPU starts to win "
                    f"(the differences there are within the spread){_clear_wins(entry['gpu_over_cpu_ratios'])}"
                )
            elif n is None:
                lines.append(f"{d}→{o}: fastlin CUDA never beats fastlin CPU in this grid ({ratios})")
            else:
                lines.append(
                    f"{d}→{o}: fastlin CUDA beats fastlin CPU from N ≈ {n:,.0f} rows "
                    f"({how}; {entry['gpu_over_cpu_work']:.3g} multiply-adds per step)"
                )
        if "fastlin_over_best_cpu_peer_rows" in entry:
            n, how = entry["fastlin_over_best_cpu_peer_rows"], entry["fastlin_over_best_cpu_peer_how"]
            ratios = _ratios(entry["fastlin_over_best_cpu_peer_ratios"])
            if how == NOISY:
                noisy = True
                where = (
                    f"{NOISY} where fastlin starts to win (the differences there are within the spread)"
                    f"{_clear_wins(entry['fastlin_over_best_cpu_peer_ratios'])}"
                )
            elif n is None:
                where = "faster never in this grid"
            else:
                where = f"faster from N ≈ {n:,.0f} ({how})"
            lines.append(f"{d}→{o}: fastlin CPU vs the best CPU peer: {ratios} -> {where}")
    if noisy:
        lines.append(
            "the machine was too noisy to tell where some of them cross (see the spread column): "
            "run again on a quieter machine, or with a larger --budget or --repeats"
        )
    if has_gpu:
        works = [e["gpu_over_cpu_work"] for e in report.crossover.values() if e.get("gpu_over_cpu_work")]
        if works:
            lines.append(
                f"suggested device='auto' threshold: a step of at least {min(works):.3g} multiply-adds (N·D·O), "
                "the smallest GPU/CPU crossover measured above"
            )
    return lines


def noise_lines(report):
    """The spread of the rounds, summed up, and the limits that could not be trusted."""
    spreads = [(r.spread, r) for r in report.results if r.spread is not None and math.isfinite(r.spread)]
    lines = []
    if spreads:
        worst, r = max(spreads, key=lambda p: p[0])
        median = float(np.median([sp for sp, _ in spreads]))
        lines.append(
            f"spread between rounds (±half the range of {report.rounds} or more interleaved rounds): median ±{50 * median:.0f}%, "
            f"worst ±{50 * worst:.0f}% ({r.backend}, {r.n_in}→{r.n_out}, N={r.n_rows:,}); ≈ marks a ratio within the spread"
        )
    for r in report.results:
        if r.limit_note:
            lines.append(f"{r.n_in}→{r.n_out} N={r.n_rows:,} {r.backend}: {r.limit_note}")
    return lines


def peers_title(backends):
    """What the plot compares, naming only the backends that ran."""
    fastlin = [b for b in backends if _peers.BACKENDS[b].fastlin]
    peers = [b for b in backends if not _peers.BACKENDS[b].fastlin]
    names = {
        "numpy": "numpy",
        "torch": "torch",
        "torch-cuda": "torch CUDA",
        "torch-cuda-graph": "torch CUDA graph",
        "jax": "JAX",
    }
    ours = (
        "fastlin " + ("CPU and CUDA" if any(_peers.BACKENDS[b].device == "cuda" for b in fastlin) else "CPU")
        if fastlin
        else "no fastlin"
    )
    return f"{ours} vs {'/'.join(names.get(p, p) for p in peers)}"


def plot(report, path):
    """Speed-up over numpy against N, one panel per shape; returns the path."""
    from .._plot import pyplot

    plt = pyplot()
    shapes = sorted({(r.n_in, r.n_out) for r in report.results})
    fig, axes = plt.subplots(1, len(shapes), figsize=(4.8 * len(shapes), 3.8), squeeze=False)
    has_gpu = any(_peers.BACKENDS[b].device == "cuda" for b in report.backends)
    for ax, shape in zip(axes[0], shapes):
        rows = report.rows_for(shape)
        for name in report.backends:
            pts = sorted((r.n_rows, r.speedup_vs_numpy) for r in rows if r.backend == name and r.speedup_vs_numpy)
            if pts:
                style = "-" if _peers.BACKENDS[name].fastlin else "--"
                ax.plot([p[0] for p in pts], [p[1] for p in pts], style, marker="o", ms=3, label=name)
        entry = report.crossover.get(f"{shape[0]}x{shape[1]}", {})
        n = entry.get("gpu_over_cpu_rows")
        if n:
            ax.axvline(n, color="k", lw=1, ls=":")
            ax.annotate(f"GPU wins\nfrom N≈{n:,.0f}", (n, 1), textcoords="offset points", xytext=(4, 8), fontsize=8)
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("N (rows)")
        ax.set_title(f"{shape[0]} → {shape[1]}")
        ax.grid(True, which="both", alpha=0.25)
    axes[0][0].set_ylabel("speed-up over numpy (time per step)")
    axes[0][-1].legend(fontsize=8, loc="best")
    # Two lines: a single panel is too narrow for one.
    title = f"fastlin: one SGD step, speed-up over numpy\n{peers_title(report.backends)}"
    title += "" if has_gpu else " (no GPU here)"
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write(report, out_dir):
    """compare.json and compare.md under ``out_dir``; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = asdict(report)
    (out_dir / "compare.json").write_text(json.dumps(data, indent=1, default=float))
    md = [
        f"# fastlin compare, {report.date}",
        "",
        f"- CPU: {report.cpu}; BLAS: {report.blas}",
        f"- GPU: {report.gpu or 'none'}",
        f"- SGEMM: {report.gemm_flops_per_s / 1e9:.0f} GFLOP/s ({report.gemm_method})",
        "",
        format_table(report, markdown=True),
        "",
        *[f"- {line}" for line in noise_lines(report)],
        *[f"- {line}" for line in crossover_lines(report)],
        "",
    ]
    (out_dir / "compare.md").write_text("\n".join(md))
    return out_dir / "compare.json", out_dir / "compare.md"


# --------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------
# The options and the text of `compare --help` live here, beside the code
# that reads them; fastlin/__main__.py only registers the subcommand (with its
# one-line help) and hands the arguments after "compare" to build_parser.
DESCRIPTION = (
    "Time one full-batch SGD step over a grid of sizes on every backend present (fastlin CPU with "
    "1 and all threads, fastlin CUDA, numpy, torch, JAX). The backends are timed in interleaved rounds, repeated "
    "until the spread between rounds is known; the table gives the median time, that spread, the speed-up over "
    "numpy and the fraction of the hardware limit measured in the same run. A crossover (where the GPU starts "
    "to beat the CPU, where fastlin beats its peers) is stated only where the difference exceeds the spread."
)


def _int_list(text: str) -> list[int]:
    try:
        values = [int(float(v)) for v in text.replace("_", "").split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"sizes must be positive integers, got {text!r}")
    return values


def _shape_list(text: str) -> list[tuple[int, int]]:
    shapes = []
    for part in text.split(","):
        try:
            d, o = part.lower().split("x")
            shapes.append((int(d), int(o)))
        except ValueError:
            raise argparse.ArgumentTypeError(f"shapes look like 64x1,1024x256 (D x O), got {part!r}") from None
        if min(shapes[-1]) < 1:
            raise argparse.ArgumentTypeError(f"shape sizes must be >= 1, got {part!r}")
    return shapes


def _backend_list(text: str) -> list[str]:
    names = [b.strip() for b in text.split(",") if b.strip()]
    unknown = [b for b in names if b not in _peers.BACKENDS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown backend(s) {', '.join(unknown) or text!r}; choose from {', '.join(_peers.BACKENDS)}"
        )
    return names


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``compare`` (their one definition; :func:`main` reads them)."""
    p.add_argument(
        "--quick", action="store_true", help="a small grid and short timings (a smoke test, not for decisions)"
    )
    p.add_argument("--sizes", type=_int_list, help="numbers of rows N, comma-separated (default 100,1000,...,1000000)")
    p.add_argument("--shapes", type=_shape_list, help="D x O shapes, comma-separated (default 64x1,64x16,1024x256)")
    p.add_argument(
        "--backends",
        type=_backend_list,
        help=f"comma-separated subset of: {', '.join(_peers.BACKENDS)} (default: all present)",
    )
    p.add_argument(
        "--budget", type=float, help="seconds of timing per backend, size and round (default 0.1; --quick 0.02)"
    )
    p.add_argument(
        "--repeats",
        type=int,
        help="least number of interleaved rounds per size (default 3, the fewest that give a spread); up to 3 times "
        "as many run while a backend's rounds disagree by more than 10%% (not with --quick)",
    )
    p.add_argument(
        "--max-work",
        type=float,
        default=float(1 << 32),
        help="skip sizes whose step exceeds this many multiply-adds N·D·O (default 2^32)",
    )
    p.add_argument(
        "--out",
        default="fastlin-compare",
        help="directory for compare.json, compare.md and compare.png (default ./fastlin-compare)",
    )
    p.add_argument("--no-plot", action="store_true", help="do not draw compare.png")


def build_parser(prog: str = "python -m fastlin compare") -> argparse.ArgumentParser:
    """The parser of ``compare``'s options, named ``prog`` in its usage and errors."""
    parser = argparse.ArgumentParser(prog=prog, description=DESCRIPTION)
    add_arguments(parser)
    return parser


def check_out_dir(out):
    """Make sure compare.json can be written under ``out`` before measuring
    anything: create the directory and write (then remove) a probe file.
    Raises OSError with one line saying why not."""
    out_dir = Path(out).expanduser()
    if out_dir.exists() and not out_dir.is_dir():
        raise OSError(f"--out {str(out)!r} is a file, not a directory")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / ".fastlin-compare-probe"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise OSError(f"cannot write the results under --out {str(out)!r}: {exc.strerror or exc}") from None
    return out_dir


def _plot_unavailable():
    """None when compare.png can be drawn, else why not."""
    try:
        from .._plot import pyplot

        pyplot()
    except ImportError as exc:
        return str(exc)
    return None


def main(args):
    """Run ``compare`` from the options :func:`build_parser` parsed; returns the exit status."""
    sizes = args.sizes or (QUICK_SIZES if args.quick else SIZES)
    shapes = args.shapes or (QUICK_SHAPES if args.quick else SHAPES)
    budget = args.budget if args.budget is not None else (0.02 if args.quick else 0.1)
    if not budget > 0:
        raise ValueError(f"--budget must be > 0 seconds, got {budget}")
    repeats = args.repeats if args.repeats is not None else MIN_ROUNDS
    if repeats < 1:
        raise ValueError(f"--repeats must be >= 1, got {repeats}")
    backends = args.backends or None
    # Everything that can fail without measuring fails now, not after the run.
    out_dir = check_out_dir(args.out)
    no_plot = None if args.no_plot else _plot_unavailable()
    print(f"fastlin compare: {_roofline.cpu_name()}")
    print(f"BLAS: {_roofline.blas_summary()}")
    if no_plot:
        print(f"no plot: {no_plot} (or pass --no-plot)")
    if backends is not None and not any(_peers.BACKENDS[b].fastlin for b in backends):
        print(
            f"note: --backends {','.join(backends)} names no fastlin backend, so fastlin will not be measured "
            "(add fastlin-cpu or fastlin-cuda to compare it)"
        )
    report = run(sizes, shapes, backends, budget=budget, max_work=args.max_work, quick=args.quick, repeats=repeats)
    fastlin_ran = [b for b in report.backends if _peers.BACKENDS[b].fastlin]
    if not any(_peers.BACKENDS[b].device == "cuda" for b in report.backends):
        why = report.skipped.get("fastlin-cuda", "no GPU backend selected")
        peers = [b for b in report.backends if not _peers.BACKENDS[b].fastlin]
        if fastlin_ran:
            print(f"no GPU here ({why}): comparing fastlin on the CPU with {', '.join(peers)} instead")
        else:
            print(f"no GPU here ({why}); measuring {', '.join(peers)} only")
    for name, reason in report.skipped.items():
        print(f"skipped {name}: {reason}")
    print(
        f"limits: SGEMM {report.gemm_flops_per_s / 1e9:.0f} GFLOP/s ({report.gemm_method}); read bandwidth "
        + ", ".join(f"{k}: {v / 1e9:.1f} GB/s" for k, v in report.read_bandwidth.items())
    )
    if report.loadavg:
        n_cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        busy = " (busy: other work on this machine makes timings noisy)" if report.loadavg[0] > 0.5 * n_cpus else ""
        print(f"load average at the start: {report.loadavg[0]:.2f} on {n_cpus} CPUs{busy}")
    print()
    print(format_table(report))
    print()
    for line in noise_lines(report) + crossover_lines(report):
        print(line)
    paths = write(report, out_dir)
    print(f"\nresults written to {paths[0]} and {paths[1]}")
    if not args.no_plot and not no_plot:
        png = plot(report, out_dir / "compare.png")
        print(f"plot written to {png}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    # ``python -m fastlin.tools.compare ...``: the same options, parsed here
    # (importing fastlin.__main__ from the tools would tie the CLI and the
    # tools into a cycle); errors are one line, as ``python -m fastlin`` gives.
    _parser = build_parser("python -m fastlin.tools.compare")
    _args = _parser.parse_args()
    try:
        _status = main(_args)
    except (ValueError, TypeError, RuntimeError, ImportError, OSError) as exc:
        _parser.exit(2, f"{_parser.prog}: error: {exc}\n")
    except KeyboardInterrupt:
        _parser.exit(130, f"{_parser.prog}: interrupted\n")
    sys.exit(_status)
