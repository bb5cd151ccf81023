"""The table-driven solvers: every update is x' = a x + sum_k b_k D_k + c z on data predictions D_k.

Notation (fastsde.solvers.grid): a step goes from P to Q, lambda = log(alpha / sigma), h = lambda_Q - lambda_P > 0,
sigma~ = sigma / alpha = exp(-lambda). In x~ = x / alpha every SDE is k-diffusion's VE form, so a k-diffusion update
x~' = u x~ + sum v_k D_k + w z becomes x' = (alpha_Q u / alpha_P) x + sum alpha_Q v_k D_k + alpha_Q w z. Euler in
sigma~ is DDIM (eta = 0) is DPM-Solver++ 1 (Lu et al. 2022); the names below follow k-diffusion and the papers:

    ddim              Song, Meng & Ermon 2021, eta >= 0 (sigma_eta = eta sigma_Q sqrt(1 - e^(-2h)))
    euler, heun       Karras et al. 2022 (EDM) algorithm 2 with the churn option (s_churn, s_tmin, s_tmax, s_noise)
    euler_ancestral   k-diffusion's ancestral Euler (eta, s_noise)
    dpm_2             k-diffusion's DPM-Solver-2 variant (midpoint in log sigma~)
    dpmpp_2m[_sde]    DPM-Solver++(2M) and its SDE variant (midpoint; eta = 0 and 1)
    dpmpp_3m[_sde]    DPM-Solver++(3M) and its SDE variant (k-diffusion's sample_dpmpp_3m_sde; eta = 0 and 1)
    dpm_solver_2, _3  singlestep DPM-Solver++ of orders 2 (r1 = 1/2) and 3 (r1 = 1/3, r2 = 2/3), data prediction
    unipc             UniPC-2 with the B(h) = e^h - 1 variant (bh2) and the UniC corrector (Zhao et al. 2023)

Multistep solvers keep D_i in slot i mod 3 and start with lower orders.
"""
from __future__ import annotations

import math

import numpy as np

from fastsde.solvers.program import churn_draw, update_draw
from fastsde.solvers.registry import Solver, register_solver

__all__ = ["Churn", "DDIM", "Euler", "EulerAncestral", "Heun", "DPM2", "DPMpp2M", "DPMpp2MSDE", "DPMpp3M", "DPMpp3MSDE",
           "DPMSolver2", "DPMSolver3", "UniPC"]


class Churn(Solver):
    """EDM's churn: before step i's first model call, raise sigma~ to sigma~ (1 + gamma) with fresh noise."""

    defaults = {"s_churn": 0.0, "s_tmin": 0.0, "s_tmax": float("inf"), "s_noise": 1.0}

    @property
    def stochastic(self) -> bool:
        return self.options["s_churn"] > 0

    def churn(self, program, i, P, at_log_snr, churn_steps):
        o = self.options
        gamma = min(o["s_churn"] / churn_steps, math.sqrt(2) - 1) if o["s_tmin"] <= P.st <= o["s_tmax"] else 0.0
        if gamma <= 0:
            return P
        H = at_log_snr(-math.log(P.st * (1 + gamma)))
        # x^ = alpha_H (x / alpha_P + s_noise sqrt(sigma~_H^2 - sigma~_P^2) z)
        program.combine("x", "x", H.alpha / P.alpha, (), H.alpha * o["s_noise"] * math.sqrt(H.st**2 - P.st**2),
                        churn_draw(i))
        return H


@register_solver(name="ddim")
class DDIM(Solver):
    """x' = alpha_Q D + sqrt(sigma_Q^2 - s^2) (x - alpha_P D) / sigma_P + s z, s = eta sigma_Q sqrt(1 - e^(-2h))."""

    defaults = {"eta": 0.0}

    @property
    def stochastic(self) -> bool:
        return self.options["eta"] > 0

    def build(self, program, points, at_log_snr, churn_steps):
        eta = self.options["eta"]
        for i, (P, Q) in enumerate(zip(points, points[1:])):
            r = Q.st / P.st
            s = eta * Q.sigma * math.sqrt(max(0.0, 1 - r * r))
            a = math.sqrt(max(0.0, Q.sigma**2 - s * s)) / P.sigma
            program.eval("x", 0, P, i)
            program.combine("x", "x", a, [(0, Q.alpha - a * P.alpha)], s, update_draw(i))


