"""What each CUDA kernel costs on an H100/H200, from the compiler alone (no GPU).

    python bench/gpu_static.py [--json PATH] [--cc 9.0] [--dtype float32] [--kernels a,b]

Compiles every kernel named in :mod:`fastlin.backends.cuda` (and the kernels
around cuBLAS of :mod:`fastlin.backends.cuda_cublas`) for float32 at the
launch configuration fastlin ships (``FASTLIN_CUDA_TPB``/``FASTLIN_CUDA_TILE``
as set, default 256 threads and 16×16 tiles) to PTX with numba-cuda, then to
a cubin with ``ptxas -v -arch=sm_90`` and disassembles it with ``nvdisasm``
(both from the ``nvidia-cuda-nvcc`` / ``nvidia-cuda-nvdisasm`` wheels).  For
each kernel it reports:

``registers``, ``spill_stores``, ``spill_loads``, ``stack_bytes``,
``static_shared_bytes``
    from ``ptxas -v``;
``occupancy``
    resident warps per SM over 64, limited by registers (allocated per warp
    in units of 256), shared memory (228 KB per SM, 1 KB reserved per
    block), 64 warps and 32 blocks per SM;
``ldg``, ``ldg128``, ``f2f_f64_f32``, ``dfma``, ``ffma``, ``ldl_stl``
    SASS instruction counts (static: each instruction once, however often it
    runs); ``ldg128`` counts the 16-byte global loads (``LDG.E.128``);
``loop_ffma``, ``loop_f2f``, ``loop_dfma``
    the same counts inside the innermost loops only (a backward branch whose
    body holds no other): what runs once per product in the tiled plan's
    register-blocked kernels, where a conversion or an fp64 multiply-add
    would cost per product;
``hot``
    the kernel streams X on fastlin's hot paths (the "rows" launch plan:
    tall, 2 ≤ O ≤ OMAX and the one-launch fit), where bandwidth decides.

The kernels are compiled once for every ``in_features``: D is a run-time
value, never a compile-time constant, so each count is independent of D.

Needs numba-cuda with its CUDA 13 toolkit wheels and numpy < 2.5, and must
run WITHOUT ``NUMBA_ENABLE_CUDASIM`` (the simulator cannot compile).  Exits 3
with one line saying what is missing.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

# Kernels that stream X on the hot paths (see the module docstring).
HOT = ("step_partials", "mse_grad", "fit_steps")

# sm_90 limits (CUDA programming guide, compute capability 9.0).
WARPS_PER_SM = 64
BLOCKS_PER_SM = 32
REGS_PER_SM = 65536
REG_UNIT = 256  # registers are allocated per warp in units of 256
SMEM_PER_SM = 228 * 1024
SMEM_RESERVED_PER_BLOCK = 1024


# Kernels launched on 2-D TS×TS blocks; the others on 1-D blocks of TPB.
TILED = ("forward", "model_sse", "residual", "grad_partials")


def toolkit_bin():
    """The directory holding ptxas and nvdisasm from the pip wheels, or None."""
    spec = importlib.util.find_spec("nvidia")
    roots = list(spec.submodule_search_locations) if spec and spec.submodule_search_locations else []
    for root in roots:
        for sub in ("cu13/bin", "cuda_nvcc/bin", "cu12/bin"):
            d = Path(root) / sub
            if (d / "ptxas").exists() and (d / "nvdisasm").exists():
                return d
    return None


def missing_reason():
    """Why this machine cannot run the static check, or None."""
    if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0"):
        return "NUMBA_ENABLE_CUDASIM is set: the simulator cannot compile PTX"
    try:
        import numpy
    except ImportError:
        return "numpy is not installed"
    if tuple(int(p) for p in numpy.__version__.split(".")[:2]) >= (2, 5):
        return f"numpy {numpy.__version__}: numba-cuda 0.30 cannot compile kernels under numpy >= 2.5"
    if importlib.util.find_spec("numba_cuda") is None:
        return "numba-cuda is not installed (pip install 'numba-cuda[cu13]')"
    if toolkit_bin() is None:
        return "ptxas/nvdisasm not found (pip install nvidia-cuda-nvcc nvidia-cuda-nvdisasm)"
    return None


def _ptxas_info(text):
    """Per-entry resources from ``ptxas -v`` output (one entry per file here)."""
    info = {"registers": 0, "spill_stores": 0, "spill_loads": 0, "stack_bytes": 0, "static_shared_bytes": 0}
    m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", text)
    if m:
        info["stack_bytes"], info["spill_stores"], info["spill_loads"] = (int(g) for g in m.groups())
    m = re.search(r"Used (\d+) registers", text)
    if m:
        info["registers"] = int(m.group(1))
    m = re.search(r"(\d+) bytes smem", text)
    if m:
        info["static_shared_bytes"] = int(m.group(1))
    return info


def sass_counts(sass):
    """Static SASS instruction counts that matter for bandwidth."""
    ops = [line.split(";")[0] for line in sass.splitlines() if re.match(r"\s*/\*[0-9a-f]{4,}\*/", line)]

    def count(pattern):
        rx = re.compile(pattern)
        return sum(1 for op in ops if rx.search(op))

    return {
        "ldg": count(r"\bLDG\."),
        "ldg128": count(r"\bLDG\.E\.128"),
        "f2f_f64_f32": count(r"\bF2F\.F64\.F32\b"),
        "dfma": count(r"\bDFMA\b"),
        "ffma": count(r"\bFFMA\b"),
        "ldl_stl": count(r"\b(LDL|STL)\b"),
        "instructions": len(ops),
    }


def inner_loop_counts(sass):
    """FFMA / F2F.F64.F32 / DFMA counts inside the innermost loops of a SASS
    listing: the ranges from a label to a branch back to it that contain no
    other such branch."""
    ops, labels = [], {}
    for line in sass.splitlines():
        m = re.match(r"\s*/\*[0-9a-f]{4,}\*/\s+(.*?)\s*;", line)
        if m:
            ops.append(m.group(1))
            continue
        m = re.match(r"^(\.L_x_\d+):", line)
        if m:
            labels[m.group(1)] = len(ops)
    loops = []
    for i, op in enumerate(ops):
        m = re.search(r"\bBRA\b.*`\((\.L_x_\d+)\)", op)
        if m and labels.get(m.group(1), len(ops)) <= i:
            loops.append((labels[m.group(1)], i))
    inner = [(a, z) for a, z in loops if not any(a <= a2 and z2 <= z and (a2, z2) != (a, z) for a2, z2 in loops)]
    out = {"loop_ffma": 0, "loop_f2f": 0, "loop_dfma": 0}
    for a, z in inner:
        for op in ops[a : z + 1]:
            out["loop_ffma"] += bool(re.search(r"\bFFMA\b", op))
            out["loop_f2f"] += bool(re.search(r"\bF2F\.F64\.F32\b", op))
            out["loop_dfma"] += bool(re.search(r"\bDFMA\b", op))
    return out


def occupancy(registers, shared_bytes, threads):
    """Resident warps per SM over 64 on sm_90 (see the module docstring)."""
    warps = math.ceil(threads / 32)
    regs_per_warp = math.ceil(max(registers, 1) * 32 / REG_UNIT) * REG_UNIT
    by_regs = (REGS_PER_SM // regs_per_warp) // warps
    by_smem = SMEM_PER_SM // (shared_bytes + SMEM_RESERVED_PER_BLOCK)
    blocks = min(by_regs, by_smem, WARPS_PER_SM // warps, BLOCKS_PER_SM)
    return blocks * warps / WARPS_PER_SM


def analyse(cc=(9, 0), dtype="float32", names=None):
    """Compile the kernels and return the report dicts (see the docstring)."""
    import numba.cuda
    from numba.cuda import dispatcher

    # Device functions are compiled for the *current* device's compute
    # capability, which needs a driver: pin that query to the target.
    dispatcher.get_current_device = lambda: types.SimpleNamespace(compute_capability=cc)
    from fastlin.backends import cuda as K
    from fastlin.backends import cuda_config, cuda_cublas

    bin_dir = toolkit_bin()
    arch = f"sm_{cc[0]}{cc[1]}"
    sigs = {**K.launch_signatures(dtype), **cuda_cublas.launch_signatures(dtype)}
    modules = {**{n: K for n in K.KERNELS}, **{n: cuda_cublas for n in cuda_cublas.KERNELS}}
    out = []
    with tempfile.TemporaryDirectory(prefix="fastlin-static-") as tmp:
        for name in names or modules:
            kernel = getattr(modules[name], name)
            bounds = getattr(kernel, "targetoptions", {}).get("launch_bounds")
            ptx, _ = numba.cuda.compile_ptx(kernel.py_func, numba.types.void(*sigs[name]), cc=cc, launch_bounds=bounds)
            ptx_path = Path(tmp, f"{name}.ptx")
            cubin = Path(tmp, f"{name}.cubin")
            ptx_path.write_text(ptx)
            res = subprocess.run(
                [str(bin_dir / "ptxas"), f"-arch={arch}", "-v", str(ptx_path), "-o", str(cubin)],
                capture_output=True,
                text=True,
                check=True,
            )
            sass = subprocess.run(
                [str(bin_dir / "nvdisasm"), str(cubin)], capture_output=True, text=True, check=True
            ).stdout
            threads = cuda_config.TS * cuda_config.TS if name in TILED else cuda_config.TPB
            row = {"name": name, "hot": name in HOT, "block_threads": threads}
            row.update(_ptxas_info(res.stdout + res.stderr))
            row.update(sass_counts(sass))
            row.update(inner_loop_counts(sass))
            row["occupancy"] = round(occupancy(row["registers"], row["static_shared_bytes"], threads), 4)
            out.append(row)
    return out


def print_table(rows, file=sys.stdout):
    head = (
        f"{'kernel':<15}{'hot':>4}{'thr':>5}{'regs':>5}{'spill':>7}{'shared':>8}{'occ':>6}{'LDG':>5}{'.128':>5}"
        f"{'F2F':>5}{'DFMA':>5}{'FFMA':>5}  inner loops: {'FFMA':>4}{'F2F':>4}{'DFMA':>5}"
    )
    print(head, file=file)
    for r in rows:
        spill = f"{r['spill_stores']}/{r['spill_loads']}"
        print(
            f"{r['name']:<15}{'*' if r['hot'] else '':>4}{r['block_threads']:>5}{r['registers']:>5}{spill:>7}"
            f"{r['static_shared_bytes']:>8}{100 * r['occupancy']:>5.0f}%{r['ldg']:>5}{r['ldg128']:>5}"
            f"{r['f2f_f64_f32']:>5}{r['dfma']:>5}{r['ffma']:>5}{'':>15}{r['loop_ffma']:>4}{r['loop_f2f']:>4}{r['loop_dfma']:>5}",
            file=file,
        )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", help="write the report here")
    parser.add_argument("--cc", default="9.0", help="compute capability (default 9.0)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--kernels", help="comma-separated kernel names (default: all)")
    args = parser.parse_args(argv)
    reason = missing_reason()
    if reason:
        print(f"gpu_static: cannot run: {reason}")
        return 3
    cc = tuple(int(p) for p in args.cc.split("."))
    start = time.perf_counter()
    rows = analyse(cc, args.dtype, args.kernels.split(",") if args.kernels else None)
    from fastlin.backends import cuda_config

    tpb, tile = cuda_config.TPB, cuda_config.TS
    print(f"fastlin CUDA kernels, {args.dtype}, sm_{cc[0]}{cc[1]}, TPB={tpb}, tile {tile}x{tile} (static SASS counts)")
    print_table(rows)
    print(f"({time.perf_counter() - start:.1f} s)")
    if args.json:
        report = {"cc": list(cc), "dtype": args.dtype, "tpb": tpb, "tile": tile, "kernels": rows}
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
