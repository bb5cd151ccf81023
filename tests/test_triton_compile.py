"""Every Triton kernel in kernels/ compiles for real GPU targets (sm_80, sm_90) without a GPU, without spills.

triton.compile builds PTX and a cubin from the kernel's AST for a GPUTarget; registers and spills come from
ptxas -v on that PTX with the flags Triton's own make_cubin uses. The table goes to build/triton_report.json.
TRITON_INTERPRET=1 (set by tests/conftest.py) turns @triton.jit into interpreted functions that have nothing to
compile, so the compile runs in a subprocess with the variable removed.
"""
from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
REPORT = ROOT / "build" / "triton_report.json"
ARCHS = (80, 90)


def _variants():
    """(label, kernel, signature, constexprs, num_warps) for each kernel and specialization the launchers use."""
    import triton.language as tl

    from fastsde.kernels import fsn1, step

    def affine(ptr, noise, mean, project, compute, m="i32", nout=1):
        sig = {name: ptr for name in ("OUT_ptr", "X_ptr", "SCORE_ptr", "NOISE_ptr", "XMEAN_ptr", "MASK_ptr",
                                      "DATA_ptr", "S2_ptr", "S3_ptr")}
        sig.update({name: "*fp64" for name in ("A_ptr", "B_ptr", "C_ptr", "DA_ptr", "DC_ptr", "B2_ptr", "B3_ptr")})
        sig.update(IDS_ptr="*i64", SEED_ptr="*i64", M=m, n0="i32", a_stride="i32", b_stride="i32", c_stride="i32",
                   da_stride="i32", dc_stride="i32", b2_stride="i32", b3_stride="i32",
                   draw_lo="i32", draw_hi="i32", data_draw_lo="i32", data_draw_hi="i32")
        consts = dict(NOISE=noise, WRITE_MEAN=mean, PROJECT=project, COMPUTE=compute, BLOCK=step._BLOCK, NOUT=nout)
        return step._affine_step_fwd_kernel, sig, consts, step._NUM_WARPS

    def norms(ptr, noise, compute):
        sig = dict(SCORE_ptr=ptr, NOISE_ptr=ptr, IDS_ptr="*i64", SEED_ptr="*i64",
                   PART_ptr="*fp64" if compute == tl.float64 else "*fp32",
                   M="i32", P="i32", n0="i32", draw_lo="i32", draw_hi="i32")
        return step._step_sq_norms_kernel, sig, dict(NOISE=noise, COMPUTE=compute, BLOCK=step._BLOCK), step._NUM_WARPS

    f32, f64 = tl.float32, tl.float64
    yield ("affine_step fp32 fsn1", *affine("*fp32", 2, False, False, f32))
    yield ("affine_step fp32 fsn1+x_mean+projection", *affine("*fp32", 2, True, True, f32))
    yield ("affine_step fp32 fsn1, M >= 2^31 (i64)", *affine("*fp32", 2, False, False, f32, m="i64"))
    yield ("affine_step fp32 explicit noise", *affine("*fp32", 1, False, False, f32))
    yield ("affine_step fp32 no noise (ODE)", *affine("*fp32", 0, True, False, f32))
    yield ("affine_step bf16 fsn1", *affine("*bf16", 2, False, False, f32))
    yield ("affine_step fp16 fsn1", *affine("*fp16", 2, False, False, f32))
    yield ("affine_step fp64 fsn1+x_mean+projection", *affine("*fp64", 2, True, True, f64))
    yield ("affine_combine fp32 3 outputs fsn1", *affine("*fp32", 2, False, False, f32, nout=3))
    yield ("affine_combine fp32 2 outputs no noise", *affine("*fp32", 0, False, False, f32, nout=2))
    yield ("step_sq_norms fp32 fsn1", *norms("*fp32", 2, f32))
    yield ("step_sq_norms fp32 explicit noise", *norms("*fp32", 1, f32))
    yield ("step_sq_norms fp64 fsn1", *norms("*fp64", 2, f64))
    yield ("fsn1_normal fp32", fsn1._fsn1_normal_fwd_kernel,
           dict(OUT_ptr="*fp32", IDS_ptr="*i64", M="i32", seed_lo="i32", seed_hi="i32", draw_lo="i32",
                draw_hi="i32"), dict(BLOCK=256), 4)
    yield ("fsn1_words_debug", fsn1._fsn1_words_debug_kernel,
           dict(COORDS_ptr="*i64", WORDS_ptr="*i64", UV_ptr="*fp32", N="i32"), dict(BLOCK=128), 4)

    from fastsde.kernels import freq_step

    for label, ptr, score, noise in (("fp32 fsn1", "*fp32", "*fp32", True), ("fp32 bf16 score, no noise", "*fp32",
                                                                              "*bf16", False),
                                     ("fp64 fsn1", "*fp64", "*fp64", True)):
        yield (f"freq_step {label}", freq_step._freq_step_kernel,
               dict(X_ptr=ptr, S_ptr=score, OUT_ptr=ptr, A_ptr=ptr, B_ptr=ptr, C_ptr=ptr, IDS_ptr="*i64",
                    SEED_ptr="*i64", M="i32", PERIOD="i32", draw_lo="i32", draw_hi="i32"),
               dict(NOISE=noise, BLOCK=1024), 4)

    # attention: the channel-major views attn_block passes have unit stride along L, not d: strides stay runtime
    # ints (no divisibility hints), so the loads are the general strided case.
    import torch

    from fastsde.kernels import attention

    def strides(names):
        return {f"s{t}{a}": "i32" for t in names for a in "zld"}

    for ptr, dtype in (("*fp16", torch.float16), ("*fp32", torch.float32)):
        for d in (32, 64, 256):
            for lse in (False, True):  # the inference op, and the autograd forward that stores the LSE
                block_m, block_n, warps = attention._config(d, dtype)
                sig = dict(Q_ptr=ptr, K_ptr=ptr, V_ptr=ptr, O_ptr=ptr, LSE_ptr="*fp32", **strides("qkvo"),
                           Lq="i32", Lk="i32", qk_scale="fp32")
                consts = dict(D=d, BLOCK_D=attention._block_d(d), BLOCK_M=block_m, BLOCK_N=block_n,
                              PRECISION="ieee", WRITE_LSE=lse)  # fp32: torch's default (allow_tf32 off): IEEE dots
                yield (f"attention {ptr[1:]} d={d}{' +lse' if lse else ''}", attention._attn_fwd_kernel, sig, consts,
                       warps)

    # attention backward: bf16 (fp16 takes the same tiles) and fp32 at d = 32, 64, 128, 256 (_bwd_config)
    for ptr, dtype in (("*bf16", torch.bfloat16), ("*fp32", torch.float32)):
        for d in (32, 64, 128, 256):
            (kv_m, kv_n, kv_warps), (q_m, q_n, q_warps) = attention._bwd_config(d, dtype)
            base = dict(Q_ptr=ptr, K_ptr=ptr, V_ptr=ptr, DO_ptr=ptr, LSE_ptr="*fp32", DELTA_ptr="*fp32")
            scalars = dict(Lq="i32", Lk="i32", qk_scale="fp32", sm_scale="fp32")
            consts = dict(D=d, BLOCK_D=attention._block_d(d), PRECISION="ieee")
            yield (f"attention bwd dK/dV {ptr[1:]} d={d}", attention._attn_bwd_dkdv_kernel,
                   dict(base, DK_ptr=ptr, DV_ptr=ptr, **strides(("q", "k", "v", "do", "dk", "dv")), **scalars),
                   dict(consts, BLOCK_M=kv_m, BLOCK_N=kv_n), kv_warps)
            yield (f"attention bwd dQ {ptr[1:]} d={d}", attention._attn_bwd_dq_kernel,
                   dict(base, DQ_ptr=ptr, **strides(("q", "k", "v", "do", "dq")), **scalars),
                   dict(consts, BLOCK_M=q_m, BLOCK_N=q_n), q_warps)
        for d, dlse in ((64, False), (256, True)):
            yield (f"attention bwd delta {ptr[1:]} d={d}{' +dlse' if dlse else ''}",
                   attention._attn_bwd_preprocess_kernel,
                   dict(O_ptr=ptr, DO_ptr=ptr, DLSE_ptr="*fp32", DELTA_ptr="*fp32", **strides(("o", "do")), Lq="i32"),
                   dict(D=d, BLOCK_D=attention._block_d(d), BLOCK_M=attention._preprocess_block_m(d), HAS_DLSE=dlse), 4)

    # group_norm: strides stay runtime ints (NCHW and channels-last share one compiled kernel per config)
    from fastsde.kernels import groupnorm

    def gn(ptr, compute, cpg, hw, groups=32, emb=True):
        block_c, block_hw, one_tile, warps = groupnorm._config(cpg, hw)
        sig = dict(X_ptr=ptr, Y_ptr=ptr, W_ptr=ptr, B_ptr=ptr, SCALE_ptr=ptr, SHIFT_ptr=ptr, EMB_ptr=ptr, C="i32",
                   HW="i32", s_xn="i64", s_xc="i32", s_xhw="i32", s_yn="i64", s_yc="i32", s_yhw="i32", eps="fp32")
        consts = dict(GROUPS=groups, CPG=cpg, HAS_W=True, HAS_B=True, HAS_SCALE=emb, HAS_SHIFT=emb, HAS_EMB=emb,
                      ACT=1, COMPUTE=compute, BLOCK_C=block_c, BLOCK_HW=block_hw, ONE_TILE=one_tile)
        return groupnorm._group_norm_fwd_kernel, sig, consts, warps

    yield ("group_norm fp32 4x32x32 one tile", *gn("*fp32", f32, 4, 1024))
    yield ("group_norm fp32 8x64x64 looped", *gn("*fp32", f32, 8, 4096))
    yield ("group_norm fp32 3x7x9 (odd) no emb", *gn("*fp32", f32, 3, 63, groups=8, emb=False))
    yield ("group_norm bf16 4x32x32 one tile", *gn("*bf16", f32, 4, 1024))
    yield ("group_norm fp16 8x16x16 one tile", *gn("*fp16", f32, 8, 256))
    yield ("group_norm fp64 4x32x32 one tile", *gn("*fp64", f64, 4, 1024))

    def gn_bwd(ptr, compute, cpg, hw, groups=32, emb=True):
        block_c, block_hw, warps = groupnorm._bwd_config(cpg, hw, torch.float64 if compute == f64 else torch.float32)
        sig = dict(X_ptr=ptr, DY_ptr=ptr, DX_ptr=ptr, W_ptr=ptr, B_ptr=ptr, SCALE_ptr=ptr, SHIFT_ptr=ptr, EMB_ptr=ptr,
                   SUMS_ptr="*fp64", N="i32", C="i32", HW="i32", **{f"s_{t}{d}": "i64" if d == "n" else "i32"
                                                                 for t in ("x", "dy", "dx") for d in ("n", "c", "hw")},
                   eps="fp32")
        consts = dict(GROUPS=groups, CPG=cpg, HAS_W=True, HAS_B=True, HAS_SCALE=emb, HAS_SHIFT=emb, HAS_EMB=emb,
                      ACT=1, COMPUTE=compute, BLOCK_C=block_c, BLOCK_HW=block_hw)
        return groupnorm._group_norm_bwd_kernel, sig, consts, warps

    yield ("group_norm backward fp32 4x32x32", *gn_bwd("*fp32", f32, 4, 1024))
    yield ("group_norm backward fp32 8x64x64 looped", *gn_bwd("*fp32", f32, 8, 4096))
    yield ("group_norm backward bf16 3x7x9 (odd) no emb", *gn_bwd("*bf16", f32, 3, 63, groups=8, emb=False))
    yield ("group_norm backward fp64 4x32x32", *gn_bwd("*fp64", f64, 4, 1024))


