"""score_sde's `sde_lib`: the SDE classes (fastsde's, which compute the original's tables and formulas bit for bit)."""
from fastsde.sde import SDE, VESDE, VPSDE, subVPSDE

__all__ = ["SDE", "VPSDE", "subVPSDE", "VESDE"]
