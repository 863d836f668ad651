"""Two fastlin layers chained by hand: a small tanh network trained with
``Linear.backward`` and ``SGD.apply``.

    python examples/two_layers_backward.py                    # 2000 steps
    python examples/two_layers_backward.py --steps 200 --rows 64

``Linear.fit`` trains one layer on its own loss.  Inside a larger model a
layer only sees the gradient flowing back from above, ``dY = dL/dY``;
``backward`` turns it into the gradients of the layer's parameters and of its
input, and ``SGD.apply`` updates the layer from them::

    forward:   H = tanh(X·W1ᵀ + b1)          Y = H·W2ᵀ + b2
    loss:      L = mean((Y − T)²)             dY = 2(Y − T)/(N·O)
    backward:  dH, dW2, db2 = layer2.backward(H, dY)
               dZ = dH · (1 − H²)             (tanh's derivative, in numpy)
               dX, dW1, db1 = layer1.backward(X, dZ)

The target is a smooth non-linear function, which no single linear layer can
fit; the script prints the loss of the network next to the best one linear
layer can do.  It also checks one backward gradient against a finite
difference, so the chain rule above is verifiably right.
"""

import argparse

import numpy as np

import fastlin


def forward(layer1, layer2, X):
    H = np.tanh(layer1(X))
    return H, layer2(H)


def network_loss(layer1, layer2, X, T):
    return fastlin.mse_loss(forward(layer1, layer2, X)[1], T)


def gradients(layer1, layer2, X, T):
    """The chain rule through both layers; returns the loss and both layers' (dW, db)."""
    H, Y = forward(layer1, layer2, X)
    loss = fastlin.mse_loss(Y, T)
    dY = 2.0 * (Y - T) / Y.size
    dH, dW2, db2 = layer2.backward(H, dY)
    dZ = dH * (1.0 - H**2)
    _, dW1, db1 = layer1.backward(X, dZ)
    return loss, (dW1, db1), (dW2, db2)


def finite_difference_check(layer1, layer2, X, T, eps=1e-6):
    """Relative error of backward's dL/dW1[0, 0] against a central difference."""
    _, (dW1, _), _ = gradients(layer1, layer2, X, T)
    W = layer1.weight.copy()
    losses = []
    for sign in (+1, -1):
        shifted = W.copy()
        shifted[0, 0] += sign * eps
        layer1.weight = shifted
        losses.append(network_loss(layer1, layer2, X, T))
    layer1.weight = W
    numeric = (losses[0] - losses[1]) / (2 * eps)
    return abs(dW1[0, 0] - numeric) / max(abs(numeric), 1e-12)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2000, help="SGD steps (default 2000)")
    parser.add_argument("--rows", type=int, default=256, help="training rows (default 256)")
    parser.add_argument("--hidden", type=int, default=16, help="hidden units (default 16)")
    parser.add_argument(
        "--lr", type=float, default=0.1, help="learning rate of both layers, with momentum 0.9 (default 0.1)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the data and the initial weights (default 0)")
    args = parser.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    X = rng.uniform(-2.0, 2.0, size=(args.rows, 2))
    T = np.column_stack([np.sin(X[:, 0]) * np.cos(X[:, 1]), 0.5 * X[:, 0] * X[:, 1]])

    layer1 = fastlin.Linear(2, args.hidden, init="glorot_uniform", dtype=np.float64, seed=rng)
    layer2 = fastlin.Linear(args.hidden, 2, init="glorot_uniform", dtype=np.float64, seed=rng)
    opt = fastlin.SGD(lr=args.lr, momentum=0.9)  # one optimiser, separate momentum per layer

    print(
        f"gradient check: backward vs finite difference, relative error {finite_difference_check(layer1, layer2, X, T):.1e}"
    )

    # The best a single linear layer can do, for comparison (its exact least-squares fit).
    A = np.column_stack([X, np.ones(len(X))])
    coef, *_ = np.linalg.lstsq(A, T, rcond=None)
    linear_best = fastlin.mse_loss(A @ coef, T)

    first = None
    report = max(1, args.steps // 10)
    for step in range(1, args.steps + 1):
        loss, (dW1, db1), (dW2, db2) = gradients(layer1, layer2, X, T)
        first = loss if first is None else first
        opt.apply(layer2, dW2, db2)
        opt.apply(layer1, dW1, db1)
        if step % report == 0 or step == 1:
            print(f"step {step:5d}  loss {loss:.6f}")

    final = network_loss(layer1, layer2, X, T)
    print(f"loss {first:.6f} -> {final:.6f} after {args.steps} steps (best single linear layer: {linear_best:.6f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
