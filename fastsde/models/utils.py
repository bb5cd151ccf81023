"""Model-to-score conventions of score_sde (`get_model_fn`, `get_score_fn`), unchanged so checkpoints port."""
from __future__ import annotations

import torch

from fastsde import sde as sde_lib
from fastsde._util import per_sample

__all__ = ["get_model_fn", "get_score_fn", "to_flattened_numpy", "from_flattened_numpy"]


def get_model_fn(model, train: bool = False):
    """model_fn(x, labels) running `model` in train or eval mode."""

    def model_fn(x, labels):
        model.train(train)
        return model(x, labels)

    return model_fn


def get_score_fn(sde, model, train: bool = False, continuous: bool = False):
    """score_fn(x, t) -> score (B, ...) from a model's output under score_sde's label/output conventions.

    VP continuous and subVP: labels = 999 t, score = -model / std(t). VP discrete: labels = t (N - 1),
    std = sqrt(1 - alphas_cumprod)[long(labels)]. VE continuous: labels = sigma(t); VE discrete:
    labels = round((T - t)(N - 1)); the model output is the score.
    """
    model_fn = get_model_fn(model, train=train)
    if isinstance(sde, (sde_lib.VPSDE, sde_lib.subVPSDE)):

        def score_fn(x, t):
            if continuous or isinstance(sde, sde_lib.subVPSDE):
                labels = t * 999
                std = sde.marginal_prob(torch.zeros_like(x), t)[1]
            else:
                labels = t * (sde.N - 1)
                std = sde._table("sqrt_1m_alphas_cumprod", labels.device)[labels.long()]
            return -model_fn(x, labels) / per_sample(std, x)

    elif isinstance(sde, sde_lib.VESDE):

        def score_fn(x, t):
            if continuous:
                labels = sde.marginal_prob(torch.zeros_like(x), t)[1]
            else:
                labels = torch.round((sde.T - t) * (sde.N - 1)).long()
            return model_fn(x, labels)

    else:
        raise NotImplementedError(f"SDE class {type(sde).__name__} not supported by get_score_fn")
    return score_fn


def to_flattened_numpy(x: torch.Tensor):
    """Flatten a tensor to a float64-capable 1-D NumPy array."""
    return x.detach().cpu().numpy().reshape((-1,))


def from_flattened_numpy(x, shape) -> torch.Tensor:
    """Inverse of to_flattened_numpy."""
    return torch.from_numpy(x.reshape(shape))
