"""pytest-benchmark plumbing for fastlin's benchmarks.

Run with ``python -m pytest bench/ --benchmark-only`` (``testpaths`` keeps
bench/ out of the normal test command).  Files named ``bench_*.py`` here are
collected as test modules.

Every benchmark records in ``extra_info``: the case and library, bytes moved
and flops, the hardware limit measured in this run (read bandwidth over the
same bytes, SGEMM rate), the fraction of that limit reached, the BLAS kernel
in use, and -- added once every benchmark of the run has finished -- its
speed-up over each peer and over the best peer of the same group.  A short
roofline table closes the run.
"""

from __future__ import annotations

import gc
import os
import platform

import pytest
from cases import CASES
from hardware import (
    HardwareLimits,
    blas_info,
    blas_summary,
    cpu_name,
    step_bytes,
    step_flops,
)
from peers import Problem, is_peer, label

from fastlin.tools.roofline import format_seconds

# Benchmark results of this run, by group ("step:tall"), then library.
_RESULTS: dict[str, dict[str, dict]] = {}
# Other work on a shared machine makes timings noisy: the load shows how noisy.
_LOAD_AT_START = os.getloadavg()[0]
_HARDWARE = [None]  # the session's HardwareLimits, for the closing table


def pytest_collect_file(file_path, parent):
    # A file named on the command line is collected by pytest itself.
    if file_path.suffix == ".py" and file_path.name.startswith("bench_") and not parent.session.isinitpath(file_path):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


# --------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------
class Problems:
    """Keeps the data of one case alive at a time (tall's X alone is 256 MB)."""

    def __init__(self, hardware):
        self._case = None
        self._problem = None
        self._hardware = hardware

    def get(self, case):
        if case != self._case:
            self._problem = None
            gc.collect()
            c = CASES[case]
            self._problem = Problem(c.n_rows, c.n_in, c.n_out, seed=0)
            self._case = case
            if c.roofline:  # the limits before the case's first benchmark
                self._hardware.for_case(case, self._problem.data()[0])
        return self._problem


@pytest.fixture(scope="session")
def hardware():
    return HardwareLimits()


@pytest.fixture(scope="session")
def problems(hardware):
    return Problems(hardware)


@pytest.fixture
def record(hardware):
    """``record(benchmark, kind=..., case=..., library=..., problem=..., steps=1)``
    after the benchmark ran: fills ``extra_info`` and the run's summary."""

    def finish(benchmark, *, kind, case, library, problem, steps=1):
        c = CASES[case]
        X = problem.data()[0]
        nbytes = steps * step_bytes(c.n_rows, c.n_in, c.n_out)
        flops = steps * step_flops(c.n_rows, c.n_in, c.n_out)
        info = benchmark.extra_info
        info.update(
            kind=kind,
            case=case,
            library=library,
            label=label(library),
            peer=is_peer(library),
            shape=[c.n_rows, c.n_in, c.n_out],
            steps=steps,
            bytes=nbytes,
            flops=flops,
            blas=blas_summary(),
            numba_threads=_numba_threads(),
            loadavg_1min=os.getloadavg()[0],
        )
        if c.roofline and kind == "step":
            hardware.observe(case, X)  # again now, in the conditions this benchmark met
        stats = getattr(benchmark, "stats", None)
        if not stats:  # --benchmark-disable: ran once, nothing timed
            return
        info["median_s"] = stats.stats.median
        _RESULTS.setdefault(benchmark.group, {})[library] = {
            "median": stats.stats.median,
            "iqr": stats.stats.iqr,
            "rounds": stats.stats.rounds,
            "case": case,
            "kind": kind,
            "steps": steps,
            "bytes": nbytes,
            "flops": flops,
            "roofline": c.roofline and kind == "step",
        }
        _limit_info(info, _RESULTS[benchmark.group][library], hardware)

    return finish


def _limit_info(info, result, hardware):
    """Fill the limit and the fraction of it reached, from the best limits seen so far."""
    if not result["roofline"]:
        return
    lim = hardware.for_case(result["case"])
    if lim is None:
        return
    limit_s = lim.step_seconds(result["bytes"], result["flops"])
    result["fraction"] = limit_s / result["median"]
    info.update(
        limit_s=limit_s,
        limit_bound=lim.bound(result["bytes"], result["flops"]),
        read_GBps=lim.read_bytes_per_s / 1e9,
        read_method=lim.read_method,
        gemm_GFLOPs=lim.gemm_flops_per_s / 1e9,
        gemm_method=lim.gemm_method,
        fraction_of_limit=result["fraction"],
    )


def _numba_threads():
    import numba

    return numba.get_num_threads()


