"""score_sde's `models.utils` names: the model-to-score conventions live in fastsde.score (the engine); this module
keeps the path score_sde code imports them from."""
from fastsde.score import from_flattened_numpy, get_model_fn, get_score_fn, get_score_parts, to_flattened_numpy

__all__ = ["get_model_fn", "get_score_fn", "get_score_parts", "to_flattened_numpy", "from_flattened_numpy"]
