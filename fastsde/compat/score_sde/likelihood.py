"""score_sde's `likelihood`: get_likelihood_fn / get_div_fn with the original's signature and defaults; its
method="RK45" is scipy's (fastsde's "scipy:RK45"), so bits/dim equal the original's."""
from fastsde import likelihood as _likelihood
from fastsde.likelihood import get_div_fn
from fastsde.sampling.ode import scipy_method

__all__ = ["get_likelihood_fn", "get_div_fn"]


def get_likelihood_fn(sde, inverse_scaler, hutchinson_type="Rademacher", rtol=1e-5, atol=1e-5, method="RK45",
                      eps=1e-5, **kwargs):
    """score_sde's get_likelihood_fn (same arguments and defaults); likelihood_fn(model, data) -> (bpd, z, nfe)."""
    return _likelihood.get_likelihood_fn(sde, inverse_scaler, hutchinson_type, rtol, atol, scipy_method(method), eps,
                                         **kwargs)
