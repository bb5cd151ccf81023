"""Few-step solvers of score-based models: DDIM, Euler(-ancestral), EDM's Heun, DPM-Solver(++), UniPC and the
adaptive SDE solver of Jolicoeur-Martineau et al., for every SDE (VE, VP, subVP) and model convention of the engine.

Each table-driven solver compiles, on the host in float64, into a Program of two instructions (a model call
turned into a data prediction, and the update x' = a x + sum_k b_k D_k + c z over up to three stored predictions),
which fastsde.executor runs on preallocated buffers through fastsde.ops.affine_combine_step. See program.py for the
buffers and the FSN1 draw-id plan, library.py for the formulas, grid.py for the (alpha, sigma) form and time grids.
"""
from __future__ import annotations

from fastsde.solvers import adaptive as _adaptive  # noqa: F401  (registers "adaptive")
from fastsde.solvers import library as _library  # noqa: F401  (registers the table-driven solvers)
from fastsde.solvers.grid import GRIDS, time_grid
from fastsde.solvers.program import Executor, Program
from fastsde.solvers.registry import Solver, get_solver, register_solver, solver_names
from fastsde.solvers.sampler import build_program, get_sampler

__all__ = ["get_sampler", "solver_names", "get_solver", "register_solver", "Solver", "Program", "Executor",
           "build_program", "time_grid", "GRIDS"]
