"""score_sde's `likelihood`: get_likelihood_fn / get_div_fn with the original's signature and defaults."""
from fastsde.likelihood import get_div_fn, get_likelihood_fn

__all__ = ["get_likelihood_fn", "get_div_fn"]
