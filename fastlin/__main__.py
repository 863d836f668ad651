"""Command line: ``python -m fastlin demo`` and ``python -m fastlin compare``
(and ``fastlin demo`` / ``fastlin compare`` once installed)."""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys

import numpy as np


@contextlib.contextmanager
def _log_to_stdout():
    """Show the "fastlin" logger's INFO lines on stdout, Julia-style, for the
    duration; the root logger and other handlers are left alone."""
    logger = logging.getLogger("fastlin")
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("[ Info: %(message)s"))
    saved = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


def demo(args):
    """The seed post's experiment, step for step.

    Julia::

        W = rand(2,5); b = rand(2); x, y = rand(5), rand(2)
        for a in 1:100  ...  W .-= α .* W̄ ...  @info sum((y-ŷ).^2)  end
    """
    import fastlin

    rng = np.random.default_rng(args.seed)
    # Julia's rand() is uniform on [0, 1) in Float64.
    model = fastlin.Linear(5, 2, init="uniform01", dtype=np.float64, device=args.device, seed=rng)
    x, y = rng.random(5), rng.random(2)
    print(f"fastlin demo: y = W*x .+ b with W = rand(2,5), b = rand(2), x = rand(5), y = rand(2) (seed {args.seed})")
    print(f"training {args.steps} steps of SGD (lr={args.lr}) on the sum of squared errors, on {model.device}")
    with _log_to_stdout():
        history = model.fit(x, y, steps=args.steps, lr=args.lr, reduction="sum", log_every=1)
    final = model.loss(x, y, reduction="sum")
    first = history.loss[0] if len(history) else final
    print(f"final loss: {final:.6g} (step 1: {first:.6g})")
    if args.plot:
        history.plot(path=args.plot, log=True, title="fastlin demo: loss per step")
        print(f"loss curve written to {args.plot}")
    return 0


def compare(args):
    """``python -m fastlin compare``: the heavy imports happen only here."""
    from . import compare as _compare

    return _compare.main(args)


# The names of fastlin._peers.BACKENDS, spelled out so that building the parser
# imports nothing (tests/test_compare.py checks that they agree).
COMPARE_BACKENDS = ("fastlin-cpu-1t", "fastlin-cpu", "fastlin-cuda", "numpy", "torch", "torch-cuda", "torch-cuda-graph", "jax")


def _int_list(text):
    try:
        values = [int(float(v)) for v in text.replace("_", "").split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"sizes must be positive integers, got {text!r}")
    return values


def _shape_list(text):
    shapes = []
    for part in text.split(","):
        try:
            d, o = part.lower().split("x")
            shapes.append((int(d), int(o)))
        except ValueError:
            raise argparse.ArgumentTypeError(f"shapes look like 64x1,1024x256 (D x O), got {part!r}") from None
        if min(shapes[-1]) < 1:
            raise argparse.ArgumentTypeError(f"shape sizes must be >= 1, got {part!r}")
    return shapes


def _backend_list(text):
    names = [b.strip() for b in text.split(",") if b.strip()]
    unknown = [b for b in names if b not in COMPARE_BACKENDS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown backend(s) {', '.join(unknown) or text!r}; choose from {', '.join(COMPARE_BACKENDS)}")
    return names


def _compare_arguments(p):
    p.add_argument("--quick", action="store_true", help="a small grid and short timings (a smoke test, not for decisions)")
    p.add_argument("--sizes", type=_int_list, help="numbers of rows N, comma-separated (default 100,1000,...,1000000)")
    p.add_argument("--shapes", type=_shape_list, help="D x O shapes, comma-separated (default 64x1,64x16,1024x256)")
    p.add_argument("--backends", type=_backend_list, help=f"comma-separated subset of: {', '.join(COMPARE_BACKENDS)} (default: all present)")
    p.add_argument("--budget", type=float, help="seconds of timing per backend and size (default 0.3; --quick 0.05)")
    p.add_argument("--repeats", type=int, help="rounds per size, interleaving the backends; the median counts (default 3; --quick 1)")
    p.add_argument("--max-work", type=float, default=float(1 << 32), help="skip sizes whose step exceeds this many multiply-adds N·D·O (default 2^32)")
    p.add_argument("--out", default="fastlin-compare", help="directory for compare.json, compare.md and compare.png (default ./fastlin-compare)")
    p.add_argument("--no-plot", action="store_true", help="do not draw compare.png")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m fastlin", description="fastlin: a fast dense linear layer trained by SGD")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="train the seed post's 2x5 layer for 100 steps, logging the loss")
    p.add_argument("--steps", type=int, default=100, help="number of SGD steps (default 100)")
    p.add_argument("--lr", type=float, default=0.02, help="learning rate (default 0.02)")
    p.add_argument("--seed", type=int, default=0, help="random seed for W, b, x and y (default 0)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"], help="where to train (default cpu)")
    p.add_argument("--plot", metavar="PNG", help="also save the loss curve there (needs matplotlib)")
    p.set_defaults(run=demo)

    p = sub.add_parser(
        "compare",
        help="time one SGD step on a grid of sizes: fastlin CPU/CUDA against numpy, torch and JAX",
        description="Time one full-batch SGD step over a grid of sizes on every backend present (fastlin CPU with "
        "1 and all threads, fastlin CUDA, numpy, torch, JAX); print time, speed-up over numpy and the fraction of the "
        "hardware limit measured in the same run; mark where the GPU starts to beat the CPU.",
    )
    _compare_arguments(p)
    p.set_defaults(run=compare)

    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, TypeError, RuntimeError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
