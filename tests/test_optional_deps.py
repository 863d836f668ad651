"""Optional dependencies stay optional: ``import fastlin`` pulls in none of
them, and each feature that needs one says how to install it.

These tests need none of the optional packages, so they run everywhere.
"""

import importlib
import subprocess
import sys

import numpy as np
import pytest

import fastlin

OPTIONAL = ("sklearn", "matplotlib", "tqdm", "torch", "dask", "pandas")


def test_import_fastlin_imports_no_optional_dependency():
    code = f"import sys, fastlin; print(' '.join(m for m in {OPTIONAL!r} if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


def test_fastlin_sklearn_without_scikit_learn_says_how_to_install(monkeypatch):
    # None in sys.modules makes "import sklearn" raise ImportError.
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.delitem(sys.modules, "fastlin.sklearn", raising=False)
    with pytest.raises(ImportError, match=r"pip install 'fastlin\[sklearn\]'"):
        importlib.import_module("fastlin.sklearn")


def test_history_plot_without_matplotlib_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    history = fastlin.History(np.array([3.0, 2.0, 1.0]), seconds=0.0)
    with pytest.raises(ImportError, match=r"pip install 'fastlin\[plot\]'"):
        history.plot()
