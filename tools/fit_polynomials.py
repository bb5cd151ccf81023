"""Fit the float32 polynomial coefficients of csrc/fsn1.h (log1p, sin, cos for the FSN1 Box-Muller transform).

Run: .venv/bin/python tools/fit_polynomials.py   (prints the coefficients pasted into csrc/fsn1.h)

Each fit is a weighted least-squares problem on a dense grid minimizing the *relative* error of the final value,
refined by iteratively reweighted least squares (Lawson's algorithm) towards the minimax solution, then the
coefficients are rounded to float32 and the rounded polynomial is re-checked in float64.

  log1p(f) = f - f^2/2 + f^3 P(f),   f = m - 1, m in [sqrt(1/2), sqrt(2))      P: degree 8 in f
  sin(pi x / 4) = x S(x^2),          x = f 2^-21 in [-1, 1]                      S: degree 4 in x^2 (x .. x^9)
  cos(pi x / 4) = C(x^2)                                                          C: degree 5 in x^2 (1 .. x^10)
"""
import numpy as np


def lawson(basis, target, weight, iters=60):
    """Coefficients c minimizing max |weight (basis @ c - target)| (Lawson's IRLS)."""
    lw = np.ones(len(target)) / len(target)
    for _ in range(iters):
        sw = np.sqrt(lw) * weight
        c, *_ = np.linalg.lstsq(basis * sw[:, None], target * sw, rcond=None)
        err = np.abs(weight * (basis @ c - target))
        lw = lw * err
        lw /= lw.sum()
    return c


def horner(c, t):
    acc = np.zeros_like(t) + c[-1]
    for k in c[-2::-1]:
        acc = acc * t + k
    return acc


def fit_log1p(degree=8):
    lo, hi = np.sqrt(0.5) - 1, np.sqrt(2.0) - 1
    f = np.linspace(lo, hi, 20001)
    f = f[np.abs(f) > 1e-3]  # g(f) is smooth through 0; the tiny-f end carries no weight (f^3 P << f)
    g = (np.log1p(f) - f + 0.5 * f * f) / f**3
    basis = np.stack([f**k for k in range(degree + 1)], axis=1)
    c = lawson(basis, g, f**3 / np.log1p(f))
    c32 = c.astype(np.float32).astype(np.float64)
    ff = np.linspace(lo, hi, 200001)
    approx = ff - 0.5 * ff * ff + ff**3 * horner(c32, ff)
    rel = np.max(np.abs(approx / np.log1p(ff) - 1)[np.abs(ff) > 0])
    return c32, rel


def fit_sin(degree=4):
    x = np.linspace(1e-4, 1, 20001)
    t = x * x
    target = np.sin(np.pi * x / 4) / x
    basis = np.stack([t**k for k in range(degree + 1)], axis=1)
    c = lawson(basis, target, 1 / target)
    c32 = c.astype(np.float32).astype(np.float64)
    xx = np.linspace(1e-6, 1, 200001)
    rel = np.max(np.abs(xx * horner(c32, xx * xx) / np.sin(np.pi * xx / 4) - 1))
    return c32, rel


def fit_cos(degree=5):
    x = np.linspace(0, 1, 20001)
    t = x * x
    target = (np.cos(np.pi * x / 4) - 1) / np.maximum(t, 1e-300)  # C(t) = 1 + t C'(t): the constant stays exact
    target[0] = -(np.pi / 4) ** 2 / 2
    basis = np.stack([t**k for k in range(degree)], axis=1)
    c = lawson(basis, target, t / np.cos(np.pi * x / 4))
    c32 = np.concatenate([[1.0], c.astype(np.float32).astype(np.float64)])
    xx = np.linspace(0, 1, 200001)
    rel = np.max(np.abs(horner(c32, xx * xx) / np.cos(np.pi * xx / 4) - 1))
    return c32, rel


def show(name, c, rel):
    print(f"// {name}: max relative error of the float32-rounded polynomial in exact arithmetic {rel:.2e}")
    for k, v in enumerate(c):
        print(f"  {name}[{k}] = {np.float32(v)!r:>16}  ({np.float32(v).view(np.uint32):#010x}) = "
              f"{float(np.float32(v)):.9e}f")


if __name__ == "__main__":
    for deg in (7, 8):
        show(f"log1p_P(deg {deg})", *fit_log1p(deg))
    for deg in (4, 5):
        show(f"sin_S(deg {deg})", *fit_sin(deg))
    for deg in (4, 5):
        show(f"cos_C(deg {deg})", *fit_cos(deg))
