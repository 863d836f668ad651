"""Every script in examples/ runs as it is (with small sizes) and prints
results that make sense.  Each runs in a fresh interpreter, as a user would."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

import fastlin

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(name, *args, tmp_path):
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env=_env(),
    )
    assert result.returncode == 0, f"{name} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def _env():
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env["MPLBACKEND"] = "Agg"
    return env


def numbers(pattern, text):
    """The numbers captured by the first match of ``pattern`` (a regex with groups)."""
    match = re.search(pattern, text, flags=re.MULTILINE)
    assert match, f"no line matches {pattern!r} in:\n{text}"
    return [float(g) for g in match.groups()]


def test_every_example_is_tested():
    scripts = {p.name for p in EXAMPLES.glob("*.py")}
    assert scripts == {"blog_linear_model.py", "diabetes.py", "two_layers_backward.py", "cpu_vs_gpu.py"}


def test_blog_linear_model(tmp_path):
    out = run_example("blog_linear_model.py", "--steps", "12", tmp_path=tmp_path)
    losses = [float(line.split()[-1]) for line in out.splitlines() if line.startswith("[ Info: ")]
    assert len(losses) == 12  # one @info line per iteration, as in the post
    assert all(b < a for a, b in zip(losses, losses[1:]))  # α small enough: every step helps
    before, after = numbers(r"part 2: loss (\S+) before training, (\S+) after 12 steps", out)
    assert after < 0.5 * before


def test_diabetes(tmp_path):
    pytest.importorskip("sklearn", minversion="1.6", reason="scikit-learn >= 1.6 is not installed")
    pytest.importorskip("matplotlib", reason="matplotlib is not installed")
    out = run_example("diabetes.py", "--cv", "3", "--plot", "loss.png", tmp_path=tmp_path)
    (ours,) = numbers(r"fastlin LinearRegressor: test R² (\S+)", out)
    (exact,) = numbers(r"sklearn LinearRegression: test R² (\S+)", out)
    assert ours > 0.3 and abs(ours - exact) < 1e-3
    (gap,) = numbers(r"largest coefficient difference: (\S+) of the largest", out)
    assert gap < 1e-4
    first, last = numbers(r"training loss \(MSE\): (\S+) -> (\S+)", out)
    assert last < 0.5 * first
    cv_scores = [float(v) for v in re.findall(r"weight_decay=\S+\s+mean CV R² (\S+)", out)]
    assert len(cv_scores) == 4 and all(0.3 < v < 1 for v in cv_scores)
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_two_layers_backward(tmp_path):
    out = run_example("two_layers_backward.py", "--steps", "150", "--rows", "64", tmp_path=tmp_path)
    (rel_error,) = numbers(r"relative error (\S+)", out)
    assert rel_error < 1e-5  # backward's chain rule agrees with a finite difference
    first, last, linear = numbers(r"loss (\S+) -> (\S+) after 150 steps \(best single linear layer: (\S+)\)", out)
    assert last < 0.2 * first
    assert last < linear  # the tanh network beats any single linear layer


def test_cpu_vs_gpu(tmp_path):
    out = run_example(
        "cpu_vs_gpu.py", "--rows", "3000", "--features", "16", "--outputs", "4", "--steps", "4", tmp_path=tmp_path
    )
    (ms,) = numbers(r"cpu:\s+(\S+) ms/step", out)
    assert ms > 0
    first, last = numbers(r"cpu:.*loss (\S+) -> (\S+)", out)
    assert last < first
    if fastlin.cuda_available():
        assert re.search(r"gpu:\s+\S+ ms/step", out)
        (diff,) = numbers(r"final weights differ by at most (\S+)", out)
        assert diff < 1e-3
    else:
        assert f"gpu: skipped: {fastlin.cuda_unavailable_reason()}" in out
