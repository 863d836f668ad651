"""``python -m fastlin compare``: fastlin against its peers over a grid of sizes.

For each shape (D inputs → O outputs) and each number of rows N, every
backend present here runs the same full-batch training step (see
:mod:`fastlin._peers`): fastlin on the CPU with one thread and with all,
fastlin on CUDA when a GPU is usable, and numpy, torch (CPU and, with a GPU,
CUDA eager and CUDA graph) and JAX when installed.  It prints a table of the
median time per step, the speed-up over numpy and the fraction of the
hardware limit measured in the same run, writes the results as JSON, and
(with matplotlib) plots speed-up against N, marking where the GPU starts to
beat the CPU.  Without a GPU it says so and compares fastlin on the CPU with
numpy, torch and JAX.

The crossover it reports is the number of rows, and the work per step
``N·D·O``, from which fastlin on CUDA beats fastlin on the CPU for each
shape; ``device="auto"`` should switch there (see bench/RESULTS.md).

Nothing here is imported by ``import fastlin``.
"""

from __future__ import annotations

import gc
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from . import _peers, _roofline

# (in_features, out_features): bandwidth-bound, mixed, GEMM-bound (BENCH.md's tall, tall16, wide).
SHAPES = ((64, 1), (64, 16), (1024, 256))
SIZES = (100, 1_000, 10_000, 100_000, 1_000_000)
# A size is skipped for a shape when one step would exceed this many
# multiply-adds (N·D·O): 2^32 is 16,384 rows of the wide shape, ~0.1 s a step.
MAX_WORK = 1 << 32
QUICK_SHAPES = ((64, 1), (64, 16))
QUICK_SIZES = (1_000, 100_000)


@dataclass
class Result:
    n_rows: int
    n_in: int
    n_out: int
    backend: str
    device: str
    seconds: float | None = None  # median per step
    samples: int = 0
    speedup_vs_numpy: float | None = None
    fraction_of_limit: float | None = None
    limit_seconds: float | None = None
    error: str | None = None


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

    def rows_for(self, shape):
        return [r for r in self.results if (r.n_in, r.n_out) == shape]


# --------------------------------------------------------------------------
# timing
# --------------------------------------------------------------------------
def time_step(fn, budget):
    """Median seconds per call of ``fn`` over about ``budget`` seconds.

    Two untimed calls first (compilation, allocation, caches); then samples
    of enough calls each to last ``budget/20`` (at least one call), at least
    three samples.  Returns ``(median, n_samples)``.
    """
    fn()
    fn()
    t0 = time.perf_counter()
    fn()
    once = max(time.perf_counter() - t0, 1e-9)
    inner = max(1, int(budget / 20 / once))
    samples = []
    deadline = time.perf_counter() + budget
    while len(samples) < 3 or (time.perf_counter() < deadline and len(samples) < 100):
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

    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        read = x.numel() * 4 / best(x.sum)
        gemm = 2 * 8192**3 / best(lambda: a @ a, reps=5)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old
    return {"read_bytes_per_s": read, "gemm_flops_per_s": gemm, "method": "torch (x.sum(), fp32 matmul without TF32)"}


# --------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------
def _grid(sizes, shapes, max_work):
    for n_in, n_out in shapes:
        for n in sizes:
            if n * n_in * n_out <= max_work:
                yield n, n_in, n_out


