"""What a person sees: the progress bar, History.plot and the demo's --plot.

Speed is not measured here (timings belong in bench/); that progress stays
cheap is checked by counting compiled calls and redraws instead.
"""

import subprocess
import sys

import numpy as np
import pytest

import fastlin
from fastlin import _progress
from fastlin.backends import cpu_ops

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def tiny_problem(seed=0):
    rng = np.random.default_rng(seed)
    X = rng.random((16, 5))
    T = X @ rng.random((5, 2)) + 0.5
    return X, T


def count_compiled_calls(monkeypatch):
    """Wrap the CPU backend's fit loop; returns the list of steps per call."""
    calls = []
    real = cpu_ops.fit_steps

    def counting(*args):
        done, status = real(*args)
        calls.append(done)
        return done, status

    monkeypatch.setattr(cpu_ops, "fit_steps", counting)
    return calls


def assert_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert len(data) > 1000  # a real image, not just a header


# ----------------------------------------------------------------------
# progress
# ----------------------------------------------------------------------
def test_fit_is_silent_by_default(capsys):
    X, T = tiny_problem()
    fastlin.Linear(5, 2, seed=0).fit(X, T, steps=50, lr=0.05)
    out, err = capsys.readouterr()
    assert out == "" and err == ""


def test_progress_bar_with_tqdm_shows_steps_and_loss(capsys):
    pytest.importorskip("tqdm", reason="tqdm is not installed (pip install 'fastlin[progress]')")
    X, T = tiny_problem()
    history = fastlin.Linear(5, 2, seed=0).fit(X, T, steps=200, lr=0.05, progress=True)
    err = capsys.readouterr().err
    assert "200/200" in err
    assert "step" in err  # tqdm's unit
    # The last loss shown is the last step's.
    assert f"loss={history.loss[-1]:.6g}" in err


def test_progress_falls_back_to_a_plain_line_without_tqdm(monkeypatch, capsys):
    # A None entry in sys.modules makes "import tqdm" raise ImportError.
    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    assert isinstance(_progress.progress(10, True), _progress._LineProgress)
    X, T = tiny_problem()
    history = fastlin.Linear(5, 2, seed=0).fit(X, T, steps=120, lr=0.05, progress=True)
    err = capsys.readouterr().err
    last_line = err.rstrip("\n").split("\r")[-1]
    assert last_line == f"step 120/120  loss {history.loss[-1]:.6g}"
    assert err.endswith("\n")


@pytest.mark.parametrize("tqdm_installed", [True, False])
def test_progress_keeps_a_tiny_fit_in_few_compiled_calls(monkeypatch, tqdm_installed, capsys):
    if tqdm_installed:
        pytest.importorskip("tqdm", reason="tqdm is not installed")
    else:
        monkeypatch.setitem(sys.modules, "tqdm", None)
        monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    X, T = tiny_problem()
    fastlin.Linear(5, 2, seed=0).fit(X, T, steps=5, lr=0.05)  # compile outside the count
    calls = count_compiled_calls(monkeypatch)
    fastlin.Linear(5, 2, seed=0).fit(X, T, steps=2000, lr=0.05)
    assert calls == [2000]  # without progress: one call
    calls.clear()
    fastlin.Linear(5, 2, seed=0).fit(X, T, steps=2000, lr=0.05, progress=True)
    # With progress: one step to measure the speed, then segments of about
    # 0.1 s.  A 2000-step fit of this size takes far less than that, so a
    # handful of calls at most, never one per step.
    assert sum(calls) == 2000
    assert len(calls) <= 4


def test_line_progress_redraws_at_most_ten_times_a_second(monkeypatch):
    clock = {"now": 1000.0}
    monkeypatch.setattr(_progress.time, "perf_counter", lambda: clock["now"])

    class Stream:
        def __init__(self):
            self.writes = []

        def write(self, text):
            self.writes.append(text)

        def flush(self):
            pass

    stream = Stream()
    bar = _progress._LineProgress(total=5000, stream=stream)
    for step in range(1, 5001):  # 5000 updates over 2 simulated seconds
        clock["now"] += 0.0004
        bar.update(step, 1.0 / step)
    draws = [w for w in stream.writes if w.startswith("\r")]
    assert 15 <= len(draws) <= 21  # ~10 per second, never once per update
    bar.close()
    assert stream.writes[-2] == "\rstep 5000/5000  loss 0.0002"
    assert stream.writes[-1] == "\n"


def test_tqdm_bar_is_rate_limited():
    tqdm = pytest.importorskip("tqdm", reason="tqdm is not installed").tqdm
    created = []

    def make(**kwargs):
        bar = tqdm(**kwargs, disable=True)
        created.append(kwargs)
        return bar

    bar = _progress._TqdmProgress(make, 10)
    bar.close()
    assert created[0]["mininterval"] == _progress.REFRESH_SECONDS == 0.1


# ----------------------------------------------------------------------
# plots
# ----------------------------------------------------------------------
@pytest.fixture
def pyplot():
    matplotlib = pytest.importorskip("matplotlib", reason="matplotlib is not installed (pip install 'fastlin[plot]')")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    yield plt
    plt.close("all")


def test_history_plot_writes_a_png(tmp_path, pyplot):
    X, T = tiny_problem()
    history = fastlin.Linear(5, 2, seed=0).fit(X, T, steps=40, lr=0.05)
    path = tmp_path / "loss.png"
    ax = history.plot(path=path, log=True)
    assert_png(path)
    assert ax.get_yscale() == "log"
    (line,) = ax.get_lines()
    np.testing.assert_array_equal(line.get_ydata(), history.loss)
    np.testing.assert_array_equal(line.get_xdata(), np.arange(1, 41))


def test_saving_plots_in_a_loop_does_not_pile_up_figures(tmp_path, pyplot):
    # Under Agg (not interactive) a figure made only to be saved is closed;
    # matplotlib warns (an error under this suite's filterwarnings) past 20.
    X, T = tiny_problem()
    history = fastlin.Linear(5, 2, seed=0).fit(X, T, steps=5, lr=0.05)
    open_before = len(pyplot.get_fignums())
    for i in range(21):  # the 21st open figure would warn
        ax = history.plot(path=tmp_path / f"loss{i}.png")
    assert len(pyplot.get_fignums()) == open_before
    ax.figure.savefig(tmp_path / "again.png")  # the returned Axes still works
    assert_png(tmp_path / "again.png")


def test_history_plot_draws_into_a_given_axes(pyplot):
    X, T = tiny_problem()
    history = fastlin.Linear(5, 2, seed=0).fit(X, T, steps=10, lr=0.05)
    fig, ax = pyplot.subplots()
    assert history.plot(ax=ax, title="mine") is ax
    assert ax.get_title() == "mine" and ax.get_yscale() == "linear"
    assert len(ax.get_lines()) == 1


def test_demo_plot_writes_a_png_and_keeps_the_blog_output(tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib is not installed")
    path = tmp_path / "demo.png"
    result = subprocess.run(
        [sys.executable, "-m", "fastlin", "demo", "--steps", "7", "--plot", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**_env_without_display(), "MPLBACKEND": "Agg"},
    )
    assert result.returncode == 0, result.stderr
    assert_png(path)
    loss_lines = [line for line in result.stdout.splitlines() if line.startswith("[ Info: step ")]
    assert len(loss_lines) == 7  # one loss line per iteration, as in the blog
    losses = [float(line.rsplit(" ", 1)[1]) for line in loss_lines]
    assert losses[-1] < losses[0]
    assert f"loss curve written to {path}" in result.stdout


def _env_without_display():
    import os

    return {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
