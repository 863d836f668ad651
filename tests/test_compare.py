"""``python -m fastlin compare``: its table, its files and its crossover logic.

Timings are never checked here (they live in bench/); only that the command
runs, prints a row for every backend and size, and writes its outputs.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys

import pytest

from fastlin import _peers, compare
from fastlin.__main__ import main as fastlin_main

HAS_MPL = importlib.util.find_spec("matplotlib") is not None


def _run(*args, cwd):
    env = dict(os.environ, PYTHONWARNINGS="error::DeprecationWarning:fastlin")
    return subprocess.run(
        [sys.executable, "-m", "fastlin", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=120, check=False
    )


def _table_lines(text):
    return [line.split() for line in text.splitlines() if re.fullmatch(r"\d+→\d+", line.split(" ", 1)[0])]


def test_compare_quick_table_and_files(tmp_path, capsys):
    out = tmp_path / "cmp"
    argv = ["compare", "--quick", "--sizes", "16,48", "--shapes", "8x1,8x3", "--budget", "0.002"]
    argv += ["--backends", "fastlin-cpu-1t,fastlin-cpu,numpy", "--out", str(out)]
    assert fastlin_main(argv) == 0
    text = capsys.readouterr().out
    header = next(line for line in text.splitlines() if line.startswith("D→O"))
    assert header.split() == ["D→O", "N", "backend", "time/step", "×", "numpy", "%", "of", "limit"]
    rows = _table_lines(text)
    expected = [[s, n, b] for s in ("8→1", "8→3") for n in ("16", "48") for b in ("fastlin-cpu-1t", "fastlin-cpu", "numpy")]
    assert [r[:3] for r in rows] == expected
    assert all(len(r) == 7 for r in rows)  # shape, N, backend, time and unit, speed-up, % of limit
    assert "no GPU backend selected" in text or "fastlin-cuda" in text

    data = json.loads((out / "compare.json").read_text())
    assert len(data["results"]) == len(expected)
    assert all(r["error"] is None and r["seconds"] > 0 for r in data["results"])
    assert all(r["speedup_vs_numpy"] == pytest.approx(1.0) for r in data["results"] if r["backend"] == "numpy")
    assert (out / "compare.md").read_text().count("\n| 8→") == len(expected)
    assert (out / "compare.png").exists() == HAS_MPL


def test_compare_cli_runs_every_backend_present(tmp_path):
    proc = _run("compare", "--quick", "--sizes", "16", "--shapes", "8x2", "--budget", "0.002", "--no-plot", "--out", str(tmp_path), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    present = [name for name in _peers.BACKENDS if _peers.unavailable(name) is None]
    assert [r[2] for r in _table_lines(proc.stdout)] == present
    for name in _peers.BACKENDS:
        if name not in present:
            assert f"skipped {name}:" in proc.stdout
    if "fastlin-cuda" not in present:
        assert "no GPU here" in proc.stdout
    assert not (tmp_path / "compare.png").exists()


def test_compare_rejects_bad_sizes(tmp_path):
    proc = _run("compare", "--sizes", "10,-3", cwd=tmp_path)
    assert proc.returncode == 2
    assert "sizes must be positive" in proc.stderr


def test_cli_knows_every_backend():
    from fastlin.__main__ import COMPARE_BACKENDS

    assert COMPARE_BACKENDS == tuple(_peers.BACKENDS)


def test_import_fastlin_and_the_demo_stay_light():
    code = (
        "import sys, fastlin; from fastlin.__main__ import main; main(['demo', '--steps', '2']); "
        "print([m for m in ('fastlin.compare', 'fastlin._peers', 'fastlin._roofline', 'matplotlib', 'torch', 'jax', "
        "'threadpoolctl') if m in sys.modules])"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert proc.stdout.strip().splitlines()[-1] == "[]"


# --------------------------------------------------------------------------
# crossover logic and output, on made-up timings (no measuring)
# --------------------------------------------------------------------------
def _report(times):
    """A Report from {(n, backend): seconds} for the shape 64→1."""
    backends = sorted({b for _, b in times}, key=list(_peers.BACKENDS).index)
    report = compare.Report(
        date="today", cpu="cpu", blas="blas", gpu="gpu", backends=backends, skipped={},
        gemm_flops_per_s=1e11, gemm_method="test", gpu_limits=None,
    )
    for n in sorted({n for n, _ in times}):
        base = times[(n, "numpy")]
        for b in backends:
            t = times[(n, b)]
            report.results.append(
                compare.Result(n, 64, 1, b, _peers.BACKENDS[b].device, seconds=t, samples=3, speedup_vs_numpy=base / t, fraction_of_limit=0.5)
            )
    report.crossover = compare.crossovers(report)
    return report


def test_crossing_is_interpolated_in_log_space():
    assert compare._crossing([(100, 0.5), (10_000, 2.0)]) == (pytest.approx(1_000.0), "interpolated")
    assert compare._crossing([(100, 1.5), (1_000, 3.0)]) == (100, "at or below the smallest size")
    assert compare._crossing([(100, 0.5), (1_000, 0.9)]) == (None, "never in the grid")
    # a win that does not last is not a crossover
    assert compare._crossing([(100, 0.5), (1_000, 2.0), (10_000, 0.8)]) == (None, "never in the grid")


def test_gpu_crossover_is_reported_and_plotted(tmp_path):
    times = {}
    for n, cpu, gpu in ((1_000, 1e-5, 1e-4), (100_000, 1e-3, 1e-3 / 10)):
        times.update({(n, "fastlin-cpu"): cpu, (n, "fastlin-cuda"): gpu, (n, "numpy"): 3 * cpu})
    report = _report(times)
    entry = report.crossover["64x1"]
    assert entry["gpu_over_cpu_rows"] == pytest.approx(10_000.0)
    assert entry["gpu_over_cpu_work"] == pytest.approx(10_000.0 * 64)
    lines = compare.crossover_lines(report)
    assert any("fastlin CUDA beats fastlin CPU from N ≈ 10,000" in line for line in lines)
    assert any("suggested device='auto' threshold" in line for line in lines)
    table = compare.format_table(report)
    assert len([line for line in table.splitlines() if line.startswith("64→1")]) == 6
    if HAS_MPL:
        assert compare.plot(report, tmp_path / "x.png").exists()
