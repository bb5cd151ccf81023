"""The autograd formula of the fused GroupNorm(+emb)+SiLU forward ops (native and Triton): one registration helper
shared by fastsde.ops.groupnorm and fastsde.kernels.groupnorm (the math: csrc/groupnorm.h, "Backward")."""
from __future__ import annotations

import torch

__all__ = ["register_fused_backward"]


def register_fused_backward(op, backward_op, name):
    """Register `backward_op` (dy, x, num_groups, weight, bias, eps, scale, shift, emb_add, act) -> (dx, sums) as the
    autograd formula of the fused forward `op` (x, num_groups, weight, bias, eps, scale, shift, emb_add, act).
    sums (3, N, C) float64 holds per (n, c) S1 = sum du, S2 = sum du xhat, S3 = sum dx (csrc/groupnorm.h,
    "Backward"), from which the vectors' gradients are a few (N, C) ops here."""

    def setup_context(ctx, inputs, output):
        x, ctx.num_groups, weight, bias, ctx.eps, scale, shift, emb_add, ctx.act = inputs
        ctx.save_for_backward(x, weight, bias, scale, shift, emb_add)

    def backward(ctx, dy):
        if torch.is_grad_enabled():
            raise RuntimeError(f"{name}: double backward (create_graph=True) is not implemented by the fused "
                               f"backends; use backend='reference' for higher-order gradients")
        x, weight, bias, scale, shift, emb_add = ctx.saved_tensors
        dx, sums = backward_op(dy, x, ctx.num_groups, weight, bias, ctx.eps, scale, shift, emb_add, ctx.act)
        s1, s2, s3 = sums.unbind(0)
        s_1 = 1.0 if scale is None else 1.0 + scale.double()
        w = 1.0 if weight is None else weight.double()
        b = 0.0 if bias is None else bias.double()
        formulas = {2: lambda: (s2 * s_1).sum(0), 3: lambda: (s1 * s_1).sum(0), 5: lambda: w * s2 + b * s1,
                    6: lambda: s1, 7: lambda: s3}
        inputs = (x, None, weight, bias, None, scale, shift, emb_add, None)
        grads = [dx if ctx.needs_input_grad[0] else None] + [None] * 8
        for i, formula in formulas.items():
            if ctx.needs_input_grad[i]:
                grads[i] = formula().to(inputs[i].dtype)
        return tuple(grads)

    torch.library.register_autograd(op, backward, setup_context=setup_context)
