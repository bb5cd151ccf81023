"""The solver registry (name -> class), like the predictors' (fastsde.sampling.registry), and the Solver base."""
from __future__ import annotations

import abc
import math

from fastsde._util import register_in

__all__ = ["Solver", "register_solver", "get_solver", "solver_names"]

_SOLVERS: dict[str, type] = {}


def register_solver(cls=None, *, name=None):
    """Class decorator registering a Solver under `name` (default: the class name); a duplicate is a ValueError."""

    def deco(c):
        register_in(_SOLVERS, "solver", c, name=name)
        c.name = c.__name__ if name is None else name
        return c

    return deco if cls is None else deco(cls)


def get_solver(name: str) -> type:
    """The Solver class registered as `name`; a ValueError listing the known names otherwise."""
    if name not in _SOLVERS:
        raise ValueError(f"unknown solver {name!r}; known: {sorted(_SOLVERS)}")
    return _SOLVERS[name]


def solver_names() -> list[str]:
    """The registered solver names, sorted."""
    return sorted(_SOLVERS)


class Solver(abc.ABC):
    """A few-step solver of the reverse SDE / probability-flow ODE, compiled to a fastsde.solvers.program.Program.

    Class attributes: `defaults` (option -> default value; options are the keyword arguments of get_sampler that
    the solver takes), `order` (convergence order of the deterministic solver on the probability-flow ODE, None for
    stochastic ones), `evals_per_step` (model calls per time step), `adaptive` (chooses its own steps).
    """

    name = "?"
    defaults: dict = {}
    order: int | None = 1
    evals_per_step = 1
    adaptive = False

    def __init__(self, **options):
        unknown = sorted(set(options) - set(self.defaults))
        if unknown:
            raise ValueError(f"solver {self.name!r} takes options {sorted(self.defaults)}, got {unknown}")
        self.options = {**self.defaults, **options}
        for key, value in self.options.items():
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not number or not value >= 0 or not (math.isfinite(value) or key == "s_tmax"):
                raise ValueError(f"solver option {key} must be a non-negative number, got {value!r}")

    @property
    def stochastic(self) -> bool:
        """Whether the solver adds noise with these options."""
        return False

    @abc.abstractmethod
    def build(self, program, points, at_log_snr, churn_steps: int) -> None:
        """Append the steps from points[0] to points[-1] (fastsde.solvers.grid.Point list) to `program`;
        at_log_snr(lam) gives an intermediate Point; churn_steps is the N of EDM's gamma = min(s_churn / N, ...)."""
