"""Summarise one or more ``--benchmark-json`` files of the step and fit benchmarks.

    python -m pytest bench/bench_step.py bench/bench_fit.py --benchmark-only --benchmark-json run1.json
    ... (repeat: run2.json, run3.json)
    python bench/summarize.py run1.json run2.json run3.json          # markdown tables

For each benchmark it reports the median over runs of the per-run median
time.  Ratios (speed-up over each peer) and the fraction of the hardware
limit are computed *within* each run, from that run's own medians and its own
measured limits, and then the median over runs is taken -- a ratio never
mixes two runs.  The spread (min–max over runs) of the headline ratio is
shown so that noise is visible.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict

from fastlin.tools.roofline import format_seconds

ORDER = ("fastlin-cpu-1t", "fastlin-cpu", "fastlin-cuda", "numpy", "torch", "torch-cuda", "torch-cuda-graph", "jax")


def _load(paths):
    runs = []
    for path in paths:
        with open(path) as fh:
            data = json.load(fh)
        rows = {}
        for b in data.get("benchmarks", []):
            info = b.get("extra_info") or {}
            if info.get("kind") not in ("step", "fit") or "library" not in info:
                continue  # not one of the step/fit benchmarks (memory, start-up, GPU, Dask)
            rows[(b["group"], info["library"])] = (b["stats"]["median"], info)
        runs.append((data.get("machine_info", {}), data.get("datetime"), rows))
    return runs


def summarize(paths):
    runs = _load(paths)
    per = defaultdict(lambda: defaultdict(list))  # (group, lib) -> metric -> values over runs
    for _, _, rows in runs:
        groups = defaultdict(dict)
        for (group, lib), (median, info) in rows.items():
            groups[group][lib] = (median, info)
        for group, libs in groups.items():
            peers = {lib: m for lib, (m, info) in libs.items() if info.get("peer")}
            for lib, (median, info) in libs.items():
                d = per[(group, lib)]
                d["median"].append(median)
                if info.get("fraction_of_limit") is not None:
                    d["fraction"].append(info["fraction_of_limit"])
                others = {p: t for p, t in peers.items() if p != lib}
                for p, t in others.items():
                    d[f"vs:{p}"].append(t / median)
                if others:
                    best = min(others, key=others.get)
                    d["vs_best"].append(others[best] / median)
                    d["best_name"].append(best)
                d["limit_s"].append(info.get("limit_s"))
    return runs, per


def markdown(paths):
    runs, per = summarize(paths)
    out = []
    first = runs[0][0] if runs else {}
    out.append(f"{len(runs)} run(s): " + ", ".join(str(r[1]) for r in runs))
    out.append(f"CPU: {first.get('fastlin_cpu')}; BLAS: {first.get('fastlin_blas_summary')}")
    loads = [r[0].get("loadavg_1min_at_start") for r in runs]
    out.append(
        "1-minute load average at the start of each run: " + ", ".join(f"{x:.1f}" for x in loads if x is not None)
    )
    sources = [
        (r[0].get("fastlin_sources") or {}).get("all", "?")
        + ("*" if r[0].get("fastlin_sources_changed_during_run") else "")
        for r in runs
    ]
    out.append("fastlin sources (hash; * = changed during the run): " + ", ".join(sources))
    limits = [r[0].get("fastlin_limits", {}) for r in runs]
    keys = sorted({k for lim in limits for k in lim if ("GBps" in k or "GFLOPs" in k) and "samples" not in k})
    for k in keys:
        vals = [lim[k] for lim in limits if k in lim]
        out.append(f"- {k}: median {statistics.median(vals):.1f} (runs: {', '.join(f'{v:.1f}' for v in vals)})")
    groups = sorted({g for g, _ in per}, key=lambda g: (not g.startswith("step"), g))
    for group in groups:
        libs = sorted((lib for g, lib in per if g == group), key=lambda x: ORDER.index(x) if x in ORDER else 99)
        peers = [lib for lib in libs if lib not in ("fastlin-cpu-1t", "fastlin-cpu", "fastlin-cuda")]
        out.append("")
        out.append(f"### {group}")
        out.append("")
        head = ["library", "median time", "% of limit", "× best peer (min–max)"] + [f"× {p}" for p in peers]
        out.append("| " + " | ".join(head) + " |")
        out.append("|" + "---|" * len(head))
        for lib in libs:
            d = per[(group, lib)]
            med = statistics.median(d["median"])
            frac = f"{100 * statistics.median(d['fraction']):.0f}%" if d["fraction"] else "–"
            if d["vs_best"]:
                best = statistics.median(d["vs_best"])
                names = sorted(set(d["best_name"]))
                vs_best = f"{best:.2f}× ({min(d['vs_best']):.2f}–{max(d['vs_best']):.2f}; {'/'.join(names)})"
            else:
                vs_best = "–"
            cells = [lib, format_seconds(med), frac, vs_best]
            for p in peers:
                vals = d.get(f"vs:{p}")
                cells.append(f"{statistics.median(vals):.2f}×" if vals else "–")
            out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


# Issue #4's CPU targets: (label, group, what is compared, threshold).
TARGETS = (
    ("tall: ≥ 80% of read bandwidth", "step:tall", "fraction", 0.80),
    ("tall: ≥ 3× numpy", "step:tall", "vs:numpy", 3.0),
    ("tall: ≥ 3× torch", "step:tall", "vs:torch", 3.0),
    ("tall: ≥ 3× JAX jit", "step:tall", "vs:jax", 3.0),
    ("tall16: ≥ 2× the best peer", "step:tall16", "vs_best", 2.0),
    ("wide: ≥ 1.0× numpy", "step:wide", "vs:numpy", 1.0),
    ("seed fit(100), whole call: ≤ 4 µs", "fit100:seed", "median", 4e-6),
    ("seed fit(100): ≥ 2× JAX lax.fori_loop", "fit100:seed", "vs:jax", 2.0),
    ("seed fit(100): ≥ 1000× a torch loop", "fit100:seed", "vs:torch", 1000.0),
    ("small model.step: ≤ 3 µs", "step:small", "median", 3e-6),
)


def targets(paths, library="fastlin-cpu"):
    """The issue's CPU targets against ``library`` (medians over runs of same-run values)."""
    _, per = summarize(paths)
    lines = ["| target | measured (" + library + ") | met? | gap |", "|---|---|---|---|"]
    for label, group, metric, threshold in TARGETS:
        vals = per.get((group, library), {}).get(metric)
        if not vals:
            lines.append(f"| {label} | not measured | – | – |")
            continue
        v = statistics.median(vals)
        if metric == "median":
            ok = v <= threshold
            shown, gap = format_seconds(v), f"{v / threshold:.1f}× too slow" if not ok else "–"
        elif metric == "fraction":
            ok = v >= threshold
            shown, gap = f"{100 * v:.0f}%", f"{100 * (threshold - v):.0f} points short" if not ok else "–"
        else:
            ok = v >= threshold
            shown, gap = f"{v:.3g}×", f"needs {threshold / v:.3g}× more speed" if not ok else "–"
        lines.append(f"| {label} | {shown} | {'yes' if ok else 'no'} | {gap} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("json", nargs="+", help="--benchmark-json files of bench_step.py / bench_fit.py runs")
    p.add_argument(
        "--targets", action="store_true", help="also check issue #4's CPU targets (fastlin-cpu and fastlin-cpu-1t)"
    )
    args = p.parse_args(argv)
    print(markdown(args.json))
    if args.targets:
        for library in ("fastlin-cpu", "fastlin-cpu-1t"):
            print(f"\n### Targets, {library}\n")
            print(targets(args.json, library))
    return 0


if __name__ == "__main__":
    sys.exit(main())