@register_solver(name="euler")
class Euler(Churn):
    """Euler in sigma~ (EDM algorithm 2 without the correction): x~' = x~ + (sigma~_Q - sigma~_H)(x~ - D) / sigma~_H."""

    def build(self, program, points, at_log_snr, churn_steps):
        for i, (P, Q) in enumerate(zip(points, points[1:])):
            H = self.churn(program, i, P, at_log_snr, churn_steps)
            program.eval("x", 0, H, i)
            program.combine("x", "x", Q.sigma / H.sigma, [(0, Q.alpha * (1 - Q.st / H.st))])


@register_solver(name="euler_ancestral")
class EulerAncestral(Solver):
    """Euler down to sigma_down, then noise sigma_up (k-diffusion's get_ancestral_step(sigma~_P, sigma~_Q, eta))."""

    defaults = {"eta": 1.0, "s_noise": 1.0}
    order = None

    @property
    def stochastic(self) -> bool:
        return self.options["eta"] > 0 and self.options["s_noise"] > 0

    def build(self, program, points, at_log_snr, churn_steps):
        eta, s_noise = self.options["eta"], self.options["s_noise"]
        for i, (P, Q) in enumerate(zip(points, points[1:])):
            # k-diffusion's sigma_up = sqrt(Q^2 (P^2 - Q^2) / P^2), sigma_down = sqrt(Q^2 - up^2), written without
            # squaring a sigma (a sigma~ of 1e300 overflowed float64)
            up = min(Q.st, eta * Q.st * math.sqrt(max(0.0, 1.0 - (Q.st / P.st) ** 2)))
            down = Q.st * math.sqrt(max(0.0, 1.0 - (up / Q.st) ** 2))
            r = down / P.st
            program.eval("x", 0, P, i)
            program.combine("x", "x", Q.alpha * r / P.alpha, [(0, Q.alpha * (1 - r))], Q.alpha * up * s_noise,
                            update_draw(i))


@register_solver(name="heun")
class Heun(Churn):
    """EDM's Heun (Karras et al. 2022 algorithm 2): Euler to Q, then the trapezoid of the two slopes."""

    order = 2
    evals_per_step = 2

    def build(self, program, points, at_log_snr, churn_steps):
        for i, (P, Q) in enumerate(zip(points, points[1:])):
            H = self.churn(program, i, P, at_log_snr, churn_steps)
            r, delta = Q.st / H.st, Q.st - H.st
            program.eval("x", 0, H, i)
            program.combine("y", "x", Q.sigma / H.sigma, [(0, Q.alpha * (1 - r))])
            # the second slope d' = (y~ - D') / sigma~_Q is stored as such (a slope Eval): expanding it through D'
            # would multiply the rounding of y by 1 / sigma~_Q (a tiny last sigma, e.g. [10, 1e-30, 0], blew up)
            program.eval("y", 1, Q, i, slope=True)
            # x~' = x~ + (delta/2)((x~ - D)/sigma~_H + d') = (1 + delta/(2 sigma~_H)) x~ - delta/(2 sigma~_H) D
            #       + (delta/2) d'
            program.combine("x", "x", Q.alpha / H.alpha * (1 + delta / (2 * H.st)),
                            [(0, -Q.alpha * delta / (2 * H.st)), (1, Q.alpha * delta / 2)])


