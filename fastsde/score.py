"""Model-to-score conventions of score_sde (`get_model_fn`, `get_score_fn`), unchanged so checkpoints port; plus
`get_score_parts`, the same conventions split so fused steps fold the output scale into their coefficients."""
from __future__ import annotations

import torch

from fastsde import sde as sde_lib
from fastsde._util import per_sample

__all__ = ["get_model_fn", "get_score_fn", "get_score_parts", "to_flattened_numpy", "from_flattened_numpy"]


def get_model_fn(model, train: bool = False):
    """model_fn(x, labels) running `model` in train or eval mode (a torch.nn.Module), or calling it (a plain
    function model(x, labels) -> tensor, which has no mode). Anything not callable is a TypeError here."""
    if not callable(model):
        raise TypeError(f"model must be a torch.nn.Module or a function model(x, labels) -> tensor, got "
                        f"{type(model).__name__}")
    set_mode = getattr(model, "train", None) if isinstance(model, torch.nn.Module) else None

    def model_fn(x, labels):
        if set_mode is not None:
            set_mode(train)
        return model(x, labels)

    return model_fn


def get_score_parts(sde, continuous: bool = False):
    """(labels_fn, scale_fn) with score(x, t) = scale_fn(t) * model(x, labels_fn(t)) per sample.

    labels_fn(t) gives the model's time labels; scale_fn(t) gives -1/std(t) as float64 for noise-predicting
    (VP/subVP) models and None for score-predicting (VE) models. This is get_score_fn split in two, so fused
    steps can fold the scale into their coefficients instead of dividing the model output in a separate pass.
    VP continuous and subVP: labels = 999 t, scale = -1 / std(t). VP discrete: labels = t (N - 1),
    std = sqrt(1 - alphas_cumprod)[long(labels)]. VE continuous: labels = sigma(t); VE discrete:
    labels = round((T - t)(N - 1)). score_sde's own SDE objects are accepted (fastsde.sde.as_fastsde_sde).
    """
    try:
        sde = sde_lib.as_fastsde_sde(sde)
    except TypeError as e:  # an SDE this module has no label convention for
        raise NotImplementedError(str(e)) from None
    if getattr(sde, "frequency_diagonal", False):
        raise NotImplementedError(f"{type(sde).__name__} scales the model output per frequency, not per sample: "
                                  f"fastsde.score.get_score_fn applies it")
    if isinstance(sde, (sde_lib.VPSDE, sde_lib.subVPSDE)):
        discrete = not continuous and isinstance(sde, sde_lib.VPSDE)

        def labels_fn(t):
            return t * (sde.N - 1) if discrete else t * 999

        def std_fn(t):
            if discrete:
                return sde.table("sqrt_1m_alphas_cumprod", t.device)[(t * (sde.N - 1)).long()]
            return sde.marginal_prob(torch.zeros(t.shape[0], 1, dtype=t.dtype, device=t.device), t)[1]

        def scale_fn(t):
            return -1.0 / std_fn(t).double()

        labels_fn.std_fn = std_fn
        return labels_fn, scale_fn
    if isinstance(sde, sde_lib.VESDE):

        def labels_fn(t):
            if continuous:
                return sde.marginal_prob(torch.zeros(t.shape[0], 1, dtype=t.dtype, device=t.device), t)[1]
            return torch.round((sde.T - t) * (sde.N - 1)).long()

        return labels_fn, lambda t: None
    raise NotImplementedError(f"SDE class {type(sde).__name__} not supported by get_score_fn")


def get_score_fn(sde, model, train: bool = False, continuous: bool = False):
    """score_fn(x, t) -> score (B, ...) from a model's output under score_sde's label/output conventions.

    VP continuous and subVP: score = -model(x, 999 t) / std(t); VP discrete uses the DDPM std table;
    VE: the model output is the score (see get_score_parts for the labels). The heat family (fastsde.heat): labels
    999 t, score = -idct2(dct2(model(x, 999 t)) / s_k(t)), s_k the per-frequency marginal std.
    """
    model_fn = get_model_fn(model, train=train)
    if getattr(sde, "frequency_diagonal", False):
        labels_fn, to_score = _frequency_parts(sde)
    else:
        labels_fn, _ = get_score_parts(sde, continuous)
        std_fn = getattr(labels_fn, "std_fn", None)

        def to_score(out, x, t):
            return out if std_fn is None else -out / per_sample(std_fn(t), x)

    def score_fn(x, t):
        out = model_fn(x, labels_fn(t))
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"the model output must be a torch.Tensor of the state's shape {tuple(x.shape)}, got "
                            f"{type(out).__name__}")
        if out.shape != x.shape:  # broadcasting would hide a wrong model
            raise ValueError(f"the model output must have the state's shape {tuple(x.shape)}, got "
                             f"{tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}")
        return to_score(out, x, t)

    return score_fn


def _frequency_parts(sde):
    """The heat family's convention (fastsde.heat): labels 999 t (continuous time, as VP), the model predicts the
    noise in pixel space, score = -idct2(dct2(out) / s_k(t)) with s_k the marginal std per frequency."""
    from fastsde.heat import freq_scale

    def labels_fn(t):
        return t * 999

    def to_score(out, x, t):
        return freq_scale(out, -1.0 / sde.marginal_coefs(t, x.shape)[1])

    return labels_fn, to_score


def to_flattened_numpy(x: torch.Tensor):
    """Flatten a tensor to a float64-capable 1-D NumPy array."""
    return x.detach().cpu().numpy().reshape((-1,))


def from_flattened_numpy(x, shape) -> torch.Tensor:
    """Inverse of to_flattened_numpy."""
    return torch.from_numpy(x.reshape(shape))
