"""What a new user meets in their first ten minutes, run the way they run it:
each test starts a fresh interpreter (``python -m fastlin ...``, a script,
an example) and checks what is printed and the exit status.

The numba cache is shared with the rest of the suite (only the compile
notice test uses a fresh one), so most of these take a second or two.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import fastlin

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
HIDE_MATPLOTLIB = "import sys; sys.modules['matplotlib'] = None; sys.modules['matplotlib.pyplot'] = None\n"


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env["MPLBACKEND"] = "Agg"
    env.update(extra)
    return env


def run(args, *, cwd=None, timeout=180, **env):
    """Run ``python ARGS`` as a user would; returns the CompletedProcess."""
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd, env=_env(**env), check=False
    )


def run_script(code, *, cwd=None, **env):
    return run(["-c", textwrap.dedent(code)], cwd=cwd, **env)


def stderr_of(proc):
    """stderr without the compile notice (which a cold cache adds to any command)."""
    return "".join(line for line in proc.stderr.splitlines(keepends=True) if not line.startswith("fastlin: compiling"))


def assert_one_line_error(proc, *needles, status=2):
    """Exit status ``status``, one line on stderr holding every needle, no traceback."""
    assert proc.returncode == status, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = [line for line in stderr_of(proc).splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def info_losses(text):
    return [float(m.group(1)) for m in re.finditer(r"^\[ Info: step \d+/\d+: loss (\S+)$", text, re.MULTILINE)]


# ----------------------------------------------------------------------
# the README's tour, pasted into a script
# ----------------------------------------------------------------------
def readme_tour_block():
    text = (ROOT / "README.md").read_text()
    tour = text[text.index("## A tour, starting from the blog") :]
    return re.search(r"```python\n(.*?)```", tour, re.DOTALL).group(1)


def test_readme_tour_prints_the_log_in_a_plain_script(tmp_path):
    script = tmp_path / "tour.py"
    script.write_text(readme_tour_block())
    proc = run([str(script)], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    losses = info_losses(proc.stdout)
    assert len(losses) == 100  # log_every=1: one line per step, no logging set-up needed
    assert all(b < a for a, b in itertools.pairwise(losses))
    last = float(proc.stdout.strip().splitlines()[-1])  # print(history.loss[-1])
    assert last == pytest.approx(losses[-1], rel=1e-8)
    assert stderr_of(proc) == ""  # float64 model, float64 data: no cast notice


def test_log_every_goes_through_logging_once_it_is_configured():
    code = """
        import logging, numpy as np, fastlin
        logging.basicConfig(level=logging.INFO, format="LOG %(name)s %(levelname)s %(message)s")
        x = np.linspace(0, 1, 5)
        fastlin.Linear(5, 2, dtype=np.float64, seed=0).fit(x, np.ones(2), steps=6, lr=0.05, log_every=2)
    """
    proc = run_script(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""  # nothing printed behind the user's logging configuration
    logged = re.findall(r"^LOG fastlin INFO step (\d+)/6: loss \S+$", stderr_of(proc), re.MULTILINE)
    assert logged == ["2", "4", "6"]


def test_log_every_respects_a_logging_level_above_info():
    code = """
        import logging, numpy as np, fastlin
        logging.basicConfig(level=logging.WARNING)
        fastlin.Linear(5, 2, dtype=np.float64, seed=0).fit(np.ones(5), np.ones(2), steps=3, lr=0.05, log_every=1)
        logging.getLogger().handlers.clear()
        logging.getLogger("fastlin").setLevel(logging.ERROR)
        fastlin.Linear(5, 2, dtype=np.float64, seed=0).fit(np.ones(5), np.ones(2), steps=3, lr=0.05, log_every=1)
        print("done")
    """
    proc = run_script(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "done\n" and stderr_of(proc) == ""


# ----------------------------------------------------------------------
# one-time notices
# ----------------------------------------------------------------------
def test_first_compile_says_so_once_and_a_warm_cache_says_nothing(tmp_path):
    code = """
        import numpy as np, fastlin
        X, T = np.ones((4, 3), np.float32), np.ones(4, np.float32)
        fastlin.Linear(3, 1, seed=0).fit(X, T, steps=2)
        fastlin.Linear(3, 1, seed=0, bias=False).fit(X, T, steps=2, lr=0.1)
        print("trained")
    """
    cache = tmp_path / "numba-cache"
    cold = run_script(code, NUMBA_CACHE_DIR=str(cache), FASTLIN_CACHE="1")
    assert cold.returncode == 0, cold.stderr
    assert cold.stdout == "trained\n"
    assert cold.stderr == "fastlin: compiling kernels for first use (up to a minute; cached afterwards)\n"
    warm = run_script(code, NUMBA_CACHE_DIR=str(cache), FASTLIN_CACHE="1")
    assert warm.returncode == 0, warm.stderr
    assert warm.stdout == "trained\n" and warm.stderr == ""


def test_float64_data_for_a_float32_model_is_noted_once_per_model():
    code = """
        import numpy as np, fastlin
        X = np.random.default_rng(0).random((50, 4))          # float64
        T = X.sum(axis=1)
        a = fastlin.Linear(4, 1, seed=0)                       # float32
        for _ in range(3):
            a.fit(X, T, steps=2); a(X)
        b = fastlin.Linear(4, 1, seed=0)
        b.fit(X, T, steps=2)
        fastlin.Linear(4, 1, seed=0).fit(X.astype(np.float32), T.astype(np.float32), steps=2)
        fastlin.Linear(4, 1, seed=0, dtype=np.float64).fit(X, T, steps=2)
        print("ok")
    """
    proc = run_script(code)
    assert proc.returncode == 0, proc.stderr
    notes = [line for line in proc.stderr.splitlines() if "copied and cast on every call" in line]
    assert len(notes) == 2, proc.stderr  # once for a, once for b; none for matching dtypes
    assert notes[0].startswith("X is float64 but the fastlin model is float32")
    assert "X = X.astype(np.float32)" in notes[0] and "dtype=np.float64" in notes[0]


def test_cuda_unavailable_reason_is_offered_directly():
    proc = run_script("import fastlin; print(fastlin.cuda_available()); print(fastlin.cuda_unavailable_reason())")
    assert proc.returncode == 0, proc.stderr
    available, reason = proc.stdout.strip().split("\n", 1)
    assert available in ("True", "False")
    assert (available == "True") == (reason == "None")
    if available == "False":
        assert len(reason) > 20  # a sentence, e.g. "numba-cuda is not importable ...; install it with: pip ..."
    assert "cuda_unavailable_reason" in fastlin.__all__


def test_history_repr_is_one_short_line():
    import numpy as np

    X = np.random.default_rng(0).random((30, 3))
    history = fastlin.Linear(3, 1, dtype=np.float64, seed=0).fit(X, X.sum(axis=1), steps=400, lr=0.1)
    text = repr(history)
    assert "\n" not in text and len(text) < 100
    assert text.startswith("History(400 steps, loss ")
    assert f"{history.loss[0]:.6g} -> {history.loss[-1]:.6g}" in text and text.endswith(" s)")
    assert (
        repr(fastlin.History(np.array([2.0]), 0.5, stopped_early=True))
        == "History(1 step, loss 2 -> 2, 0.5 s, stopped early)"
    )


# ----------------------------------------------------------------------
# the demo
# ----------------------------------------------------------------------
def test_demo_says_what_the_final_loss_is():
    proc = run(["-m", "fastlin", "demo", "--steps", "20"])
    assert proc.returncode == 0, proc.stderr
    losses = info_losses(proc.stdout)
    assert len(losses) == 20
    final, before = map(
        float,
        re.search(
            r"^final loss: (\S+) \(after the last update; (\S+) before training\)$", proc.stdout, re.MULTILINE
        ).groups(),
    )
    assert final < losses[-1] and before == pytest.approx(losses[0], rel=1e-5)
    assert "warning" not in proc.stderr


def test_demo_warns_when_the_loss_grows():
    proc = run(["-m", "fastlin", "demo", "--lr", "5"])
    assert proc.returncode == 1, proc.stderr
    assert re.search(
        r"^warning: the loss grew from \S+ to \S+: the learning rate \(--lr 5\) is probably too large",
        proc.stderr,
        re.MULTILINE,
    )
    assert "Traceback" not in proc.stderr


def test_history_loss_grew():
    import numpy as np

    assert fastlin.History(np.array([1.0, 20.0]), 0.0).loss_grew
    assert not fastlin.History(np.array([1.0, 9.0]), 0.0).loss_grew
    assert not fastlin.History(np.array([1.0]), 0.0).loss_grew


def test_demo_plot_to_a_missing_directory_fails_before_training():
    proc = run(["-m", "fastlin", "demo", "--plot", "/missing-dir/x.png"])
    assert_one_line_error(proc, "python -m fastlin demo: error:", "'/missing-dir' does not exist")
    assert proc.stdout == ""  # nothing trained


def test_demo_plot_without_matplotlib_fails_before_training():
    code = HIDE_MATPLOTLIB + "from fastlin.__main__ import main; sys.exit(main(['demo', '--plot', 'loss.png']))"
    proc = run(["-c", code])
    assert_one_line_error(proc, "plotting needs matplotlib: pip install 'fastlin[plot]'")
    assert proc.stdout == ""


def test_demo_plot_with_a_file_type_matplotlib_cannot_write():
    pytest.importorskip("matplotlib", reason="matplotlib is not installed")
    proc = run(["-m", "fastlin", "demo", "--plot", "loss.notanimage"])
    assert_one_line_error(proc, "matplotlib cannot write .notanimage files", ".png")
    assert proc.stdout == ""


def test_demo_help_has_a_description():
    proc = run(["-m", "fastlin", "demo", "--help"])
    assert proc.returncode == 0
    assert proc.stdout.startswith("usage: python -m fastlin demo")
    assert "W = rand(2,5)" in proc.stdout and "measured after the last update" in proc.stdout


# ----------------------------------------------------------------------
# the command line
# ----------------------------------------------------------------------
def _console_script():
    here = Path(sys.executable).parent / ("fastlin.exe" if os.name == "nt" else "fastlin")
    return str(here) if here.exists() else shutil.which("fastlin")


def test_version():
    proc = run(["-m", "fastlin", "--version"])
    assert proc.returncode == 0 and proc.stdout == f"fastlin {fastlin.__version__}\n"
    script = _console_script()
    if script is None:
        pytest.skip("the fastlin console script is not installed (pip install -e .)")
    proc = subprocess.run([script, "--version"], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0 and proc.stdout == f"fastlin {fastlin.__version__}\n"


def test_usage_names_the_command_as_it_was_run():
    proc = run(["-m", "fastlin"])
    assert proc.returncode == 2 and proc.stderr.startswith("usage: python -m fastlin ")
    script = _console_script()
    if script is None:
        pytest.skip("the fastlin console script is not installed (pip install -e .)")
    proc = subprocess.run([script, "demo", "--help"], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0 and proc.stdout.startswith("usage: fastlin demo ")


def test_compare_to_an_unwritable_directory_fails_before_measuring(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    for out in ("/proc/nope", str(blocker / "sub"), str(blocker)):
        proc = run(["-m", "fastlin", "compare", "--quick", "--out", out], cwd=tmp_path, timeout=60)
        assert_one_line_error(proc, "python -m fastlin compare: error:", repr(out))
        assert "measuring" not in proc.stdout and proc.stdout == ""


def test_compare_says_before_measuring_what_it_will_not_do(tmp_path):
    # No matplotlib, and no fastlin backend among --backends: both are said
    # before the measuring starts, and the run still completes.
    code = HIDE_MATPLOTLIB + (
        "from fastlin.__main__ import main; sys.exit(main(['compare', '--quick', '--backends', 'numpy', '--sizes', '16', "
        f"'--shapes', '4x1', '--budget', '0.001', '--out', {str(tmp_path)!r}]))"
    )
    proc = run(["-c", code], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("measuring"))
    no_plot = next(i for i, line in enumerate(lines) if line.startswith("no plot: plotting needs matplotlib"))
    no_fastlin = next(
        i for i, line in enumerate(lines) if "names no fastlin backend, so fastlin will not be measured" in line
    )
    assert no_plot < start and no_fastlin < start
    assert "comparing fastlin" not in proc.stdout
    assert (tmp_path / "compare.json").exists() and not (tmp_path / "compare.png").exists()


# ----------------------------------------------------------------------
# the examples
# ----------------------------------------------------------------------
def _first_paragraph(path):
    doc = re.search(r'"""(.*?)"""', path.read_text(), re.DOTALL).group(1)
    return " ".join(doc.strip().split("\n\n")[0].split())


@pytest.mark.parametrize("name", ["blog_linear_model.py", "cpu_vs_gpu.py", "two_layers_backward.py", "diabetes.py"])
def test_example_help_is_complete(name):
    proc = run([str(EXAMPLES / name), "--help"])
    assert proc.returncode == 0, proc.stderr
    first = _first_paragraph(EXAMPLES / name)
    assert first.endswith((".", ":", ")")), first
    assert first in " ".join(proc.stdout.split())  # the whole paragraph, not cut mid-sentence
    options = re.findall(r"^  (--[a-z-]+)(?: [A-Z_]+)?\s*(.*)$", proc.stdout, re.MULTILINE)
    assert options and all(text.strip() for _, text in options), proc.stdout  # every option explained


def test_cpu_vs_gpu_options_have_defaults():
    proc = run([str(EXAMPLES / "cpu_vs_gpu.py"), "--help"])
    helps = " ".join(proc.stdout.split())
    for option in ("--rows", "--features", "--outputs", "--steps", "--lr", "--seed"):
        assert re.search(re.escape(option) + r" [A-Z]+ (?:(?! --).)*?\(default [\d.]+\)", helps), option


def test_diabetes_without_scikit_learn_prints_the_install_command():
    hide = "import sys, runpy; sys.modules['sklearn'] = None; sys.argv = [{script!r}, *{args!r}]; "
    script = str(EXAMPLES / "diabetes.py")
    for args, status in ((["--help"], 0), ([], 2)):
        code = hide.format(script=script, args=args) + "runpy.run_path(sys.argv[0], run_name='__main__')"
        proc = run(["-c", code])
        assert proc.returncode == status, proc.stderr
        assert "Traceback" not in proc.stderr
        assert "pip install" in (proc.stdout if status == 0 else proc.stderr)
    assert stderr_of(proc).strip() == "diabetes.py needs scikit-learn: pip install 'fastlin[sklearn]'"


# ----------------------------------------------------------------------
# the test summary
# ----------------------------------------------------------------------
def test_cuda_tests_skip_with_one_line_when_there_is_no_cuda():
    if fastlin.cuda_available():
        pytest.skip("CUDA is usable here, so the CUDA tests run instead of skipping")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "tests/cuda/test_cuda_model.py",
            "tests/cuda/test_cuda_inputs.py",
            "-q",
            "-p",
            "no:cacheprovider",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    skipped = [line for line in proc.stdout.splitlines() if line.startswith("SKIPPED")]
    assert len(skipped) == 1, skipped  # one line, one reason, however many tests
    assert re.match(
        r"SKIPPED \[\d{2,}\] tests/cuda/conftest\.py:\d+: tests/cuda need a GPU, or NUMBA_ENABLE_CUDASIM=1", skipped[0]
    )


# ----------------------------------------------------------------------
# what an editor shows
# ----------------------------------------------------------------------
def _public_api():
    import fastlin.init

    L, S, H = fastlin.Linear, fastlin.SGD, fastlin.History
    A, AW = fastlin.Adam, fastlin.AdamW
    functions = [
        L.__init__,
        L.from_weights,
        L.forward,
        L.loss,
        L.gradients,
        L.backward,
        L.step,
        L.fit,
        L.numpy,
        L.to,
        L.copy,
        L.save,
        L.solve,
        S.__init__,
        S.reset,
        S.apply,
        S.lr_at,
        A.__init__,
        AW.__init__,
        fastlin.load,
        *(getattr(fastlin.schedules, name) for name in fastlin.schedules.__all__ if name != "Schedule"),
        H.plot,
        fastlin.mse_loss,
        fastlin.cuda_available,
        fastlin.cuda_unavailable_reason,
        *(f for f in fastlin.init.INITIALIZERS.values()),
    ]
    if hasattr(L, "solve"):
        functions.append(L.solve)
    for prop in (L.weight, L.bias, L.has_bias, H.steps, H.loss_grew):
        functions += [f for f in (prop.fget, prop.fset) if f is not None]
    return functions


def test_the_public_api_is_fully_annotated():
    import inspect
    import typing

    missing = []
    for fn in _public_api():
        hints = typing.get_type_hints(fn)  # also checks that every annotation resolves
        params = [p for p in inspect.signature(fn).parameters if p not in ("self", "cls")]
        lacking = [p for p in params if p not in hints] + ([] if "return" in hints else ["return"])
        if lacking:
            missing.append(f"{fn.__qualname__}: {', '.join(lacking)}")
    assert not missing, missing


def test_the_package_ships_py_typed():
    # PEP 561: without the marker a user's type checker ignores fastlin's hints.
    assert (Path(fastlin.__file__).parent / "py.typed").is_file()
    assert 'fastlin = ["py.typed"]' in (ROOT / "pyproject.toml").read_text()  # package data: it goes into the wheel
