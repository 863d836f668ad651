"""Peak memory of a training step, first-call compile time, and demo start-up.

    python bench/memory_startup.py            # everything, as a table
    python bench/memory_startup.py --json out.json
    python bench/memory_startup.py --memory tall,tall16 --libraries fastlin-cpu,numpy

Each measurement runs in a fresh Python process, so nothing one measures
(imports, caches, the process's peak RSS) leaks into another.

Peak memory of one step
    After three warm-up steps, the process's peak RSS is reset (Linux:
    ``/proc/self/clear_refs``) and one more step runs.  Reported: the rise of
    the peak RSS over the RSS before the step (every library, native
    allocations included; glibc is told to map each large block afresh so
    that reused blocks count too), tracemalloc's peak (numpy's allocations,
    fastlin's scratch), and for fastlin the number of Numba runtime
    allocations (``NUMBA_NRT_STATS=1``) in one ``step`` call and per step of a
    ``fit`` (one per array argument is numba boxing the caller's arrays; a
    fit should add none per step).  A fresh model's first step
    is measured the same way: it allocates fastlin's scratch, whose size as
    kept by the model (O(chunks·O·D)) is printed beside the size of one
    (N, O) float32 temporary, which a fused step must never build.
First-call compile time
    ``import fastlin``, the first ``Linear.step`` and the first ``fit`` of
    the small case in a process whose Numba cache directory is empty, then
    again in a second process that finds the cache.
Demo start-up
    Wall time of ``python -m fastlin demo`` with a cold cache, then of
    later runs (the target is under 1 s), beside the floor set by
    ``python -c "import numba"``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MEMORY_CASES = ("small", "tall", "tall16", "wide")
MEMORY_LIBRARIES = ("fastlin-cpu", "numpy", "torch", "jax")


# --------------------------------------------------------------------------
# child processes
# --------------------------------------------------------------------------
def _rss_kib(field):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return None


def _reset_peak_rss():
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _measure_once(fn, nrt):
    """Run ``fn`` once; peak RSS rise, tracemalloc peak, NRT allocations."""
    import tracemalloc

    before = nrt() if nrt else None
    rss0 = _rss_kib("VmRSS")
    can_reset = _reset_peak_rss()
    tracemalloc.start()
    tracemalloc.reset_peak()
    fn()
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    hwm = _rss_kib("VmHWM")
    after = nrt() if nrt else None
    return {
        "peak_rss_rise_bytes": (hwm - rss0) * 1024 if can_reset and hwm is not None else None,
        "tracemalloc_peak_bytes": traced_peak,
        "nrt_allocations": None if before is None else after.alloc - before.alloc,
    }


def child_memory(case_name, library):
    sys.path.insert(0, str(HERE))
    import numba
    from cases import CASES

    from fastlin.tools import peers as _peers

    nrt = None
    if numba.config.NRT_STATS and _peers.BACKENDS[library].fastlin:
        from numba.core.runtime import rtsys

        nrt = rtsys.get_allocation_stats
    c = CASES[case_name]
    problem = _peers.Problem(c.n_rows, c.n_in, c.n_out, seed=0)
    X, T, W0, b0 = problem.data()
    backend = _peers.build(library, problem)
    out = {"case": case_name, "library": library, "shape": [c.n_rows, c.n_in, c.n_out]}
    out["X_bytes"] = X.nbytes
    out["NxO_float32_bytes"] = c.n_rows * c.n_out * 4
    with backend.context():
        for _ in range(3):
            backend.step()
        out["steady"] = _measure_once(backend.step, nrt)
        if _peers.BACKENDS[library].fastlin:
            import fastlin
            from fastlin.backends import cpu, cpu_ops

            out["threads"] = numba.get_num_threads()
            try:  # the backend's own plan, while it has this shape
                _, n_chunks = cpu_ops.plan_chunks(c.n_rows, c.n_out, c.n_in)
                out["chunks"] = n_chunks
                out["planned_scratch_bytes"] = 8 * cpu.scratch_layout(c.n_out, c.n_in, n_chunks).size
            except (AttributeError, TypeError):
                pass
            fresh = fastlin.Linear.from_weights(W0, b0)
            opt = fastlin.SGD(lr=problem.lr)
            out["first_step_of_a_new_model"] = _measure_once(lambda: fresh.step(X, T, opt), nrt)
            # What the model keeps between steps (its scratch cache), as built.
            kept = {**fresh._step_ws, **fresh._scratch.ws}  # step's scratch, and this thread's for read-only calls
            out["scratch_kept_bytes"] = sum(getattr(v, "nbytes", 0) for v in kept.values())
            if nrt is not None:
                # One MemInfo per array argument is numba boxing the caller's
                # arrays; what matters is that a longer fit allocates no more.
                counts = []
                for steps in (1, 3):
                    a = nrt()
                    fresh.fit(X, T, steps=steps, opt=opt)
                    counts.append(nrt().alloc - a.alloc)
                out["nrt_allocations_per_fit_step"] = (counts[1] - counts[0]) / 2
    backend.close()
    print(json.dumps(out))


def child_compile():
    t0 = time.perf_counter()
    import numpy as np

    import fastlin

    t1 = time.perf_counter()
    rng = np.random.default_rng(0)
    X = rng.standard_normal((64, 32), dtype=np.float32)
    T = rng.standard_normal((64, 4), dtype=np.float32)
    model = fastlin.Linear(32, 4, seed=0)
    opt = fastlin.SGD(lr=0.01)
    t2 = time.perf_counter()
    model.step(X, T, opt)
    t3 = time.perf_counter()
    model.step(X, T, opt)
    t4 = time.perf_counter()
    model.fit(X, T, steps=100, opt=opt)
    t5 = time.perf_counter()
    model.fit(X, T, steps=100, opt=opt)
    t6 = time.perf_counter()
    print(
        json.dumps(
            {
                "import_fastlin_s": t1 - t0,
                "first_step_s": t3 - t2,
                "second_step_s": t4 - t3,
                "first_fit100_s": t5 - t4,
                "second_fit100_s": t6 - t5,
            }
        )
    )


# The first fit a new user runs, and torch's first training step on the
# same data, each as a whole fresh process (issue 11 §5).
FIRST_FIT_SHAPE = (10_000, 64, 1)

_FASTLIN_FIRST_FIT = """
import numpy as np, fastlin
n, d, o = {shape}
rng = np.random.default_rng(0)
X = rng.standard_normal((n, d), dtype=np.float32)
T = rng.standard_normal((n, o), dtype=np.float32)
fastlin.Linear(d, o, seed=0).fit(X, T, steps=100, lr=0.01)
"""

_TORCH_FIRST_STEP = """
import numpy as np, torch
n, d, o = {shape}
rng = np.random.default_rng(0)
X = torch.from_numpy(rng.standard_normal((n, d), dtype=np.float32))
T = torch.from_numpy(rng.standard_normal((n, o), dtype=np.float32))
layer = torch.nn.Linear(d, o)
opt = torch.optim.SGD(layer.parameters(), lr=0.01)
opt.zero_grad()
torch.nn.functional.mse_loss(layer(X), T).backward()
opt.step()
"""


def cold_first_fit(rounds=2):
    """Wall time of a fresh process that imports fastlin and runs its first
    float32 ``fit(steps=100)`` with an empty kernel cache, against one that
    imports torch and runs its first training step (interleaved)."""
    code = {
        "fastlin": _FASTLIN_FIRST_FIT.format(shape=FIRST_FIT_SHAPE),
        "torch": _TORCH_FIRST_STEP.format(shape=FIRST_FIT_SHAPE),
    }
    times = {"fastlin": [], "torch": []}
    for _ in range(rounds):
        for name in ("fastlin", "torch"):
            with tempfile.TemporaryDirectory(prefix="fastlin-cache-") as cache:
                times[name].append(_wall([sys.executable, "-c", code[name]], _env(NUMBA_CACHE_DIR=cache)))
    fastlin_s, torch_s = min(times["fastlin"]), min(times["torch"])
    return {
        "shape": list(FIRST_FIT_SHAPE),
        "fastlin_cold_first_fit_s": times["fastlin"],
        "torch_cold_first_step_s": times["torch"],
        "ratio_fastest": fastlin_s / torch_s,
        "target_ratio": 1.0,
        "loadavg": list(os.getloadavg()),
    }


# --------------------------------------------------------------------------
# drivers
# --------------------------------------------------------------------------
def _env(**extra):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update({k: v for k, v in extra.items() if v is not None})
    return env


def _child(args, **env):
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), *args],
        capture_output=True,
        text=True,
        env=_env(**env),
        cwd=ROOT,
        timeout=600,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"child {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def peak_memory(case, library):
    """Peak memory of one step of ``library`` on ``case`` (a dict; runs a child process)."""
    # A fixed mmap threshold makes glibc map every large block afresh, so a
    # temporary array shows up in the peak RSS even when an earlier step
    # freed a block of the same size.
    return _child(["--child-memory", case, library], NUMBA_NRT_STATS="1", MALLOC_MMAP_THRESHOLD_="131072")


def compile_times():
    """First-call compile times with an empty Numba cache, then with the cache filled."""
    with tempfile.TemporaryDirectory(prefix="fastlin-cache-") as cache:
        cold = _child(["--child-compile"], NUMBA_CACHE_DIR=cache)
        warm = _child(["--child-compile"], NUMBA_CACHE_DIR=cache)
    return {"cold_cache": cold, "warm_cache": warm}


def _wall(cmd, env):
    t0 = time.perf_counter()
    subprocess.run(cmd, capture_output=True, env=env, cwd=ROOT, timeout=600, check=True)
    return time.perf_counter() - t0


def demo_start(repeats=5):
    """Wall time of ``python -m fastlin demo``: cold cache, then warm (median), and the floors."""
    with tempfile.TemporaryDirectory(prefix="fastlin-cache-") as cache:
        env = _env(NUMBA_CACHE_DIR=cache)
        demo = [sys.executable, "-m", "fastlin", "demo"]
        first = _wall(demo, env)
        warm = [_wall(demo, env) for _ in range(repeats)]
    plain = _env()
    default_cache = [_wall(demo, plain) for _ in range(repeats)]
    floor_numba = [_wall([sys.executable, "-c", "import numba"], plain) for _ in range(repeats)]
    floor_python = [_wall([sys.executable, "-c", "pass"], plain) for _ in range(repeats)]
    return {
        "first_run_cold_cache_s": first,
        "later_runs_s": warm,
        "later_run_median_s": statistics.median(warm),
        "default_cache_runs_s": default_cache,
        "default_cache_median_s": statistics.median(default_cache),
        "python_import_numba_median_s": statistics.median(floor_numba),
        "python_startup_median_s": statistics.median(floor_python),
        "target_s": 1.0,
    }


def _mib(b):
    return "–" if b is None else f"{b / 2**20:.2f} MiB"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--memory", default=",".join(MEMORY_CASES), help="cases for the peak-memory measurement ('' for none)"
    )
    p.add_argument("--libraries", default=",".join(MEMORY_LIBRARIES), help="libraries for the peak-memory measurement")
    p.add_argument("--no-startup", action="store_true", help="skip the compile and demo start-up measurements")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--child-memory", nargs=2, help=argparse.SUPPRESS)
    p.add_argument("--child-compile", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child_memory:
        return child_memory(*args.child_memory)
    if args.child_compile:
        return child_compile()

    sys.path.insert(0, str(ROOT))
    from fastlin.tools import peers as _peers

    results = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "memory": [], "loadavg": list(os.getloadavg())}
    cases = [c for c in args.memory.split(",") if c]
    libraries = [lib for lib in args.libraries.split(",") if lib]
    if cases:
        print("peak memory of one step (fresh process each; RSS rise includes native allocations)")
        print(
            f"{'case':<7} {'library':<12} {'steady RSS↑':>12} {'tracemalloc':>12} {'NRT: step/fit':>14}   {'new model: RSS↑ / traced':>26} {'scratch kept':>15} {'(N,O) f32':>11}"
        )
    for case in cases:
        for lib in libraries:
            reason = _peers.unavailable(lib)
            if reason:
                print(f"{case:<7} {lib:<12} skipped: {reason}")
                continue
            r = peak_memory(case, lib)
            results["memory"].append(r)
            s = r["steady"]
            first = r.get("first_step_of_a_new_model")
            new = (
                ""
                if first is None
                else f"{_mib(first['peak_rss_rise_bytes'])} / {_mib(first['tracemalloc_peak_bytes'])}"
            )
            nrt = (
                "–"
                if s["nrt_allocations"] is None
                else f"{s['nrt_allocations']} / {r['nrt_allocations_per_fit_step']:g}"
            )
            print(
                f"{case:<7} {lib:<12} {_mib(s['peak_rss_rise_bytes']):>12} {_mib(s['tracemalloc_peak_bytes']):>12} {nrt:>14}   "
                f"{new:>26} {_mib(r.get('scratch_kept_bytes')):>15} {_mib(r['NxO_float32_bytes']):>11}"
            )
    if not args.no_startup:
        results["compile"] = compile_times()
        cold, warm = results["compile"]["cold_cache"], results["compile"]["warm_cache"]
        print("\nfirst calls (small case), empty Numba cache -> filled cache")
        for key in ("import_fastlin_s", "first_step_s", "second_step_s", "first_fit100_s", "second_fit100_s"):
            print(f"  {key:<18} {cold[key]:8.3f} s -> {warm[key]:8.3f} s")
        results["demo"] = d = demo_start()
        print("\npython -m fastlin demo (wall time of the whole process)")
        print(f"  first run, empty cache      {d['first_run_cold_cache_s']:.2f} s")
        print(f"  later runs (median of {len(d['later_runs_s'])})     {d['later_run_median_s']:.2f} s   (target < 1 s)")
        print(f"  default cache location      {d['default_cache_median_s']:.2f} s")
        print(
            f"  floor: python -c 'import numba' {d['python_import_numba_median_s']:.2f} s; python -c pass {d['python_startup_median_s']:.2f} s"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
        print(f"\nwritten to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
