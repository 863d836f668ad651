"""fastlin._jit keeps numba's on-disk cache from serving stale kernels.

numba keys a cached kernel by its own source file, so a change to a module
it inlines from (rules.py, counters.py, permute.py, abi.py) would leave old
machine code in use.  These tests edit such a module in a copy of the
package and check that the kernel is compiled afresh, and test the pieces.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import fastlin
from fastlin import _jit

# Runs in a fresh process against the package copy: one kernel that inlines
# permute.py, and whether it came from the cache.
_PROBE = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, sys.argv[1])
    import numpy as np
    from fastlin import _jit
    from fastlin.backends import cpu
    assert cpu.__file__.startswith(sys.argv[1]), cpu.__file__
    perm = np.empty(50, dtype=np.int64)
    cpu.epoch_permutation(np.uint64(7), 0, perm)
    stats = cpu.epoch_permutation.stats
    print(json.dumps({
        "perm": perm.tolist(),
        "hits": sum(stats.cache_hits.values()),
        "misses": sum(stats.cache_misses.values()),
        "cache": _jit.CACHE,
    }))
    """
)


def _run(root, env):
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, str(root)], env=env, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("where", ["NUMBA_CACHE_DIR", "in-tree"])
def test_an_edit_to_an_inlined_module_is_not_served_from_the_cache(tmp_path, where):
    root = tmp_path / "copy"
    shutil.copytree(Path(fastlin.__file__).parent, root / "fastlin", ignore=shutil.ignore_patterns("__pycache__"))
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "FASTLIN_CACHE", "NUMBA_DISABLE_JIT")}
    if where == "NUMBA_CACHE_DIR":
        env["NUMBA_CACHE_DIR"] = str(tmp_path / "numba-cache")

    first = _run(root, env)
    assert first["cache"] and first["misses"] == 1
    again = _run(root, env)  # unchanged sources: the cache serves the kernel
    assert again["hits"] == 1 and again["misses"] == 0 and again["perm"] == first["perm"]

    permute = root / "fastlin" / "backends" / "permute.py"
    source = permute.read_text()
    assert "0x9E3779B9" in source
    permute.write_text(source.replace("0x9E3779B9", "0x9E3779BB"))  # another round-key constant
    edited = _run(root, env)
    assert edited["misses"] == 1 and edited["hits"] == 0
    assert edited["perm"] != first["perm"] and sorted(edited["perm"]) == list(range(50))
    settled = _run(root, env)  # and the new kernel is cached in turn
    assert settled["hits"] == 1 and settled["perm"] == edited["perm"]


def _fake_package(tmp_path):
    backends = tmp_path / "pkg" / "backends"
    backends.mkdir(parents=True)
    for name in ("cpu.py", "rules.py"):
        (backends / name).write_text(f"# {name}\n")
    (backends.parent / "_jit.py").write_text("# jit\n")
    return backends


def test_the_digest_follows_every_source_file(tmp_path):
    backends = _fake_package(tmp_path)
    base = _jit.sources_digest(backends)
    assert _jit.sources_digest(backends) == base
    (backends / "rules.py").write_text("# rules, edited\n")
    edited = _jit.sources_digest(backends)
    (backends / "counters.py").write_text("# new\n")
    added = _jit.sources_digest(backends)
    (backends.parent / "_jit.py").write_text("# jit, other flags\n")
    assert len({base, edited, added, _jit.sources_digest(backends)}) == 4


def test_only_fastlin_kernels_are_dropped_and_only_when_stale(tmp_path):
    backends = _fake_package(tmp_path)
    cache = tmp_path / "cache"
    cache.mkdir()
    ours = ["cpu.fused_step-900.py311.nbi", "cpu.fused_step-900.py311.1.nbc", "rules.f-3.py311.nbi"]
    theirs = ["other.f-1.py311.nbi", "cpu.cpython-311.pyc", "notes.txt"]
    for name in ours + theirs:
        (cache / name).write_text("x")
    assert _jit.drop_stale_kernels(cache, "aaaa", backends)  # nothing recorded yet: stale
    assert sorted(p.name for p in cache.iterdir()) == sorted(theirs + [_jit.DIGEST_FILE])
    for name in ours:
        (cache / name).write_text("x")
    assert not _jit.drop_stale_kernels(cache, "aaaa", backends)  # same digest: kept
    assert all((cache / name).exists() for name in ours)
    assert _jit.drop_stale_kernels(cache, "bbbb", backends)
    assert not any((cache / name).exists() for name in ours)
    assert (cache / _jit.DIGEST_FILE).read_text().strip() == "bbbb"


def test_the_cache_directory_is_numbas_own_choice(tmp_path, monkeypatch):
    import numba

    monkeypatch.setattr(numba.config, "CACHE_DIR", str(tmp_path))
    found = _jit.kernel_cache_dir()
    assert found.parent == tmp_path and found.name.startswith("backends_")
    monkeypatch.setattr(numba.config, "CACHE_DIR", "")
    if os.access(Path(fastlin.__file__).parent / "backends", os.W_OK):
        assert _jit.kernel_cache_dir() == Path(fastlin.__file__).resolve().parent / "backends" / "__pycache__"


# Runs in a fresh process: the serial twin of a kernel_pair first, then the
# parallel one, saying after each whether numba's thread pool has started
# (numba.threading_layer() raises until a parallel kernel has run).
_TWINS = textwrap.dedent(
    """
    import json
    import numba
    import numpy as np
    from fastlin.backends import cpu

    def pool_started():
        try:
            numba.threading_layer()
        except ValueError:
            return False
        return True

    X, W, b = np.ones((40, 3)), np.ones((2, 3)), np.zeros(2)
    Y = np.empty((40, 2))
    cpu.forward(X, W, b, Y)
    after_serial = pool_started()
    cpu.forward_parallel(X, W, b, Y)
    print(json.dumps({
        "after_serial": after_serial,
        "after_parallel": pool_started(),
        "hits": [sum(d.stats.cache_hits.values()) for d in (cpu.forward, cpu.forward_parallel)],
    }))
    """
)


def test_the_twins_of_a_kernel_pair_have_their_own_cache_entries(tmp_path):
    # numba's cache key has no `parallel` flag: twins compiled from one
    # function under one name shared an entry, and the first compiled was
    # served for both (a parallel forward pass that ran serially)
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "NUMBA_DISABLE_JIT")}
    env["NUMBA_CACHE_DIR"] = str(tmp_path / "numba-cache")
    runs = []
    for _ in range(2):  # compiled (and cached), then loaded from the cache
        out = subprocess.run([sys.executable, "-c", _TWINS], env=env, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    assert runs[0]["hits"] == [0, 0] and runs[1]["hits"] == [1, 1]
    for run in runs:
        assert run["after_serial"] is False and run["after_parallel"] is True
    names = {p.name.split("-")[0] for p in (tmp_path / "numba-cache").rglob("cpu._forward*.nbi")}
    assert names == {"cpu._forward", "cpu._forward_parallel"}
