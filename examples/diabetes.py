"""fastlin inside scikit-learn: the diabetes data set that ships with
scikit-learn (442 patients, 10 features; nothing is downloaded).

    pip install "fastlin[sklearn]"
    python examples/diabetes.py              # 5-fold grid search
    python examples/diabetes.py --cv 3       # faster
    python examples/diabetes.py --plot loss.png   # also draw the loss curve (matplotlib)

It shows fastlin.sklearn.LinearRegressor in a Pipeline with StandardScaler,
compares it with the exact least-squares answer of LinearRegression, trains
it by gradient descent too (solver="gd", its loss curve), and tunes the L2
penalty with GridSearchCV.
"""

import argparse
import importlib.util
import sys

import numpy as np


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cv", type=int, default=5, help="folds of the grid search (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the train/test split (default 0)")
    parser.add_argument("--plot", metavar="PNG", help="save the training loss curve there (needs matplotlib)")
    args = parser.parse_args(argv)
    # Say what is missing before any work, in one line.
    if importlib.util.find_spec("sklearn") is None:
        print("diabetes.py needs scikit-learn: pip install 'fastlin[sklearn]'", file=sys.stderr)
        return 2
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        print("--plot needs matplotlib: pip install 'fastlin[plot]'", file=sys.stderr)
        return 2

    from sklearn.datasets import load_diabetes
    from sklearn.linear_model import LinearRegression
    from sklearn.model_selection import GridSearchCV, train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from fastlin.sklearn import LinearRegressor

    X, y = load_diabetes(return_X_y=True)  # read from scikit-learn's own files
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.25, random_state=args.seed)
    print(f"diabetes: {X_train.shape[0]} training and {X_test.shape[0]} test rows, {X.shape[1]} features")

    # 1. A drop-in for LinearRegression.
    ours = make_pipeline(StandardScaler(), LinearRegressor()).fit(X_train, y_train)
    exact = make_pipeline(StandardScaler(), LinearRegression()).fit(X_train, y_train)
    model = ours[-1]
    gap = np.abs(model.coef_ - exact[-1].coef_).max() / np.abs(exact[-1].coef_).max()
    how = "solved exactly" if model.lr_ is None else f"{model.n_iter_} epochs of gradient descent, lr={model.lr_:.3g}"
    print(f"fastlin LinearRegressor: test R² {ours.score(X_test, y_test):.4f} ({how})")
    print(f"sklearn LinearRegression: test R² {exact.score(X_test, y_test):.4f}")
    print(f"largest coefficient difference: {gap:.1e} of the largest coefficient")

    #    The same model trained by full-batch gradient descent.  The features
    #    are correlated (the Hessian's condition number is ~500 even after
    #    scaling), which is where the default Nesterov momentum earns its keep.
    gd = make_pipeline(StandardScaler(), LinearRegressor(solver="gd")).fit(X_train, y_train)[-1]
    print(
        f"gradient descent: {gd.n_iter_} epochs, lr={gd.lr_:.3g}, "
        f"training loss (MSE): {gd.loss_curve_[0]:.1f} -> {gd.loss_curve_[-1]:.1f}"
    )

    # 2. Tuning: the L2 penalty by cross-validation.
    search = GridSearchCV(
        make_pipeline(StandardScaler(), LinearRegressor()),
        {"linearregressor__weight_decay": [0.0, 0.01, 0.1, 1.0]},
        cv=args.cv,
    ).fit(X_train, y_train)
    for wd, score in zip(
        search.cv_results_["param_linearregressor__weight_decay"], search.cv_results_["mean_test_score"]
    ):
        print(f"  weight_decay={wd:<5} mean CV R² {score:.4f}")
    best = search.best_params_["linearregressor__weight_decay"]
    print(f"grid search: best weight_decay={best}, test R² {search.score(X_test, y_test):.4f}")

    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot(np.arange(1, gd.n_iter_ + 1), gd.loss_curve_)
        ax.set(xlabel="epoch", ylabel="training MSE", yscale="log", title="diabetes: LinearRegressor(solver='gd')")
        fig.savefig(args.plot, dpi=120, bbox_inches="tight")
        plt.close(fig)
        print(f"loss curve written to {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
