"""Time the same full-batch SGD fit on the CPU and, when one is usable, on an
NVIDIA GPU.

    python examples/cpu_vs_gpu.py                               # 100k × 128 → 8, 20 steps
    python examples/cpu_vs_gpu.py --rows 1000000 --features 256 --outputs 16
    python examples/cpu_vs_gpu.py --rows 2000 --features 16 --steps 5   # a quick look

Both runs start from the same weights and train on the same float32 data, so
the script also reports how far apart their final weights are.  Each device
gets one untimed warm-up fit first, so compilation (or loading compiled
kernels from the cache) is not counted.  On the GPU the data is copied to
the device before the clock starts and the clock stops only after the
weights are back on the host, so queued work cannot hide.

Without a usable GPU the script says why and times the CPU only.  For the
full picture (numpy, torch and JAX, all threads versus one, the fraction of
the hardware limit) see ``python -m fastlin compare`` and bench/RESULTS.md.
"""

import argparse
import os
import time

import numpy as np

import fastlin


def make_data(rows, features, outputs, seed):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((rows, features), dtype=np.float32)
    W_true = rng.standard_normal((outputs, features), dtype=np.float32) / np.float32(np.sqrt(features))
    T = X @ W_true.T + np.float32(0.1) * rng.standard_normal((rows, outputs), dtype=np.float32)
    return X, T


def timed_fit(device, X, T, steps, lr):
    """Seconds per step of ``fit`` on ``device`` (after a warm-up), and the final weights."""
    features, outputs = X.shape[1], T.shape[1]
    warm = fastlin.Linear(features, outputs, device=device, seed=0)
    warm.fit(X, T, steps=2, lr=lr)
    model = fastlin.Linear(features, outputs, device=device, seed=0)
    start = time.perf_counter()
    history = model.fit(X, T, steps=steps, lr=lr)
    weight, _ = model.numpy()  # a copy to the host: waits for the device
    seconds = time.perf_counter() - start
    return seconds / steps, weight, history


def report(name, per_step, X, history):
    gbytes = X.nbytes / per_step / 1e9  # the fused step reads X once per step
    print(
        f"{name:>4}: {per_step * 1e3:9.3f} ms/step   {X.shape[0] / per_step / 1e6:8.1f} M rows/s   "
        f"{gbytes:7.2f} GB/s of X   loss {history.loss[0]:.4g} -> {history.loss[-1]:.4g}"
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000, help="rows N of X (default 100000)")
    parser.add_argument("--features", type=int, default=128, help="input features D (default 128)")
    parser.add_argument("--outputs", type=int, default=8, help="outputs O of the layer (default 8)")
    parser.add_argument("--steps", type=int, default=20, help="timed full-batch SGD steps per device (default 20)")
    parser.add_argument("--lr", type=float, default=0.1, help="learning rate (default 0.1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data (default 0)")
    args = parser.parse_args(argv)

    X, T = make_data(args.rows, args.features, args.outputs, args.seed)
    print(
        f"full-batch SGD, float32: X {X.shape} ({X.nbytes / 1e6:.1f} MB) -> {args.outputs} outputs, "
        f"{args.steps} steps, {os.cpu_count()} CPU cores"
    )

    cpu_step, cpu_weight, cpu_history = timed_fit("cpu", X, T, args.steps, args.lr)
    report("cpu", cpu_step, X, cpu_history)

    reason = fastlin.cuda_unavailable_reason()
    if reason is not None:
        print(f"gpu: skipped: {reason}")
        return 0

    from numba import cuda

    if cuda.config.ENABLE_CUDASIM:
        print("gpu: running in numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1): correct, but its times mean nothing")
    X_gpu, T_gpu = cuda.to_device(X), cuda.to_device(T)
    gpu_step, gpu_weight, gpu_history = timed_fit("cuda", X_gpu, T_gpu, args.steps, args.lr)
    report("gpu", gpu_step, X, gpu_history)
    print(
        f"gpu is {cpu_step / gpu_step:.1f}x the speed of the cpu; "
        f"final weights differ by at most {np.abs(gpu_weight - cpu_weight).max():.2e}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
