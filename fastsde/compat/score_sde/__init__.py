"""score_sde (yang-song/score_sde_pytorch) drop-in: its module paths, names and defaults on fastsde's engine.

    import sde_lib, sampling, likelihood          ->  from fastsde.compat.score_sde import sde_lib, sampling, likelihood
    from models import utils as mutils            ->  from fastsde.compat.score_sde.models import utils as mutils

Defaults are the original's, so a seeded run reproduces the original's samples bit for bit: torch noise
(noise="torch") and score_sde's loop (backend="reference"). Pass backend="auto" for the fused steps (float
tolerance, same noise) and noise="fastsde" for batch-independent FSN1 noise. The engine itself accepts score_sde's
own SDE objects and predictor/corrector classes as well (fastsde.sde.as_fastsde_sde, fastsde.sampling.registry).
checkpoint.py reads the released checkpoint_*.pth files without unpickling code.
"""
from fastsde.compat.score_sde import checkpoint, likelihood, sampling, sde_lib

__all__ = ["sde_lib", "sampling", "likelihood", "checkpoint"]