def _ptxas_usage(ptx: str, arch: int) -> tuple[int, int]:
    """(registers, spill bytes stored + loaded) from ptxas -v, run as Triton's make_cubin runs it."""
    import tempfile

    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability

    with tempfile.TemporaryDirectory() as tmp:
        src = pathlib.Path(tmp) / "k.ptx"
        src.write_text(ptx)
        log = subprocess.run([get_ptxas(arch).path, "-v", "--regAllocOptLevel=2",
                              f"--gpu-name={sm_arch_from_capability(arch)}", str(src), "-o", str(src) + ".o"],
                             check=True, capture_output=True, text=True).stderr
    regs = int(re.search(r"Used (\d+) registers", log).group(1))
    spills = sum(int(v) for v in re.findall(r"(\d+) bytes spill (?:stores|loads)", log))
    return regs, spills


def _compile_all() -> list[dict]:
    """Compile every variant for every arch; returns one row per (kernel, arch)."""
    import triton
    from triton.backends.compiler import GPUTarget

    rows = []
    for label, kernel, signature, constexprs, num_warps in _variants():
        # every argument gets the launch-time hints of aligned pointers and a 16-divisible M (the common case)
        signature = dict(signature, **{name: "constexpr" for name in constexprs})
        hints = {(kernel.arg_names.index(name),): [["tt.divisibility", 16]]
                 for name, ty in signature.items() if ty.startswith("*") or name in ("M", "N")}
        for arch in ARCHS:
            src = triton.compiler.ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=hints)
            compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=dict(num_warps=num_warps))
            regs, spills = _ptxas_usage(compiled.asm["ptx"], arch)
            rows.append(dict(kernel=kernel.__name__, variant=label, arch=f"sm_{arch}", n_regs=regs, n_spills=spills,
                             ptx_bytes=len(compiled.asm["ptx"]), cubin_bytes=len(compiled.asm["cubin"]),
                             shared=compiled.metadata.shared, num_warps=compiled.metadata.num_warps))
    return rows


