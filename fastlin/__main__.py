"""Command line: ``python -m fastlin demo`` (and ``fastlin demo`` once installed)."""

from __future__ import annotations

import argparse
import logging
import sys

import numpy as np


def demo(args):
    """The seed post's experiment, step for step.

    Julia::

        W = rand(2,5); b = rand(2); x, y = rand(5), rand(2)
        for a in 1:100  ...  W .-= α .* W̄ ...  @info sum((y-ŷ).^2)  end
    """
    import fastlin

    logging.basicConfig(level=logging.INFO, format="[ Info: %(message)s", stream=sys.stdout, force=True)
    rng = np.random.default_rng(args.seed)
    # Julia's rand() is uniform on [0, 1) in Float64.
    model = fastlin.Linear(5, 2, init="uniform01", dtype=np.float64, device=args.device, seed=rng)
    x, y = rng.random(5), rng.random(2)
    print(f"fastlin demo: y = W*x .+ b with W = rand(2,5), b = rand(2), x = rand(5), y = rand(2) (seed {args.seed})")
    print(f"training {args.steps} steps of SGD (lr={args.lr}) on the sum of squared errors, on {model.device}")
    history = model.fit(x, y, steps=args.steps, lr=args.lr, reduction="sum", log_every=1)
    final = model.loss(x, y, reduction="sum")
    first = history.loss[0] if len(history) else final
    print(f"final loss: {final:.6g} (step 1: {first:.6g})")
    if args.plot:
        history.plot(path=args.plot, log=True, title="fastlin demo: loss per step")
        print(f"loss curve written to {args.plot}")
    return 0


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

    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, TypeError, RuntimeError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
