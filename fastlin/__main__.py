"""Command line: ``python -m fastlin demo`` and ``python -m fastlin compare``
(and ``fastlin demo`` / ``fastlin compare`` once installed).

User errors (a bad argument, an output path that cannot be written, a
missing optional package) are found before any work starts and reported as
one line on stderr with exit status 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from . import __version__


class UsageError(Exception):
    """A problem with what the user asked for, found before the work: one line, exit 2."""


@contextlib.contextmanager
def _log_to_stdout() -> Iterator[None]:
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


def check_output_file(path: str, what: str) -> Path:
    """Raise UsageError unless a file can be written at ``path`` (nothing is created)."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise UsageError(f"{what} {path!r} is a directory; give a file name such as {os.path.join(path, 'loss.png')!r}")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise UsageError(f"cannot write {what} {path!r}: the directory {str(parent)!r} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise UsageError(f"cannot write {what} {path!r}: permission denied")
    return p


def check_plot_file(path: str) -> None:
    """The checks ``--plot PATH`` needs before training: matplotlib, the
    directory, and a file type matplotlib can write."""
    check_output_file(path, "the plot")
    try:
        from ._plot import pyplot

        pyplot()
    except ImportError as exc:
        raise UsageError(f"--plot: {exc}") from None
    from matplotlib.backend_bases import FigureCanvasBase

    suffix = Path(path).suffix.lower().lstrip(".")
    types = FigureCanvasBase.get_supported_filetypes()
    if suffix and suffix not in types:
        raise UsageError(
            f"--plot: matplotlib cannot write .{suffix} files; use one of: {', '.join('.' + t for t in sorted(types))}"
        )


def demo(args: argparse.Namespace) -> int:
    """The seed post's experiment, step for step.

    Julia::

        W = rand(2,5); b = rand(2); x, y = rand(5), rand(2)
        for a in 1:100  ...  W .-= α .* W̄ ...  @info sum((y-ŷ).^2)  end
    """
    if args.plot:
        check_plot_file(args.plot)
    import fastlin
    from fastlin.history import LOSS_GREW_FACTOR

    rng = np.random.default_rng(args.seed)
    # Julia's rand() is uniform on [0, 1) in Float64.
    model = fastlin.Linear(5, 2, init="uniform01", dtype=np.float64, device=args.device, seed=rng)
    x, y = rng.random(5), rng.random(2)
    print(f"fastlin demo: y = W*x .+ b with W = rand(2,5), b = rand(2), x = rand(5), y = rand(2) (seed {args.seed})")
    print(f"training {args.steps} steps of SGD (lr={args.lr}) on the sum of squared errors, on {model.device}")
    print("(each step's loss is measured before that step's update)")
    with _log_to_stdout():
        history = model.fit(x, y, steps=args.steps, lr=args.lr, reduction="sum", log_every=1)
    final = model.loss(x, y, reduction="sum")
    first = float(history.loss[0]) if len(history) else final
    print(f"final loss: {final:.6g} (after the last update; {first:.6g} before training)")
    status = 0
    if history.loss_grew or final > LOSS_GREW_FACTOR * first:
        print(
            f"warning: the loss grew from {first:.3g} to {final:.3g}: the learning rate (--lr {args.lr:g}) "
            f"is probably too large; try a smaller one (the default is {DEMO_LR})",
            file=sys.stderr,
        )
        status = 1
    if args.plot:
        history.plot(path=args.plot, log=True, title="fastlin demo: loss per step")
        print(f"loss curve written to {args.plot}")
    return status


def compare(args: argparse.Namespace) -> int:
    """``python -m fastlin compare``, once :func:`_compare_options` has parsed its options."""
    from .tools import compare as _compare

    return int(_compare.main(args))


def _compare_options(args: argparse.Namespace, rest: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """Parse the arguments after ``compare`` with the options that
    :mod:`fastlin.tools.compare` defines (its only definition); returns the
    namespace and the arguments that none of them took.

    The tools are imported here, when the subcommand runs, so that ``demo``
    and ``import fastlin`` never load them.
    """
    from .tools import compare as _compare

    parser = _compare.build_parser(args.command_prog)
    namespace, rest = parser.parse_known_args(rest, namespace=args)
    return namespace, rest


DEMO_LR = 0.02


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def prog_name(argv0: str | None = None) -> str:
    """``fastlin`` when run as the console script, else ``python -m fastlin``."""
    name = os.path.basename(sys.argv[0] if argv0 is None else argv0)
    stem = name.split(".")[0].removesuffix("-script")
    return "fastlin" if stem == "fastlin" else "python -m fastlin"


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    prog = prog or prog_name()
    parser = argparse.ArgumentParser(
        prog=prog,
        description="fastlin: a fast dense linear layer trained by SGD on the mean squared error.",
        epilog=f"'{prog} demo --help' and '{prog} compare --help' describe each command.",
    )
    parser.add_argument("--version", action="version", version=f"fastlin {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{demo,compare}")

    p = sub.add_parser(
        "demo",
        help="train the seed post's 2x5 layer for 100 steps, logging the loss",
        description="The blog post's experiment: a dense layer y = W*x .+ b with W = rand(2,5) and b = rand(2), "
        "trained by 100 steps of SGD on the sum of squared errors for one random (x, y), logging the loss of each "
        "step as the post's @info does. The loss logged at a step is measured before that step's update; the final "
        "loss is measured after the last update.",
        epilog="Exit status: 0 when the loss went down; 1 when it ended far above where it started (the learning "
        "rate is then probably too large); 2 for a usage error.",
    )
    p.add_argument("--steps", type=_positive_int, default=100, help="number of SGD steps (default 100)")
    p.add_argument("--lr", type=float, default=DEMO_LR, help=f"learning rate (default {DEMO_LR})")
    p.add_argument("--seed", type=int, default=0, help="random seed for W, b, x and y (default 0)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"], help="where to train (default cpu)")
    p.add_argument(
        "--plot", metavar="PNG", help="also save the loss curve there (needs matplotlib: pip install 'fastlin[plot]')"
    )
    p.set_defaults(run=demo)

    # compare's options (and its --help) belong to fastlin.tools.compare:
    # this parser takes none of them, so that building it imports no tool;
    # main() hands the arguments it did not know to _compare_options.
    p = sub.add_parser(
        "compare",
        help="time one SGD step on a grid of sizes: fastlin CPU/CUDA against numpy, torch and JAX",
        add_help=False,
    )
    p.set_defaults(run=compare, command_prog=p.prog)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command == "compare":
        args, rest = _compare_options(args, rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")  # as parse_args says it
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        return run(args)
    except (UsageError, ValueError, TypeError, RuntimeError, ImportError, OSError) as exc:
        print(f"{parser.prog} {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{parser.prog} {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
