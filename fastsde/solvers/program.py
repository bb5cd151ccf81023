"""The few-step solvers' use of the executor's program form (fastsde.executor: Program, Executor, Runner).

Every solver of fastsde.solvers compiles, once per sampler and on the host in float64, into a list of two of the
executor's instructions over the buffers "x" (the state), "y" (a stage or predicted state) and the history slots
D[0..2]:

    Eval(src, slot, point):      D[slot] <- denoiser(buf[src], point)     one model call + one affine pass
                                 (slope=True: D[slot] <- (buf[src] / alpha - D) / sigma~, the slope dx~/dsigma~,
                                 formed from the model output without the cancellation x~ - D; see Executor)
    Combine(dst, src, terms, c): buf[dst] <- a buf[src] + sum_k b_k D[slot_k] + c z(draw)    one affine pass

The denoiser is the data prediction D(x, t) = (x + sigma^2 score) / alpha = p x + q out with out = model(x, labels),
p = 1 / alpha and q = sigma^2 scale / alpha (scale = -1/std for noise-predicting models, 1 for score models), so it
is itself one affine pass over the model output. Coefficients are tabulated as one float64 (n, 5) tensor
[a, b0, b1, b2, c] on the device, labels as one (B,) tensor per Eval, so the loop body allocates nothing (beyond
what the model allocates) and never reads the device.

Draw ids (FSN1): 0 is the prior; step i owns ids 1 + 2 i (noise added before the model call: EDM's churn) and
2 + 2 i (the update's noise). A sample's noise depends only on (seed, sample id, step).
"""
from __future__ import annotations

from fastsde.executor import BUFFERS, SLOTS, Combine, Eval, Executor, Program, check_model_output

__all__ = ["Eval", "Combine", "Program", "Executor", "check_model_output", "churn_draw", "update_draw", "BUFFERS",
           "SLOTS"]


def churn_draw(step: int) -> int:
    """FSN1 draw id of the noise step `step` adds before its first model call (EDM's churn)."""
    return 1 + 2 * step


def update_draw(step: int) -> int:
    """FSN1 draw id of the noise in step `step`'s update."""
    return 2 + 2 * step