def run(sizes=SIZES, shapes=SHAPES, backends=None, budget=0.3, max_work=MAX_WORK, quick=False, repeats=3, log=print):
    """Measure the grid; returns a :class:`Report`.

    Each backend gets about ``budget`` seconds of timing per size, split into
    ``repeats`` rounds that interleave the backends; its time is the median of
    the rounds' medians.
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
        # Rounds interleave the backends, so that a burst of other work on the
        # machine lands on several of them rather than all on one.
        times = {name: [] for name in built}
        for _ in range(repeats):
            for res in row:
                backend = built.get(res.backend)
                if backend is None or res.error:
                    continue
                try:
                    with backend.context():
                        t, k = time_step(backend.step, budget / repeats)
                    times[res.backend].append(t)
                    res.samples += k
                except Exception as exc:  # noqa: BLE001 (reported in the table, as above)
                    res.error = f"{type(exc).__name__}: {exc}"
        for res in row:
            if times.get(res.backend) and not res.error:
                res.seconds = float(np.median(times[res.backend]))
        for backend in built.values():
            backend.close()
        built.clear()
        base = next((r.seconds for r in row if r.backend == "numpy"), None)
        for res in row:
            if base and res.seconds:
                res.speedup_vs_numpy = base / res.seconds
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
    report.crossover = crossovers(report)
    return report


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
        if res.seconds and res.limit_seconds:
            res.fraction_of_limit = res.limit_seconds / res.seconds


def _progress_line(row):
    r0 = row[0]
    times = ", ".join(f"{r.backend} {_roofline.format_seconds(r.seconds) if r.seconds else 'error'}" for r in row)
    return f"  N={r0.n_rows:,} {r0.n_in}→{r0.n_out}: {times}"


# --------------------------------------------------------------------------
# crossovers
# --------------------------------------------------------------------------
def _crossing(points):
    """First N from which ``ratio > 1`` holds for every larger N.

    ``points`` are (N, ratio) sorted by N.  The crossing is interpolated
    linearly in log N and log ratio between the last losing and the first
    winning size.  Returns ``(N, "interpolated" | "below grid" | "never")``.
    """
    points = [(n, r) for n, r in points if r and r > 0]
    if not points:
        return None, "no data"
    k = len(points)
    while k > 0 and points[k - 1][1] > 1.0:
        k -= 1
    if k == len(points):
        return None, "never in the grid"
    if k == 0:
        return points[0][0], "at or below the smallest size"
    (n0, r0), (n1, r1) = points[k - 1], points[k]
    t = (0.0 - math.log(r0)) / (math.log(r1) - math.log(r0))
    return float(math.exp(math.log(n0) + t * (math.log(n1) - math.log(n0)))), "interpolated"


def crossovers(report):
    """Per shape: where the GPU beats the CPU (fastlin CUDA vs fastlin CPU, best
    thread count), and where fastlin CPU beats the best CPU peer."""
    out = {}
    shapes = sorted({(r.n_in, r.n_out) for r in report.results})
    for shape in shapes:
        rows = report.rows_for(shape)
        by_n = {}
        for r in rows:
            if r.seconds:
                by_n.setdefault(r.n_rows, {})[r.backend] = r.seconds
        entry = {}
        gpu_pts, cpu_pts = [], []
        for n in sorted(by_n):
            t = by_n[n]
            cpu = min((t[b] for b in ("fastlin-cpu", "fastlin-cpu-1t") if b in t), default=None)
            if cpu and "fastlin-cuda" in t:
                gpu_pts.append((n, cpu / t["fastlin-cuda"]))
            peers = [t[b] for b in _peers.PEERS if b in t and _peers.BACKENDS[b].device == "cpu"]
            if cpu and peers:
                cpu_pts.append((n, min(peers) / cpu))
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
COLUMNS = ("D→O", "N", "backend", "time/step", "× numpy", "% of limit")


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
                "–" if r.speedup_vs_numpy is None else f"{r.speedup_vs_numpy:.2f}×",
                "–" if r.fraction_of_limit is None else f"{100 * r.fraction_of_limit:.0f}%",
            )
        )
    return rows


def format_table(report, markdown=False):
    rows = table_rows(report)
    if markdown:
        lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
        lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    align = ("<", ">", "<", ">", ">", ">")
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


def crossover_lines(report):
    lines = []
    has_gpu = any(_peers.BACKENDS[b].device == "cuda" for b in report.backends)
    for shape, entry in report.crossover.items():
        d, o = shape.split("x")
        if "gpu_over_cpu_rows" in entry:
            n = entry["gpu_over_cpu_rows"]
            if n is None:
                lines.append(f"{d}→{o}: fastlin CUDA never beats fastlin CPU in this grid")
            else:
                lines.append(
                    f"{d}→{o}: fastlin CUDA beats fastlin CPU from N ≈ {n:,.0f} rows "
                    f"({entry['gpu_over_cpu_how']}; {entry['gpu_over_cpu_work']:.3g} multiply-adds per step)"
                )
        if "fastlin_over_best_cpu_peer_rows" in entry:
            n = entry["fastlin_over_best_cpu_peer_rows"]
            ratios = ", ".join(f"{m:,}: {r:.2f}×" for m, r in entry["fastlin_over_best_cpu_peer_ratios"])
            where = "never in this grid" if n is None else f"from N ≈ {n:,.0f} ({entry['fastlin_over_best_cpu_peer_how']})"
            lines.append(f"{d}→{o}: fastlin CPU vs the best CPU peer: {ratios} -> faster {where}")
    if has_gpu:
        works = [e["gpu_over_cpu_work"] for e in report.crossover.values() if e.get("gpu_over_cpu_work")]
        if works:
            lines.append(
                f"suggested device='auto' threshold: a step of at least {min(works):.3g} multiply-adds (N·D·O), "
                "the smallest GPU/CPU crossover measured above"
            )
    return lines


def plot(report, path):
    """Speed-up over numpy against N, one panel per shape; returns the path."""
    from ._plot import pyplot

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
    title = "fastlin: one SGD step, speed-up over numpy"
    if not has_gpu:
        title += " (no GPU here: fastlin CPU vs numpy/torch/JAX)"
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
        *[f"- {line}" for line in crossover_lines(report)],
        "",
    ]
    (out_dir / "compare.md").write_text("\n".join(md))
    return out_dir / "compare.json", out_dir / "compare.md"


# --------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------
def main(args):
    """Run ``compare`` from parsed arguments; returns the exit status."""
    sizes = args.sizes or (QUICK_SIZES if args.quick else SIZES)
    shapes = args.shapes or (QUICK_SHAPES if args.quick else SHAPES)
    budget = args.budget if args.budget is not None else (0.05 if args.quick else 0.3)
    backends = args.backends or None
    print(f"fastlin compare: {_roofline.cpu_name()}")
    print(f"BLAS: {_roofline.blas_summary()}")
    repeats = args.repeats if args.repeats is not None else (1 if args.quick else 3)
    report = run(sizes, shapes, backends, budget=budget, max_work=args.max_work, quick=args.quick, repeats=max(1, repeats))
    if not any(_peers.BACKENDS[b].device == "cuda" for b in report.backends):
        why = report.skipped.get("fastlin-cuda", "no GPU backend selected")
        peers = [b for b in report.backends if not _peers.BACKENDS[b].fastlin]
        print(f"no GPU here ({why}): comparing fastlin on the CPU with {', '.join(peers)} instead")
    for name, reason in report.skipped.items():
        print(f"skipped {name}: {reason}")
    print(
        f"limits: SGEMM {report.gemm_flops_per_s / 1e9:.0f} GFLOP/s ({report.gemm_method}); read bandwidth "
        + ", ".join(f"{k}: {v / 1e9:.1f} GB/s" for k, v in report.read_bandwidth.items())
    )
    if report.loadavg:
        print(f"load average at the start: {report.loadavg[0]:.2f} (other work on this machine makes timings noisy)")
    print()
    print(format_table(report))
    print()
    for line in crossover_lines(report):
        print(line)
    paths = write(report, args.out)
    print(f"\nresults written to {paths[0]} and {paths[1]}")
    if not args.no_plot:
        try:
            png = plot(report, Path(args.out) / "compare.png")
        except ImportError as exc:
            print(f"no plot: {exc}")
        else:
            print(f"plot written to {png}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    from .__main__ import main as _cli

    sys.exit(_cli(["compare", *sys.argv[1:]]))
