"""The seed blog post's experiment ("Linear Model", Deconstructing Deep Learning),
line by line: the Julia on the left-hand comments, fastlin beside it.

    python examples/blog_linear_model.py            # 100 iterations, as in the post
    python examples/blog_linear_model.py --steps 5  # fewer
    python examples/blog_linear_model.py --lr 0.05 --seed 3

The post builds a dense layer ``W*x .+ b``, takes its gradient with Zygote
and loops 100 times, logging the sum of squared errors.  fastlin computes
the same gradient analytically (no autodiff) and can run the whole loop in
one compiled call.

One detail kept from the post: its loop updates ``W`` only (``W̄ = gs[W]``),
never ``b``.  Part 1 does the same; part 2 is the idiomatic fastlin loop,
which trains both.
"""

import argparse

import numpy as np

import fastlin


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=100, help="loop iterations (default 100, as in the post)")
    parser.add_argument(
        "--lr", type=float, default=0.02, help="the learning rate α (default 0.02; the post does not give one)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of W, b, x and y (default 0)")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    α = args.lr

    # ------------------------------------------------------------------
    # Part 1: the post's loop, step for step
    # ------------------------------------------------------------------
    print("part 1: the blog's loop (W updated, b left as it is)")
    # Each line keeps its Julia twin in the right-hand column, so the formatter stays out.
    # fmt: off
    model = fastlin.Linear(5, 2, init="uniform01", dtype=np.float64, seed=rng)  # W = rand(2,5); b = rand(2)
    x, y = rng.random(5), rng.random(2)                                          # x,y = rand(5),rand(2)
    b_before = model.bias.copy()
    opt = fastlin.SGD(lr=α)
    no_bias_step = np.zeros(2)
    first = None
    for a in range(1, args.steps + 1):  # noqa: B007                             # for a in collect(1:100)
        gs = model.gradients(x, y, reduction="sum")                              #   gs = gradient(() -> loss(x, y), Params([W, b]))
        W̄ = gs.weight                                                            #   W̄ = gs[W]
        opt.apply(model, W̄, no_bias_step)                                        #   W .-= α .* W̄
        ŷ = model(x)                                                             #   ŷ = W*x .+ b
        loss = float(np.sum((y - ŷ) ** 2))                                       #   @info sum((y-ŷ).^2)
        first = loss if first is None else first
        print(f"[ Info: {loss:.9g}")
    # fmt: on
    assert np.array_equal(model.bias, b_before)  # the post never touches b
    print(f"part 1: loss {first:.6g} after the first update, {loss:.6g} after {args.steps}")

    # ------------------------------------------------------------------
    # Part 2: the same experiment as fastlin means it to be written
    # ------------------------------------------------------------------
    print("part 2: one call to fit (W and b trained; the loop runs compiled)")
    rng = np.random.default_rng(args.seed)
    model = fastlin.Linear(5, 2, init="uniform01", dtype=np.float64, seed=rng)
    x, y = rng.random(5), rng.random(2)
    history = model.fit(x, y, steps=args.steps, lr=α, reduction="sum")
    final = model.loss(x, y, reduction="sum")
    # history.loss[k] is measured before update k+1, so history.loss[0] is the
    # untrained model's loss.
    print(f"part 2: loss {history.loss[0]:.6g} before training, {final:.6g} after {args.steps} steps")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