# --------------------------------------------------------------------------
# ratios, machine info and the closing table
# --------------------------------------------------------------------------
def _ratios(group_results, library):
    """Speed-ups of ``library`` over every peer of its group, and the best peer."""
    own = group_results[library]["median"]
    peers = {lib: r["median"] for lib, r in group_results.items() if is_peer(lib) and lib != library}
    out = {f"speedup_vs_{lib}": t / own for lib, t in peers.items()}
    if peers:
        best = min(peers, key=peers.get)
        out["best_peer"] = best
        out["speedup_vs_best_peer"] = peers[best] / own
    return out


def pytest_benchmark_update_json(config, benchmarks, output_json):
    hw = getattr(config, "_fastlin_hardware", None)
    for bench in output_json.get("benchmarks", []):
        info = bench.get("extra_info") or {}
        group = _RESULTS.get(bench.get("group"))
        if group and info.get("library") in group:
            info.update(_ratios(group, info["library"]))
            if hw is not None:  # the final (best) limits of the run
                _limit_info(info, group[info["library"]], hw)
    output_json.setdefault("machine_info", {}).update(_machine_extra(config))


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info.update(_machine_extra(config))


def _machine_extra(config):
    extra = {
        "fastlin_cpu": cpu_name(),
        "fastlin_blas": blas_info(),
        "fastlin_blas_summary": blas_summary(),
        "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
        "numba_threads": _numba_threads(),
        "versions": _versions(),
        "fastlin_sources": _SOURCES_AT_START,
        "fastlin_sources_changed_during_run": _source_digest() != _SOURCES_AT_START,
        "loadavg_1min_at_start": _LOAD_AT_START,
        "loadavg_1min_now": os.getloadavg()[0],
    }
    hw = getattr(config, "_fastlin_hardware", None)
    if hw is not None:
        extra["fastlin_limits"] = hw.measured()
    return extra


def _source_digest():
    """A short hash of fastlin's sources as imported, so that a kernel-log entry
    can name the code its numbers came from (the tree may be uncommitted)."""
    import hashlib
    from pathlib import Path

    import fastlin

    root = Path(fastlin.__file__).parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(path.read_bytes())
    out = {"all": digest.hexdigest()[:12]}
    for name in ("backends/cpu.py", "backends/cpu_ops.py", "layer.py"):
        path = root / name
        if path.exists():
            out[name] = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    return out


_SOURCES_AT_START = _source_digest()


def _versions():
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for dist in ("fastlin", "numpy", "numba", "torch", "jax", "jaxlib", "numba-cuda"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    return out


@pytest.fixture(scope="session", autouse=True)
def _expose_hardware(request, hardware):
    request.config._fastlin_hardware = hardware
    _HARDWARE[0] = hardware


def summary_rows():
    """Rows (group, library, median, fraction, speed-up vs best peer, best peer) of this run."""
    rows = []
    for group in sorted(_RESULTS, key=_group_order):
        if _HARDWARE[0] is not None:
            for r in _RESULTS[group].values():
                _limit_info({}, r, _HARDWARE[0])
        results = _RESULTS[group]
        for library in sorted(results, key=_library_order):
            r = results[library]
            ratio = _ratios(results, library)
            rows.append(
                (
                    group,
                    library,
                    r["median"],
                    r.get("fraction"),
                    ratio.get("speedup_vs_best_peer"),
                    ratio.get("best_peer"),
                )
            )
    return rows


def _group_order(group):
    kind, _, case = group.partition(":")
    names = list(CASES)
    return (kind != "step", names.index(case) if case in names else len(names), group)


def _library_order(library):
    from peers import LIBRARIES

    return LIBRARIES.index(library) if library in LIBRARIES else len(LIBRARIES)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    rows = summary_rows()
    if not rows:
        return
    tr = terminalreporter
    tr.section("fastlin roofline summary (medians; ratios from this run)")
    hw = getattr(config, "_fastlin_hardware", None)
    tr.write_line(f"CPU: {cpu_name()}; BLAS: {blas_summary()}")
    tr.write_line(
        f"1-minute load average: {_LOAD_AT_START:.2f} at the start, {os.getloadavg()[0]:.2f} now (above the core count, timings are noisy)"
    )
    if hw is not None:
        tr.write_line("limits: " + ", ".join(f"{k}={v}" for k, v in hw.measured().items()))
    tr.write_line(f"{'group':<12} {'library':<18} {'median':>10} {'% limit':>8} {'× best peer':>12}  best peer")
    for group, library, median, fraction, speedup, best in rows:
        pct = "–" if fraction is None else f"{100 * fraction:.0f}%"
        sp = "–" if speedup is None else f"{speedup:.2f}×"
        tr.write_line(f"{group:<12} {library:<18} {format_seconds(median):>10} {pct:>8} {sp:>12}  {best or ''}")
