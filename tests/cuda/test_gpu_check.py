"""``bash bench/gpu_check.sh --dry-run``: the GPU machine's one command, run in
numba's simulator with tiny sizes, writes what that machine can send back.

The rules (shared/GPU.md, section 3): at most 8 files under $OUT, each under
16 MiB, no deeper than $OUT/a/b/file, names of letters, digits, ``.``, ``_``,
``-``; the short table printed last; nothing else (no numba cache) in $OUT.

Slow (about two minutes: every benchmark call is simulated), and only where
the simulator is on: on a GPU the script itself is the check.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NAME = re.compile(r"^[A-Za-z0-9._-]+$")
EXPECTED = {"bench_gpu.json", "compare.json", "summary.txt", "table.txt", "logs.tar.gz"}


@pytest.mark.slow
def test_dry_run_writes_the_layout_the_gpu_machine_returns(tmp_path, simulated):
    if not simulated:
        pytest.skip("the dry run is for machines without a GPU (NUMBA_ENABLE_CUDASIM=1)")
    if shutil.which("bash") is None or shutil.which("timeout") is None:
        pytest.skip("needs bash and coreutils' timeout")
    out = tmp_path / "out"
    env = dict(os.environ, OUT=str(out))
    proc = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu_check.sh"), "--dry-run"],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) <= 8, files
    assert {p.name for p in files} == EXPECTED
    for p in files:
        rel = p.relative_to(out)
        assert len(rel.parts) <= 3, rel
        assert all(NAME.match(part) for part in rel.parts), rel
        assert p.stat().st_size < 16 * 2**20, rel
    assert not any(p.is_dir() for p in out.iterdir()), "scratch (e.g. the numba cache) must stay in /tmp"
    summary = (out / "summary.txt").read_text()
    for step in ("numpy", "kernel-smoke", "bench-gpu", "compare", "tiny-fit", "tests-cuda", "tests-cuda-256"):
        line = next((s for s in summary.splitlines() if s.startswith(step + " ")), None)
        assert line is not None, (step, summary)
        assert "TIMED OUT" not in line and "STOP" not in line, line
    assert "DRY RUN" in summary
    # the short table comes last in what is printed
    tail = proc.stdout.rstrip().splitlines()
    table = (out / "table.txt").read_text().rstrip().splitlines()
    assert tail[-len(table) :] == table
    assert any("gpu-step:tall" in row for row in table), table
    with tarfile.open(out / "logs.tar.gz") as tar:
        names = {Path(n).name for n in tar.getnames()}
    assert {"bench-gpu.log", "tests-cuda.log", "versions.txt"} <= names, names