@register_solver(name="dpm_2")
class DPM2(Churn):
    """k-diffusion's sample_dpm_2: Euler to the log-midpoint M of sigma~, then the full step with M's slope."""

    order = 2
    evals_per_step = 2

    def build(self, program, points, at_log_snr, churn_steps):
        for i, (P, Q) in enumerate(zip(points, points[1:])):
            H = self.churn(program, i, P, at_log_snr, churn_steps)
            M = at_log_snr(-0.5 * (math.log(H.st) + math.log(Q.st)))
            rm = M.st / H.st
            program.eval("x", 0, H, i)
            program.combine("y", "x", M.sigma / H.sigma, [(0, M.alpha * (1 - rm))])
            # the midpoint slope d_M = (x~_M - D_M) / sigma~_M is stored as such (a slope Eval), not expanded through
            # D_M: at a tiny sigma~_M the expansion multiplied the rounding of x_M by 1 / sigma~_M
            program.eval("y", 1, M, i, slope=True)
            # x~' = x~ + (sigma~_Q - sigma~_H) d_M
            program.combine("x", "x", Q.alpha / H.alpha, [(1, Q.alpha * (Q.st - H.st))])


class _DPMpp2M(Solver):
    """DPM-Solver++(2M) (k-diffusion's sample_dpmpp_2m_sde, midpoint): x~' = (sigma~_Q/sigma~_P) e^(-eta h) x~
    + (1 - e^(-h - eta h)) (D + (D - D_prev) / (2 r)) + sigma~_Q sqrt(1 - e^(-2 eta h)) z, r = h_prev / h."""

    defaults = {"eta": 0.0, "s_noise": 1.0}
    order = 2

    @property
    def stochastic(self) -> bool:
        return self.options["eta"] > 0 and self.options["s_noise"] > 0

    def build(self, program, points, at_log_snr, churn_steps):
        eta, s_noise = self.options["eta"], self.options["s_noise"]
        h_prev = None
        for i, (P, Q) in enumerate(zip(points, points[1:])):
            h = Q.lam - P.lam
            phi = -math.expm1(-h - eta * h)
            cur, prev = i % 3, (i - 1) % 3
            program.eval("x", cur, P, i)
            terms = [(cur, Q.alpha * phi)]
            if h_prev is not None:
                r = h_prev / h
                terms = [(cur, Q.alpha * phi * (1 + 0.5 / r)), (prev, -Q.alpha * phi * 0.5 / r)]
            c = Q.sigma * math.sqrt(-math.expm1(-2 * eta * h)) * s_noise
            program.combine("x", "x", Q.sigma / P.sigma * math.exp(-eta * h), terms, c, update_draw(i))
            h_prev = h


@register_solver(name="dpmpp_2m")
class DPMpp2M(_DPMpp2M):
    __doc__ = _DPMpp2M.__doc__ + " Deterministic (eta = 0): k-diffusion's sample_dpmpp_2m."


@register_solver(name="dpmpp_2m_sde")
class DPMpp2MSDE(_DPMpp2M):
    __doc__ = _DPMpp2M.__doc__ + " eta = 1 by default."
    defaults = {"eta": 1.0, "s_noise": 1.0}
    order = None


