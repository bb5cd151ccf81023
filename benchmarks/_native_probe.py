"""Quick timing probe of the native CPU step kernels (not a test): 16M float32 elements, 2 threads; then the
per-call time of the ops on short rows (1024 samples x 2 elements, ...), 1 and 2 threads.

    .venv/bin/python benchmarks/_native_probe.py
"""
import statistics
import time

import torch

from fastsde import _native  # noqa: F401  (loads torch.ops.fastsde)
from fastsde.benchmarks.common import median_ms

N = 16 * 1024 * 1024


def main():
    torch.set_num_threads(2)
    torch.manual_seed(0)
    B = 16
    x, s = torch.randn(B, N // B), torch.randn(B, N // B)
    out, y = torch.empty_like(x), torch.empty_like(x)
    a, b, c = torch.rand(B, dtype=torch.float64), torch.rand(B, dtype=torch.float64), torch.rand(B, dtype=torch.float64)
    ids = torch.arange(B)
    op = torch.ops.fastsde
    rows = {
        "copy_ (8 B/elem)": (lambda: y.copy_(x), 8),
        "affine_step_ noisy (12 B/elem)": (
            lambda: op.affine_step_(out, x, s, a, b, c, None, 1, ids, 3, None, None, None, None, None, 0), 12),
        "affine_step_ c=None (12 B/elem)": (
            lambda: op.affine_step_(out, x, s, a, b, None, None, 1, ids, 3, None, None, None, None, None, 0), 12),
        "fsn1_normal_ (4 B/elem)": (lambda: op.fsn1_normal_(y, 1, ids, 3), 4),
        "step_sq_norms FSN1 (4 B/elem)": (lambda: op.step_sq_norms(s, None, 1, ids, 3), 4),
        "torch.randn 16M (4 B/elem)": (lambda: torch.randn(N), 4),
    }
    print(f"build_info: {_native.build_info()}  threads={torch.get_num_threads()}")
    copy_gbs = None
    for name, (fn, nbytes) in rows.items():
        ms = median_ms(fn, 15)
        gbs = nbytes * N / ms / 1e6
        copy_gbs = copy_gbs or gbs
        print(f"{name:36s} {ms:8.2f} ms  {gbs:6.1f} GB/s  {gbs / copy_gbs:5.2f} of copy")
    torch.set_num_threads(1)
    print(f"affine_step_ noisy, 1 thread: {median_ms(rows['affine_step_ noisy (12 B/elem)'][0], 15):.2f} ms")
    small()


def per_call_us(fn, inner=200, reps=25):
    for _ in range(50):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        times.append((time.perf_counter() - t0) / inner)
    return 1e6 * statistics.median(times)


def small():
    """Per-call times on short rows (fixed overhead + the lanes-across-samples path)."""
    op = torch.ops.fastsde
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for shape in [(1024, 2), (333, 3), (64, 5), (1, 1)]:
            B = shape[0]
            x, s = torch.randn(shape), torch.randn(shape)
            out, y = torch.empty_like(x), torch.empty_like(x)
            a, b, c = (torch.rand(B, dtype=torch.float64) for _ in range(3))
            ids = torch.arange(B)
            r = {
                "affine noisy": lambda: op.affine_step_(out, x, s, a, b, c, None, 1, ids, 3, None, None, None, None,
                                                        None, 0),
                "affine c=None": lambda: op.affine_step_(out, x, s, a, b, None, None, 1, ids, 3, None, None, None,
                                                         None, None, 0),
                "sq_norms": lambda: op.step_sq_norms(s, None, 1, ids, 3),
                "fsn1_normal_": lambda: op.fsn1_normal_(y, 1, ids, 3),
            }
            cells = "  ".join(f"{k} {per_call_us(fn):6.1f} us" for k, fn in r.items())
            print(f"threads={threads} {str(shape):11s} {cells}")


if __name__ == "__main__":
    main()
