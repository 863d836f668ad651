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

from fastlin.__main__ import main as fastlin_main
from fastlin.tools import compare, peers

HAS_MPL = importlib.util.find_spec("matplotlib") is not None


def _run(*args, cwd):
    env = dict(os.environ, PYTHONWARNINGS="error::DeprecationWarning:fastlin")
    return subprocess.run(
        [sys.executable, "-m", "fastlin", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=120,
        check=False,
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
    assert header.split() == ["D→O", "N", "backend", "time/step", "spread", "×", "numpy", "%", "of", "limit"]
    rows = _table_lines(text)
    expected = [
        [s, n, b] for s in ("8→1", "8→3") for n in ("16", "48") for b in ("fastlin-cpu-1t", "fastlin-cpu", "numpy")
    ]
    assert [r[:3] for r in rows] == expected
    assert all(len(r) == 8 for r in rows)  # shape, N, backend, time and unit, spread, speed-up, % of limit
    assert all(re.fullmatch(r"±\d+(\.\d+)?%", r[5]) for r in rows)  # every backend ran rounds enough for a spread
    assert all(r[7] == "–" or 0 <= int(r[7].rstrip("%")) <= 100 for r in rows)
    assert re.search(r"^spread between rounds .* median ±\d+%, worst ±\d+", text, re.MULTILINE)
    assert "no GPU backend selected" in text or "fastlin-cuda" in text

    data = json.loads((out / "compare.json").read_text())
    assert len(data["results"]) == len(expected)
    assert all(r["error"] is None and r["seconds"] > 0 for r in data["results"])
    assert all(len(r["rounds"]) >= compare.MIN_ROUNDS for r in data["results"])
    assert all(r["speedup_vs_numpy"] == pytest.approx(1.0) for r in data["results"] if r["backend"] == "numpy")
    assert (out / "compare.md").read_text().count("\n| 8→") == len(expected)
    assert (out / "compare.png").exists() == HAS_MPL


def test_compare_cli_runs_every_backend_present(tmp_path):
    proc = _run(
        "compare",
        "--quick",
        "--sizes",
        "16",
        "--shapes",
        "8x2",
        "--budget",
        "0.002",
        "--no-plot",
        "--out",
        str(tmp_path),
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    present = [name for name in peers.BACKENDS if peers.unavailable(name) is None]
    assert [r[2] for r in _table_lines(proc.stdout)] == present
    for name in peers.BACKENDS:
        if name not in present:
            assert f"skipped {name}:" in proc.stdout
    if "fastlin-cuda" not in present:
        assert "no GPU here" in proc.stdout
    assert not (tmp_path / "compare.png").exists()


def test_compare_rejects_bad_sizes(tmp_path):
    proc = _run("compare", "--sizes", "10,-3", cwd=tmp_path)
    assert proc.returncode == 2
    assert "sizes must be positive" in proc.stderr


def test_backends_option_takes_every_peer_backend_and_no_other():
    # --backends is checked against tools.peers.BACKENDS itself: one list, no copy to drift.
    parser = compare.build_parser()
    for name in peers.BACKENDS:
        assert parser.parse_args(["--backends", name]).backends == [name]
    assert parser.parse_args(["--backends", ",".join(reversed(peers.BACKENDS))]).backends == list(
        reversed(peers.BACKENDS)
    )
    with pytest.raises(SystemExit):
        parser.parse_args(["--backends", "numpy,fastlin-tpu"])
    help_text = "".join(parser.format_help().split())  # argparse wraps lines at spaces and at hyphens
    assert f"comma-separatedsubsetof:{','.join(peers.BACKENDS)}(default:allpresent)" in help_text


def test_compare_help_and_errors_name_the_subcommand(tmp_path):
    # The options live in fastlin.tools.compare, but the user still sees one command.
    proc = _run("compare", "--help", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: python -m fastlin compare [-h] [--quick]")
    assert "interleaved rounds" in proc.stdout and "--no-plot" in proc.stdout
    proc = _run("compare", "--quick", "--no-such-option", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[-1] == "python -m fastlin: error: unrecognized arguments: --no-such-option"
    proc = _run("compare", "--backends", "numpy,nope", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[-1] == (
        f"python -m fastlin compare: error: argument --backends: unknown backend(s) 'nope'; choose from "
        f"{', '.join(peers.BACKENDS)}"
    )
    proc = _run("--help", cwd=tmp_path)
    assert proc.returncode == 0 and "time one SGD step on a grid of sizes" in proc.stdout


# --------------------------------------------------------------------------
# crossover logic and output, on made-up timings (no measuring)
# --------------------------------------------------------------------------
def _report(times):
    """A Report from {(n, backend): seconds} for the shape 64→1."""
    backends = sorted({b for _, b in times}, key=list(peers.BACKENDS).index)
    report = compare.Report(
        date="today",
        cpu="cpu",
        blas="blas",
        gpu="gpu",
        backends=backends,
        skipped={},
        gemm_flops_per_s=1e11,
        gemm_method="test",
        gpu_limits=None,
    )
    for n in sorted({n for n, _ in times}):
        base = times[(n, "numpy")]
        for b in backends:
            t = times[(n, b)]
            report.results.append(
                compare.Result(
                    n,
                    64,
                    1,
                    b,
                    peers.BACKENDS[b].device,
                    seconds=t,
                    samples=3,
                    speedup_vs_numpy=base / t,
                    fraction_of_limit=0.5,
                )
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


# --------------------------------------------------------------------------
# noise: rounds, spreads, and conclusions only from signal
# --------------------------------------------------------------------------
def _res(backend, rounds, n=1_000):
    r = compare.Result(n, 64, 1, backend, peers.BACKENDS[backend].device, rounds=list(rounds))
    r.seconds = float(sorted(rounds)[len(rounds) // 2])
    r.spread = compare._spread(rounds)
    return r


def test_ranges_that_overlap_do_not_differ():
    assert compare.differ(_res("numpy", [1.0, 1.1, 1.2]), _res("fastlin-cpu", [2.0, 2.1, 2.2]))
    assert not compare.differ(_res("numpy", [1.0, 1.5, 2.1]), _res("fastlin-cpu", [2.0, 2.1, 2.2]))


def test_a_crossing_within_the_spread_is_not_stated():
    # Same ratios as the interpolation test, but the points around the crossing are noise.
    assert compare._crossing([(100, 0.5, True), (10_000, 2.0, True)]) == (pytest.approx(1_000.0), "interpolated")
    assert compare._crossing([(100, 0.5, False), (10_000, 2.0, True)]) == (None, compare.NOISY)
    assert compare._crossing([(100, 0.5, True), (10_000, 2.0, False)]) == (None, compare.NOISY)
    assert compare._crossing([(100, 1.5, False), (1_000, 3.0, True)]) == (None, compare.NOISY)
    assert compare._crossing([(100, 0.5, True), (1_000, 0.9, False)]) == (None, compare.NOISY)
    assert compare._crossing([(100, 0.5, False), (1_000, 0.9, True)]) == (None, "never in the grid")


def test_noisy_crossover_says_the_machine_was_too_noisy():
    report = _report(
        {
            (1_000, "fastlin-cpu"): 1e-5,
            (1_000, "fastlin-cuda"): 1e-4,
            (1_000, "numpy"): 3e-5,
            (100_000, "fastlin-cpu"): 1e-3,
            (100_000, "fastlin-cuda"): 1e-4,
            (100_000, "numpy"): 3e-3,
        }
    )
    for r in report.results:  # rounds from 0.2x to 5x the median: every range overlaps
        r.rounds = [0.2 * r.seconds, r.seconds, 5 * r.seconds]
    report.crossover = compare.crossovers(report)
    assert report.crossover["64x1"]["gpu_over_cpu_how"] == compare.NOISY
    lines = compare.crossover_lines(report)
    assert not any("beats fastlin CPU from" in line or "suggested device='auto'" in line for line in lines)
    assert any("too noisy to tell" in line for line in lines)
    assert any(line.startswith("the machine was too noisy to tell") for line in lines)


def test_rounds_continue_until_the_spread_is_small(monkeypatch):
    class Fake:
        def __init__(self):
            self.calls = 0

        def context(self):
            import contextlib

            return contextlib.nullcontext()

        def step(self):
            pass

    noisy = iter([1.0, 3.0, 1.0, 3.0, 1.0, 3.0, 1.0, 3.0, 1.0, 3.0])
    monkeypatch.setattr(
        compare, "time_step", lambda fn, budget, warm_up=True, min_samples=3: (next(noisy) if fn == "noisy" else 2.0, 1)
    )
    quiet, loud = Fake(), Fake()
    loud.step = "noisy"
    row = [compare.Result(10, 4, 1, "numpy", "cpu"), compare.Result(10, 4, 1, "fastlin-cpu", "cpu")]
    compare._time_rounds(row, {"numpy": quiet, "fastlin-cpu": loud}, 0.01, min_rounds=3, max_rounds=9)
    assert len(row[0].rounds) == len(row[1].rounds) == 9  # the noisy one kept every backend going, to the cap
    assert row[0].spread == 0.0 and row[1].spread == pytest.approx(2.0)  # (3 - 1) / median 1
    row = [compare.Result(10, 4, 1, "numpy", "cpu")]
    compare._time_rounds(row, {"numpy": quiet}, 0.01, min_rounds=3, max_rounds=9)
    assert len(row[0].rounds) == 3  # a quiet machine stops at the least number


def test_a_fraction_above_the_limit_is_measured_again_then_dropped(monkeypatch):
    report = _report({(1_000, "fastlin-cpu"): 1e-5, (1_000, "numpy"): 3e-5})
    report.read_bandwidth = {"1000x64": 1.0}  # absurdly slow: every step "beats" it
    compare._fill_limits(report)
    assert all(r.fraction_of_limit > 1 for r in report.results)
    measured = []

    def read_bandwidth(X, repeats):
        measured.append(X.shape)
        return (2.0 if len(measured) == 1 else 1e15), "test"  # wrong again, then right

    monkeypatch.setattr(compare._roofline, "read_bandwidth", read_bandwidth)
    monkeypatch.setattr(compare._roofline, "gemm_rate", lambda n, repeats: (1.0, "test"))
    compare._remeasure_impossible_limits(report, quick=True, remeasures=3)
    assert measured == [(1_000, 64), (1_000, 64)]
    assert all(0 < r.fraction_of_limit <= 1 for r in report.results)

    report.read_bandwidth = {"1000x64": 1.0}
    monkeypatch.setattr(compare._roofline, "read_bandwidth", lambda X, repeats: (1.0, "test"))
    compare._fill_limits(report)
    compare._remeasure_impossible_limits(report, quick=True, remeasures=2)
    assert all(r.fraction_of_limit is None and "beat the limit" in r.limit_note for r in report.results)
    assert all(row[-1] == "–" for row in compare.table_rows(report)[1:])
    assert any("even after measuring the limit again" in line for line in compare.noise_lines(report))


def test_plot_title_names_only_the_backends_that_ran():
    assert compare.peers_title(["fastlin-cpu-1t", "fastlin-cpu", "numpy"]) == "fastlin CPU vs numpy"
    assert compare.peers_title(["fastlin-cpu", "numpy", "torch"]) == "fastlin CPU vs numpy/torch"
    assert compare.peers_title(["fastlin-cuda", "fastlin-cpu", "numpy", "jax"]) == "fastlin CPU and CUDA vs numpy/JAX"
    assert compare.peers_title(["numpy", "torch"]) == "no fastlin vs numpy/torch"