class _DPMpp3M(Solver):
    """DPM-Solver++(3M) as k-diffusion's sample_dpmpp_3m_sde: with he = (1 + eta) h, x~' = e^(-he) x~
    + (1 - e^(-he)) D + phi2 d1 - phi3 d2 + sigma~_Q sqrt(1 - e^(-2 eta h)) z, d1, d2 the divided differences of
    D, D_1, D_2 (one and two steps back), phi2 = (e^(-he) - 1)/he + 1, phi3 = phi2 / he - 1/2."""

    defaults = {"eta": 0.0, "s_noise": 1.0}
    order = 3

    @property
    def stochastic(self) -> bool:
        return self.options["eta"] > 0 and self.options["s_noise"] > 0

    def build(self, program, points, at_log_snr, churn_steps):
        eta, s_noise = self.options["eta"], self.options["s_noise"]
        h1 = h2 = None
        for i, (P, Q) in enumerate(zip(points, points[1:])):
            h = Q.lam - P.lam
            he = h * (eta + 1)
            coef = np.array([-math.expm1(-he), 0.0, 0.0])  # on (D, D_1, D_2)
            phi2 = math.expm1(-he) / he + 1
            if h2 is not None:
                r0, r1 = h1 / h, h2 / h
                d1_0, d1_1 = np.array([1, -1, 0]) / r0, np.array([0, 1, -1]) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                coef += phi2 * d1 - (phi2 / he - 0.5) * d2
            elif h1 is not None:
                coef += phi2 * np.array([1, -1, 0]) / (h1 / h)
            slots = [i % 3, (i - 1) % 3, (i - 2) % 3]
            program.eval("x", slots[0], P, i)
            terms = [(s, Q.alpha * v) for s, v in zip(slots, coef) if v != 0.0]
            c = Q.sigma * math.sqrt(-math.expm1(-2 * eta * h)) * s_noise
            program.combine("x", "x", Q.sigma / P.sigma * math.exp(-eta * h), terms, c, update_draw(i))
            h1, h2 = h, h1


@register_solver(name="dpmpp_3m")
class DPMpp3M(_DPMpp3M):
    __doc__ = _DPMpp3M.__doc__ + " Deterministic (eta = 0)."


@register_solver(name="dpmpp_3m_sde")
class DPMpp3MSDE(_DPMpp3M):
    __doc__ = _DPMpp3M.__doc__ + " eta = 1 by default."
    defaults = {"eta": 1.0, "s_noise": 1.0}
    order = None


def _check_stage(i, P, Q, *stages):
    """A singlestep solver's intermediate points must lie strictly between the step's ends in log-SNR (their
    realized values: under discrete labels a stage can snap onto the table row of P, and r1 = 0 divides by 0)."""
    lams = [P.lam, *(S.lam for S in stages), Q.lam]
    if not all(a < b for a, b in zip(lams, lams[1:])):
        raise ValueError(f"step {i} (t {P.t:.6g} -> {Q.t:.6g}) has an intermediate point on the same noise level as "
                         f"its ends (log-SNR {', '.join(f'{v:.6g}' for v in lams)}): with discrete labels use fewer "
                         f"steps than N, or continuous labels")


@register_solver(name="dpm_solver_2")
class DPMSolver2(Solver):
    """Singlestep DPM-Solver++(2S) (Lu et al. 2022, data prediction, r1 = 1/2): with phi(u) = e^(-u) - 1,
    x_s1 = (sigma_s1/sigma_P) x - alpha_s1 phi(r1 h) D;
    x' = (sigma_Q/sigma_P) x - alpha_Q phi(h) (D + (D_s1 - D) / (2 r1))."""

    order = 2
    evals_per_step = 2

    def build(self, program, points, at_log_snr, churn_steps):
        for i, (P, Q) in enumerate(zip(points, points[1:])):
            h = Q.lam - P.lam
            S1 = at_log_snr(P.lam + 0.5 * h)
            _check_stage(i, P, Q, S1)
            r1 = (S1.lam - P.lam) / h  # realized (table-snapped under discrete labels)
            phi1 = math.expm1(-h)
            program.eval("x", 0, P, i)
            program.combine("y", "x", S1.sigma / P.sigma, [(0, -S1.alpha * math.expm1(-r1 * h))])
            program.eval("y", 1, S1, i)
            program.combine("x", "x", Q.sigma / P.sigma, [(0, -Q.alpha * phi1 * (1 - 0.5 / r1)),
                                                          (1, -Q.alpha * phi1 * 0.5 / r1)])


