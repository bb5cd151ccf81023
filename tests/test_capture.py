"""Capture/compile correctness of the fused samplers (CPU proofs), and the combine op's overlap checks.

No GPU here: what a CUDA graph needs is proved on the CPU where it can be -- compiled samplers never recompile
across calls with new seeds and starts (torch._dynamo.config.error_on_recompile), a capture the backend cannot do is
refused before any work -- and tests/test_cuda.py replays recorded samplers on a lent GPU. Triton runs under
TRITON_INTERPRET=1 (tests/conftest.py). Tiny shapes, few steps, one thread.
"""
from __future__ import annotations

import os

import pytest
import torch

from fastsde import ops
from fastsde.ops import dispatch

pytestmark = pytest.mark.usefixtures("one_thread")


def _backends():
    names = ["reference"]
    if dispatch.backend_available("native", torch.device("cpu"))[0]:
        names.append("native")
    if dispatch.backend_available("triton", torch.device("cpu"))[0]:
        names.append("triton")
    return names


BACKENDS = _backends()


# ------------------------------------------------------------------------------------ affine_combine_step overlaps
def _combine_case():
    g = torch.Generator().manual_seed(5)
    buf = torch.randn(3 * 24, generator=g)
    outs = [torch.randn(4, 6, generator=g) for _ in range(2)]
    return buf, outs


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("where", ["x", "noise", "outputs[1]"])
def test_combine_refuses_partial_overlap_with_out(backend, where):
    """out sharing part of x, of the noise or of a model output: refused in one line on every backend (native gave
    a max error of 4.5 against the exact reference before)."""
    buf, outs = _combine_case()
    x, out = buf[:24].view(4, 6), buf[6:30].view(4, 6)  # out starts one row into x
    noise = torch.randn(4, 6)
    if where == "noise":
        x, noise = torch.randn(4, 6), buf[:24].view(4, 6)
    elif where == "outputs[1]":
        x, outs[1] = torch.randn(4, 6), buf[:24].view(4, 6)
    with pytest.raises(ValueError, match="partial overlap") as info:
        ops.affine_combine_step(x, outs, 0.9, [0.3, -0.2], 0.5, noise=noise, out=out, backend=backend)
    message = str(info.value)
    assert "\n" not in message and where in message and "out" in message


@pytest.mark.parametrize("backend", BACKENDS)
def test_combine_refuses_out_as_an_output(backend):
    x, outs = torch.randn(4, 6), [torch.randn(4, 6), torch.randn(4, 6)]
    with pytest.raises(ValueError, match=r"^outputs\[0\] must not share memory with out: .*same view"):
        ops.affine_combine_step(x, outs, 0.9, [0.3, -0.2], out=outs[0], backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_combine_in_place_matches_reference(backend):
    """out = x exactly (in place) stays allowed, as for affine_step, and agrees with the reference on FSN1 noise."""
    g = torch.Generator().manual_seed(7)
    x0, outs = torch.randn(3, 2, 5, generator=g), [torch.randn(3, 2, 5, generator=g) for _ in range(3)]
    want = ops.affine_combine_step(x0, outs, 0.8, [0.1, 0.2, -0.3], 0.4, seed=11, draw=2, backend="reference")
    x = x0.clone()
    got = ops.affine_combine_step(x, outs, 0.8, [0.1, 0.2, -0.3], 0.4, seed=11, draw=2, out=x, backend=backend)
    assert got is x
    torch.testing.assert_close(x, want, rtol=1e-6, atol=1e-6)
