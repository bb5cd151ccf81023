"""score_sde's `models` package: `models.utils` (registry and model/score helpers)."""