@register_solver(name="dpm_solver_3")
class DPMSolver3(Solver):
    """Singlestep DPM-Solver++(3S) (Lu et al. 2022, 'dpmsolver' type, r1 = 1/3, r2 = 2/3), data prediction."""

    order = 3
    evals_per_step = 3

    def build(self, program, points, at_log_snr, churn_steps):
        for i, (P, Q) in enumerate(zip(points, points[1:])):
            h = Q.lam - P.lam
            S1, S2 = at_log_snr(P.lam + h / 3), at_log_snr(P.lam + 2 * h / 3)
            _check_stage(i, P, Q, S1, S2)
            r1, r2 = (S1.lam - P.lam) / h, (S2.lam - P.lam) / h
            phi_11, phi_12, phi_1 = math.expm1(-r1 * h), math.expm1(-r2 * h), math.expm1(-h)
            phi_22 = math.expm1(-r2 * h) / (r2 * h) + 1
            phi_2 = phi_1 / h + 1
            program.eval("x", 0, P, i)
            program.combine("y", "x", S1.sigma / P.sigma, [(0, -S1.alpha * phi_11)])
            program.eval("y", 1, S1, i)
            k = r2 / r1 * S2.alpha * phi_22  # on (D_s1 - D)
            program.combine("y", "x", S2.sigma / P.sigma, [(0, -S2.alpha * phi_12 - k), (1, k)])
            program.eval("y", 2, S2, i)
            k = Q.alpha * phi_2 / r2  # on (D_s2 - D)
            program.combine("x", "x", Q.sigma / P.sigma, [(0, -Q.alpha * phi_1 - k), (2, k)])


@register_solver(name="unipc")
class UniPC(Solver):
    """UniPC-2, bh2 (Zhao et al. 2023, data prediction): predictor UniP-2 from D_i, D_{i-1}; the model call at the
    predicted point feeds the corrector UniC of step i and the predictor of step i+1 (no extra evaluation). The first
    step is order 1; with fewer than 10 steps the last one is too (lower_order_final). No corrector after the last
    step. Order 3 with the corrector (UniC-p raises UniP-p's order by one)."""

    order = 3

    def build(self, program, points, at_log_snr, churn_steps):
        n = len(points) - 1
        program.eval("x", 0, points[0], 0)
        for i, (P, Q) in enumerate(zip(points, points[1:])):
            h = Q.lam - P.lam
            hh = -h
            h_phi_1 = math.expm1(hh)
            b_h = math.expm1(hh)
            order = 1 if i == 0 or (n < 10 and i == n - 1) else 2
            cur, prev, nxt = i % 3, (i - 1) % 3, (i + 1) % 3
            base = {cur: -Q.alpha * h_phi_1}  # x_t_ = (sigma_Q/sigma_P) x - alpha_Q h_phi_1 D_i
            pred, corr = dict(base), dict(base)
            if order == 1:
                rho_c = [0.5]
                corr[nxt] = -Q.alpha * b_h * rho_c[-1]
                corr[cur] += Q.alpha * b_h * rho_c[-1]
            else:
                rk = (points[i - 1].lam - P.lam) / h
                h_phi_k = h_phi_1 / hh - 1
                b1 = h_phi_k / b_h
                h_phi_k = h_phi_k / hh - 0.5
                b2 = h_phi_k * 2 / b_h
                rho_c = np.linalg.solve(np.array([[1.0, 1.0], [rk, 1.0]]), np.array([b1, b2]))
                # D1 = (D_{i-1} - D_i) / rk; predictor rho_p = 1/2
                for coefs, rho in ((pred, 0.5), (corr, rho_c[0])):
                    coefs[prev] = coefs.get(prev, 0.0) - Q.alpha * b_h * rho / rk
                    coefs[cur] += Q.alpha * b_h * rho / rk
                corr[nxt] = -Q.alpha * b_h * rho_c[-1]
                corr[cur] += Q.alpha * b_h * rho_c[-1]
            a = Q.sigma / P.sigma
            if i == n - 1:
                program.combine("x", "x", a, list(pred.items()))
                break
            program.combine("y", "x", a, list(pred.items()))
            program.eval("y", nxt, Q, i + 1)
            program.combine("x", "x", a, list(corr.items()))
