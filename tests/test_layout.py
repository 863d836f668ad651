"""The package's layout: the core never loads the tooling, or a peer framework.

``fastlin.tools`` (compare, peers, roofline) serves ``python -m fastlin
compare`` and bench/; ``import fastlin``, a CPU fit and ``python -m fastlin
demo`` must not pay for it, nor for torch, JAX, scikit-learn, dask, pandas,
matplotlib or tqdm.  Each check runs in a fresh interpreter, because this
test process has long since imported most of them.  A static check of the
import statements backs them up: it also sees the imports inside functions
that a run does not reach.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "fastlin"

# Top-level names: a module counts when it is one of these or inside one.
TOOLING = ("fastlin.tools",)
HEAVY = ("torch", "jax", "sklearn", "dask", "distributed", "matplotlib", "tqdm", "pandas", "threadpoolctl")


def _loaded_after(code):
    """The modules under TOOLING or HEAVY that a fresh interpreter holds after running ``code``."""
    probe = textwrap.dedent(code) + textwrap.dedent(
        f"""
        import json, sys
        names = {TOOLING + HEAVY!r}
        print(json.dumps(sorted(m for m in sys.modules if any(m == n or m.startswith(n + ".") for n in names))))
        """
    )
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_import_fastlin_and_a_cpu_fit_load_no_tooling_and_no_peer():
    loaded = _loaded_after(
        """
        import numpy as np
        import fastlin

        rng = np.random.default_rng(7)
        X = rng.standard_normal((11, 5))
        T = rng.standard_normal((11, 2))
        model = fastlin.Linear(5, 2, device="cpu", seed=3)
        history = model.fit(X, T, steps=3)
        assert len(history) == 3 and np.isfinite(history.loss).all()
        assert model.forward(X).shape == (11, 2)
        """
    )
    assert loaded == []


def test_the_command_line_loads_the_tools_only_for_compare():
    # Importing the CLI and building its parser (every subcommand registered)
    # loads no tool; neither does running the demo, training included.
    assert _loaded_after("import fastlin.__main__ as cli; cli.build_parser()") == []
    loaded = _loaded_after(
        """
        import contextlib, io
        from fastlin.__main__ import main

        with contextlib.redirect_stdout(io.StringIO()):
            assert main(["demo", "--steps", "3"]) == 0
        """
    )
    assert loaded == []


def test_the_compare_subcommand_does_load_the_tools():
    # The other side of the checks above: the probe sees fastlin.tools when it is there.
    loaded = _loaded_after(
        """
        import contextlib, io
        from fastlin.__main__ import main

        with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
            main(["compare", "--help"])
        """
    )
    assert "fastlin.tools.compare" in loaded


# --------------------------------------------------------------------------
# the import statements themselves, module level and inside functions
# --------------------------------------------------------------------------
def _module_name(path):
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path):
    """Every module ``path`` imports (absolute names, relative imports resolved), wherever the statement is."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def _within(module, prefix):
    return module == prefix or module.startswith(prefix + ".")


# The core: every module but the tools and the CLI.  fastlin/__main__.py may
# import fastlin.tools.compare, inside its compare subcommand only (the
# subprocess checks above hold it to that).
CORE = sorted(
    p for p in PACKAGE.rglob("*.py") if not _within(_module_name(p), "fastlin.tools") and p != PACKAGE / "__main__.py"
)
TOOLS = sorted((PACKAGE / "tools").rglob("*.py"))


def test_the_static_check_sees_imports_inside_functions():
    probe = PACKAGE / "tools" / "compare.py"  # its pyplot import sits inside plot()
    assert "fastlin._plot.pyplot" in _imports(probe)
    assert "fastlin.tools.peers" in _imports(probe)  # `from . import peers as _peers`
    assert any(_within(m, "fastlin.tools") for m in _imports(PACKAGE / "__main__.py"))


def test_the_core_never_imports_the_tools():
    offenders = {
        str(p.relative_to(PACKAGE.parent)): found
        for p in CORE
        if (found := sorted(m for m in _imports(p) if _within(m, "fastlin.tools")))
    }
    assert offenders == {}


def test_the_tools_never_import_the_command_line():
    # __main__ imports the tools; an import back would be a cycle.
    offenders = {
        str(p.relative_to(PACKAGE.parent)): found
        for p in TOOLS
        if (found := sorted(m for m in _imports(p) if _within(m, "fastlin.__main__")))
    }
    assert offenders == {}
