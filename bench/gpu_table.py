"""Print the short table of a ``bench/bench_gpu.py`` run from its JSON.

    python bench/gpu_table.py out.json

One row per benchmark: the median time per step, the fraction of the HBM
read limit measured in the same run, and fastlin's speed-up over torch's
replayed CUDA graph and over torch eager in the same group.
"""

from __future__ import annotations

import json
import sys

from fastlin.tools.roofline import format_seconds


def rows(data):
    by_group = {}
    for bench in data.get("benchmarks", []):
        info = bench.get("extra_info") or {}
        by_group.setdefault(bench.get("group"), {})[info.get("library")] = info
    out = []
    for group in by_group:
        libs = by_group[group]
        for library, info in libs.items():
            per_step = info.get("median_per_step_s")
            ratios = []
            for peer in ("torch-cuda-graph", "torch-cuda"):
                other = libs.get(peer, {}).get("median_per_step_s")
                ratios.append(None if library != "fastlin-cuda" or not other or not per_step else other / per_step)
            out.append((group, library, per_step, info.get("fraction_of_limit"), info.get("achieved_GBps"), *ratios))
    return out


def main(path):
    with open(path) as f:
        data = json.load(f)
    machine = data.get("machine_info", {})
    print(f"GPU benchmarks ({data.get('datetime', '?')}, {machine.get('node', '?')}); per step, medians")
    print(f"{'group':<20} {'library':<17} {'per step':>10} {'% HBM':>6} {'GB/s':>7} {'× graph':>8} {'× eager':>8}")
    for group, library, per_step, fraction, gbps, vs_graph, vs_eager in rows(data):
        pct = "–" if fraction is None else f"{100 * fraction:.0f}%"
        gb = "–" if gbps is None else f"{gbps:.0f}"
        g = "" if vs_graph is None else f"{vs_graph:.2f}×"
        e = "" if vs_eager is None else f"{vs_eager:.2f}×"
        print(f"{group:<20} {library:<17} {format_seconds(per_step):>10} {pct:>6} {gb:>7} {g:>8} {e:>8}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
