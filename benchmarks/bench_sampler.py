"""Suite "sampler": whole PC samplers, fused native loop vs the as-written reference loop.

pc_gmm_2d_1000: VE reverse diffusion + Langevin (snr 0.16), 1000 steps, 1024 2-D points, the analytic ring
mixture as the score model (the same model object in both paths, so the ratio measures the sampler). On CUDA both
loops run on the GPU (a launch-bound workload: 2 points per sample).
"""
from __future__ import annotations


from fastsde import sampling
from fastsde import sde as sde_lib
from fastsde.benchmarks import common
from fastsde.benchmarks.common import median_ms, record
from fastsde.models.analytic import AnalyticScoreModel, get_mixture

SUITE = "sampler"


def _sampler(backend, steps=1000, n=1024, device="cpu"):
    sde = sde_lib.VESDE(0.01, 50.0, steps)
    model = AnalyticScoreModel(get_mixture("ring"), sde, continuous=False)
    fn = sampling.get_pc_sampler(sde, (n, 2), "reverse_diffusion", "langevin", lambda x: x, 0.16, seed=1,
                                 backend=backend, device=device)
    return lambda: fn(model)


# Smoke mode (common.smoke_mode()): the steps and points of the one case (its records say "smoke": true).
SMOKE_STEPS, SMOKE_N = 5, 16


def run(quick: bool = False, backend: str = "native", device: str = "cpu") -> list[dict]:
    reps = 3 if quick else 5
    steps, n = (SMOKE_STEPS, SMOKE_N) if common.smoke_mode() else (1000, 1024)
    copy_gbps = common.copy_bandwidth_gbps(reps=5, device=device)
    fused = _sampler(backend, steps, n, device=device)
    reference = _sampler("reference", steps, n, device=device)
    ms = median_ms(fused, reps, warmup=1, device=device)
    ref_ms = median_ms(reference, reps, warmup=1, device=device)
    rec = record(SUITE, "pc_gmm_2d_1000", backend, n * 2, ms, None, copy_gbps,
                 {"reference": ref_ms, "eager_inplace": None, "compile": None}, device=device)
    print(f"  pc_gmm_2d_1000: {ms:.1f} ms vs reference {ref_ms:.1f} ms", flush=True)
    return [rec]
