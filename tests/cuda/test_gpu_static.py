"""What the compiler says about fastlin's CUDA kernels for sm_90 (no GPU):
bench/gpu_static.py compiles every kernel (float32, the shipped launch
configuration) with numba-cuda, ``ptxas -v`` and ``nvdisasm``.

Asserted: no kernel spills registers; every block fits 48 KB of static
shared memory and one SM's registers at the block size it is launched with
(so the caps on FASTLIN_CUDA_TPB/TILE, which are the defaults, compile);
the hot kernels (those that stream X on the row-tile path) use 128-bit loads
and few fp32→fp64 conversions, and the many-block ones reach 50% occupancy
(fit_steps runs as one block: its occupancy means nothing).  D (in_features)
is a run-time value in every kernel, so these static counts are the same for
every D; the conversions inside the row loops are one per gradient element
and tile of rows (see fastlin.backends.cuda_rows, "Accuracy").  The tiled
plan's register-blocked products (residual, grad_partials) have no
conversion and no fp64 multiply-add in their innermost loops (float32
products, RB² of them per unrolled step; float64 data keep DFMA), so the
conversions per product do not grow with D; neither dtype spills.

Skipped, with the reason, without numba-cuda's CUDA 13 wheels, ptxas and
nvdisasm (``pip install "numba-cuda[cu13]" nvidia-cuda-nvcc
nvidia-cuda-nvdisasm``).  Runs in a subprocess without the simulator and with
the shipped block sizes, in about a minute.  (NEEDS_CUDA is False.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

NEEDS_CUDA = False
ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "gpu_static.py"
HOT = ("step_partials", "mse_grad", "fit_steps")
STREAMING = ("step_partials", "mse_grad")  # many blocks: occupancy matters (fit_steps is one block)
SHARED_STATIC_MAX = 48 * 1024
# fp32→fp64 conversions (static SASS count) in a hot kernel; the kernels
# before the row tiles had 44-48, one per multiply-add in their loops.
F2F_MAX = 12
# The tiled plan's register-blocked products: RB×RB = 16 multiply-adds per
# step of their innermost loop (ptxas unrolls it further).
TILED_PRODUCTS = ("residual", "grad_partials")
RB2 = 16


def _run(tmp_path_factory, *args):
    out = tmp_path_factory.mktemp("static") / "static.json"
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("NUMBA_ENABLE_CUDASIM", "FASTLIN_CUDA_TPB", "FASTLIN_CUDA_TILE")
    }
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--json", str(out), *args],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    if proc.returncode == 3:
        pytest.skip(proc.stdout.strip().splitlines()[-1])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads(out.read_text())
    return {row["name"]: row for row in data["kernels"]}, data


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    return _run(tmp_path_factory)


@pytest.fixture(scope="module")
def report64(tmp_path_factory):
    """float64: the tiled products and the kernels around cuBLAS."""
    from fastlin.backends import cuda_cublas

    return _run(tmp_path_factory, "--dtype", "float64", "--kernels", ",".join((*TILED_PRODUCTS, *cuda_cublas.KERNELS)))


def test_every_kernel_is_reported(report):
    rows, data = report
    from fastlin.backends import cuda as kernels
    from fastlin.backends import cuda_cublas

    # every kernel the launch code knows, no more
    assert set(rows) == set(kernels.KERNELS) | set(cuda_cublas.KERNELS)
    assert (data["tpb"], data["tile"]) == (256, 16)
    for name, row in rows.items():
        assert row["hot"] == (name in HOT), name
        assert row["registers"] > 0 and row["instructions"] > 0, row


def test_no_kernel_spills_and_every_block_fits(report):
    rows, _ = report
    for name, row in rows.items():
        assert row["spill_stores"] == 0 and row["spill_loads"] == 0, (name, row)
        assert row["static_shared_bytes"] <= SHARED_STATIC_MAX, (name, row)
        assert row["registers"] * row["block_threads"] <= 65536, (name, row)
        assert row["occupancy"] > 0, (name, row)


@pytest.mark.parametrize("name", HOT)
def test_hot_kernels_use_128_bit_loads_and_few_conversions(report, name):
    row = report[0][name]
    assert row["ldg128"] > 0, row
    assert row["f2f_f64_f32"] <= F2F_MAX, row


@pytest.mark.parametrize("name", STREAMING)
def test_streaming_kernels_reach_half_occupancy(report, name):
    assert report[0][name]["occupancy"] >= 0.5, report[0][name]


@pytest.mark.parametrize("name", TILED_PRODUCTS)
def test_tiled_products_are_float32_register_blocks(report, report64, name):
    row = report[0][name]
    assert row["loop_ffma"] >= RB2 and row["loop_ffma"] % RB2 == 0, row
    assert row["loop_f2f"] == 0 and row["loop_dfma"] == 0, row  # nothing per product beyond the FFMA
    assert row["occupancy"] >= 0.25, row
    row64 = report64[0][name]  # float64 data keep float64 products, and fit too
    assert row64["spill_stores"] == 0 and row64["spill_loads"] == 0, row64
    assert row64["loop_dfma"] >= RB2 and row64["loop_f2f"] == 0, row64
    assert row64["static_shared_bytes"] <= SHARED_STATIC_MAX and row64["occupancy"] >= 0.25, row64


def test_float64_kernels_do_not_spill(report64):
    for name, row in report64[0].items():
        assert row["spill_stores"] == 0 and row["spill_loads"] == 0, (name, row)
        assert row["static_shared_bytes"] <= SHARED_STATIC_MAX, (name, row)


def test_occupancy_model():
    from bench import gpu_static  # the repository root is on sys.path (tests is a package)

    # 64 registers x 256 threads: 4 blocks = 32 warps; shared memory binds at 60 KB.
    assert gpu_static.occupancy(64, 24 * 1024, 256) == 0.5
    assert gpu_static.occupancy(65, 24 * 1024, 256) == 0.375
    assert gpu_static.occupancy(32, 60 * 1024, 256) == 0.375
    assert gpu_static.occupancy(32, 0, 1) == 0.5  # 32 blocks per SM at most
    sass = (
        "        /*0100*/                   LDG.E.128.CONSTANT R4, desc[UR4][R6.64+0x10] ;\n"
        "        /*0110*/                   F2F.F64.F32 R2, R4 ;\n"
    )
    counts = gpu_static.sass_counts(sass)
    assert (counts["ldg"], counts["ldg128"], counts["f2f_f64_f32"]) == (1, 1, 1)
    # an outer loop around an inner one: only the inner one counts
    nested = (
        ".L_x_1:\n"
        "        /*0100*/                   F2F.F64.F32 R2, R4 ;\n"
        ".L_x_2:\n"
        "        /*0110*/                   FFMA R1, R2, R3, R1 ;\n"
        "        /*0120*/                   FFMA R5, R2, R3, R5 ;\n"
        "        /*0130*/               @P0 BRA `(.L_x_2) ;\n"
        "        /*0140*/                   DFMA R6, R2, R2, R6 ;\n"
        "        /*0150*/               @P1 BRA `(.L_x_1) ;\n"
        "        /*0160*/                   FFMA R7, R2, R3, R7 ;\n"
    )
    assert gpu_static.inner_loop_counts(nested) == {"loop_ffma": 2, "loop_f2f": 0, "loop_dfma": 0}