def test_kernels_compile_for_sm80_and_sm90_without_spills():
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    # the subprocess imports this checkout's fastsde (the script's folder, tests/, is its sys.path[0], so an
    # editable install of another checkout, e.g. beside a git worktree, would otherwise win)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    proc = subprocess.run([sys.executable, __file__], env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    rows = json.loads(REPORT.read_text())["kernels"]
    print(f"\n{'variant':44s} {'arch':6s} {'regs':>5s} {'spills':>6s}")
    for row in rows:
        print(f"{row['variant']:44s} {row['arch']:6s} {row['n_regs']:5d} {row['n_spills']:6d}")
    kernels = {row["kernel"] for row in rows}
    assert {"_affine_step_fwd_kernel", "_step_sq_norms_kernel", "_fsn1_normal_fwd_kernel",
            "_fsn1_words_debug_kernel", "_attn_fwd_kernel", "_attn_bwd_preprocess_kernel", "_attn_bwd_dkdv_kernel",
            "_attn_bwd_dq_kernel", "_group_norm_fwd_kernel",
            "_group_norm_bwd_kernel", "_freq_step_kernel"} <= kernels
    assert {row["arch"] for row in rows} == {f"sm_{a}" for a in ARCHS}
    assert all(row["ptx_bytes"] > 0 and row["cubin_bytes"] > 0 for row in rows)
    assert [row for row in rows if row["n_spills"]] == []


if __name__ == "__main__":  # the subprocess: no TRITON_INTERPRET here
    import triton

    result = dict(triton=triton.__version__, kernels=_compile_all())
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(json.dumps(result, indent=1) + "\n")
