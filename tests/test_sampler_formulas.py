"""The update rules of the multistep, exponential-integrator, adaptive and CFG++ samplers, checked on
stub denoisers against values computed here from the published formulas (not from our code):

* ipndm: Adams–Bashforth weights = ∫ of the Lagrange basis on equally spaced nodes; ipndm_v: the
  variable-step ones where iPNDM-v has them (order 2; order 3 on a linear derivative or equal steps);
* deis: the weights are ∫ dσ/dt·L_j dt in the time t of the VP process fitted to σ ∈ [0.002, 80];
* er_sde: the ER-SDE-Solver-3 step with the noise scaler ℓ(e^{ℓ^0.3} + 10), its integrals by quad;
* sa_solver: the stochastic Adams weights α_t(1 + τ²)∫ e^{(1+τ²)(λ-λ_t)} L_j(λ) dλ by quad;
* heunpp2: Heun++'s weights 1 - w₂ - w₃, w₂ = σ_{i+1}/(3σ₀), w₃ = σ_{i+2}/(3σ₀);
* dpm_fast / dpm_adaptive: where the model is called, where they stop (σ_min, not 0), the step
  size controller;
* the CFG++ samplers: x0 from the guided estimate, the noise direction from the unconditional one.

The stubs answer from scripts (one tensor per call), so every expected state is a sum of known
tensors with coefficients computed here.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from numpy.polynomial import polynomial as P
from scipy import integrate

from nodes.diffusion.k_samplers import SAMPLER_FUNCTIONS, SamplerEnv
from nodes.diffusion.k_samplers import multistep
from nodes.diffusion.k_samplers.dpm_solver import PIDStepSizeController
from nodes.diffusion.k_samplers.exponential_sde import sample_er_sde
from nodes.diffusion.k_samplers.sa_solver import stochastic_adams_weights
from nodes.diffusion.model_sampling import DiscreteSampling, FlowSampling, discrete_sigmas
from nodes.diffusion.noise import initial_noise
from nodes.diffusion.schedulers import ksampler_sigmas

SD = DiscreteSampling(discrete_sigmas({"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}))
FLOW = FlowSampling(mu=None)
SHAPE = (1, 2, 4, 4)


def _scripts(n: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(SHAPE, generator=g) for _ in range(n)]


class SlopeScript:
    """Call k answers denoised = x - σ·slopes[k], so the derivative (x - denoised)/σ is slopes[k]."""

    def __init__(self, slopes: list[torch.Tensor]) -> None:
        self.slopes = slopes
        self.calls: list[tuple[torch.Tensor, float]] = []

    def __call__(self, x, sigma):
        self.calls.append((x.clone(), float(sigma)))
        return x - torch.as_tensor(sigma) * self.slopes[len(self.calls) - 1]


class EstimateScript:
    """Call k answers denoised = estimates[k] (and, for CFG++, uncond_denoised = unconds[k])."""

    def __init__(self, estimates: list[torch.Tensor], unconds: list[torch.Tensor] | None = None) -> None:
        self.estimates, self.unconds = estimates, unconds
        self.calls: list[tuple[torch.Tensor, float]] = []

    def __call__(self, x, sigma):
        self.calls.append((x.clone(), float(sigma)))
        return self.estimates[len(self.calls) - 1].clone()

    def with_uncond(self, x, sigma):
        denoised = self(x, sigma)
        return denoised, self.unconds[len(self.calls) - 1].clone()


def _lagrange_integral(nodes: list[float], j: int, a: float, b: float) -> float:
    """∫_a^b L_j(t) dt for the Lagrange basis polynomial of node j (exact, by polynomial algebra)."""
    poly = np.array([1.0])
    for k, node in enumerate(nodes):
        if k != j:
            poly = P.polymul(poly, np.array([-node, 1.0]) / (nodes[j] - node))
    antiderivative = P.polyint(poly)
    return float(P.polyval(b, antiderivative) - P.polyval(a, antiderivative))


# --- ipndm / ipndm_v -----------------------------------------------------------------------------------

@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_ipndm_weights_are_adams_bashforth(order):
    nodes = [0.0, -1.0, -2.0, -3.0][:order]  # t_n, t_{n-1}, … for a unit step forward from t_n to 1
    expected = [_lagrange_integral(nodes, j, 0.0, 1.0) for j in range(order)]
    np.testing.assert_allclose(multistep.AB_WEIGHTS[order], expected, rtol=1e-12)


def test_ipndm_run_is_adams_bashforth_on_the_scripted_derivatives():
    sigmas = ksampler_sigmas(SD, "ipndm", "karras", 7)
    slopes = _scripts(7)
    x0 = initial_noise(SHAPE, 1) * float(sigmas[0])
    model = SlopeScript(slopes)
    out = SAMPLER_FUNCTIONS["ipndm"](model, x0.clone(), sigmas.clone(), SamplerEnv(SD, seed=1))
    x = x0.double()
    s = [float(v) for v in sigmas]
    for i in range(len(s) - 1):
        torch.testing.assert_close(model.calls[i][0].double(), x, rtol=1e-5, atol=1e-4)
        if s[i + 1] == 0:
            x = x - s[i] * slopes[i].double()  # the estimate itself
            break
        order = min(4, i + 1)
        nodes = [-float(k) for k in range(order)]
        weights = [_lagrange_integral(nodes, j, 0.0, 1.0) for j in range(order)]
        x = x + (s[i + 1] - s[i]) * sum(w * slopes[i - j].double() for j, w in enumerate(weights))
    torch.testing.assert_close(out.double(), x, rtol=1e-5, atol=1e-4)


def test_ipndm_v_weights():
    rng = np.random.default_rng(0)
    for _ in range(5):
        t = np.cumsum(np.concatenate([[10.0], -rng.uniform(0.3, 2.0, 4)]))  # decreasing, like σ
        for order in (2, 3):
            nodes = [float(t[3 - k]) for k in range(order)]  # newest first
            steps = [float(t[4 - k] - t[3 - k]) for k in range(order)]
            weights = multistep.variable_ab_weights(steps)
            h = float(t[4] - t[3])
            exact = [_lagrange_integral(nodes, j, float(t[3]), float(t[4])) / h for j in range(order)]
            if order == 2:  # variable-step Adams–Bashforth
                np.testing.assert_allclose(weights, exact, rtol=1e-10)
            else:  # exact for a linear derivative on any spacing
                for degree in (0, 1):
                    integral = (t[4] ** (degree + 1) - t[3] ** (degree + 1)) / (degree + 1) / h
                    assert sum(w * n ** degree for w, n in zip(weights, nodes)) == pytest.approx(integral, rel=1e-10)
    # equal steps: Adams–Bashforth at order 3; the zju-pi order-4 form ComfyUI runs gives (57, -65, 43, -11)/24
    np.testing.assert_allclose(multistep.variable_ab_weights([-0.5] * 3), multistep.AB_WEIGHTS[3], rtol=1e-12)
    np.testing.assert_allclose(np.array(multistep.variable_ab_weights([-0.5] * 4)) * 24, [57, -65, 43, -11],
                               rtol=1e-12)


# --- deis -----------------------------------------------------------------------------------------------

def _vp_fit(eps_s: float = 1e-3, sigma_min: float = 0.002, sigma_max: float = 80.0):
    """β_d, β_min of σ(t)² + 1 = exp(β_d t²/2 + β_min t) through (eps_s, σ_min) and (1, σ_max)."""
    a = np.array([[eps_s ** 2 / 2, eps_s], [0.5, 1.0]])
    b = np.array([math.log(sigma_min ** 2 + 1), math.log(sigma_max ** 2 + 1)])
    return np.linalg.solve(a, b)


def test_deis_weights_are_integrals_of_the_lagrange_basis_in_vp_time():
    beta_d, beta_min = _vp_fit()

    def t_of(sigma: float) -> float:
        return (math.sqrt(beta_min ** 2 + 2 * beta_d * math.log(sigma * sigma + 1)) - beta_min) / beta_d

    def dsigma_dt(t: float) -> float:
        e = math.exp(beta_d * t * t / 2 + beta_min * t)
        return (beta_d * t + beta_min) * e / (2 * math.sqrt(e - 1))

    sigmas = ksampler_sigmas(SD, "deis", "karras", 8)
    ours = multistep.deis_coefficients(sigmas, 3)
    ts = [t_of(float(s)) for s in sigmas]
    assert ours[0] == [] and ours[-1] == []  # first step: Euler; last step to σ = 0: Euler
    for i, weights in enumerate(ours[1:-1], start=1):
        order = min(i + 1, 3)
        nodes = [ts[i - k] for k in range(order)]
        expected = []
        for j in range(order):
            def integrand(t: float, j: int = j) -> float:
                basis = np.prod([(t - nodes[k]) / (nodes[j] - nodes[k]) for k in range(order) if k != j])
                return dsigma_dt(t) * basis
            expected.append(integrate.quad(integrand, ts[i], ts[i + 1], epsrel=1e-10)[0])
        np.testing.assert_allclose(weights, expected, rtol=1e-4)  # the 10,000-point sum
        # the basis sums to 1: the weights integrate dσ, i.e. add up to the step in σ
        assert sum(weights) == pytest.approx(float(sigmas[i + 1] - sigmas[i]), rel=1e-4)


def test_deis_run_uses_its_weights_and_ends_with_euler():
    sigmas = ksampler_sigmas(SD, "deis", "exponential", 5)
    slopes = _scripts(5, seed=2)
    x0 = initial_noise(SHAPE, 1) * float(sigmas[0])
    out = SAMPLER_FUNCTIONS["deis"](SlopeScript(slopes), x0.clone(), sigmas.clone(), SamplerEnv(SD))
    weights = multistep.deis_coefficients(sigmas, 3)
    x = x0.double()
    for i in range(5):
        if not weights[i]:
            x = x + float(sigmas[i + 1] - sigmas[i]) * slopes[i].double()
        else:
            x = x + sum(w * slopes[i - j].double() for j, w in enumerate(weights[i]))
    torch.testing.assert_close(out.double(), x, rtol=1e-5, atol=1e-4)


# --- er_sde ---------------------------------------------------------------------------------------------

def _er_sde_reference(sigmas: list[float], x0: torch.Tensor, estimates: list[torch.Tensor],
                      integral) -> list[torch.Tensor]:
    """States after each step of VP ER-SDE-Solver-3 (SD: ℓ = σ, α = 1) without noise."""
    def phi(ell: float) -> float:
        return ell * (math.exp(ell ** 0.3) + 10.0)

    x, states, slope_prev = x0.double(), [], None
    d = [e.double() for e in estimates]
    for i in range(len(sigmas) - 1):
        s, t = sigmas[i], sigmas[i + 1]
        if t == 0:
            states.append(d[i])
            break
        r = phi(t) / phi(s)
        x_next = r * x + (1 - r) * d[i]
        if i >= 1:
            slope = (d[i] - d[i - 1]) / (s - sigmas[i - 1])
            x_next = x_next + (t - s + phi(t) * integral(lambda ell: 1 / phi(ell), t, s)) * slope
            if i >= 2:
                curvature = (slope - slope_prev) / ((s - sigmas[i - 2]) / 2)
                x_next = x_next + ((t - s) ** 2 / 2 + phi(t) * integral(
                    lambda ell, s=s: (ell - s) / phi(ell), t, s)) * curvature
            slope_prev = slope
        x = x_next
        states.append(x)
    return states


def _left_sum(f, a: float, b: float, n: int = 200) -> float:
    step = (b - a) / n
    return sum(f(a + k * step) for k in range(n)) * step


@pytest.mark.parametrize("integral,tol", [(lambda f, a, b: integrate.quad(f, a, b)[0], 5e-3), (_left_sum, 2e-5)],
                         ids=["exact-integrals", "200-point-sums"])
def test_er_sde_stages_follow_the_published_step(integral, tol):
    sigmas = ksampler_sigmas(SD, "er_sde", "karras", 6)
    estimates = _scripts(6, seed=3)
    x0 = initial_noise(SHAPE, 1) * float(sigmas[0])
    model = EstimateScript(estimates)
    out = sample_er_sde(model, x0.clone(), sigmas.clone(), SamplerEnv(SD, seed=1), s_noise=0.0)
    states = _er_sde_reference([float(s) for s in sigmas], x0, estimates, integral)
    for i, state in enumerate(states[:-1]):
        scale = float(state.abs().max())
        torch.testing.assert_close(model.calls[i + 1][0].double(), state, rtol=0, atol=tol * max(scale, 1.0))
    torch.testing.assert_close(out.double(), states[-1])


# --- sa_solver ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("tau", [0.0, 0.7, 1.0])
@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_sa_solver_weights_are_exponentially_weighted_lagrange_integrals(order, tau):
    rng = np.random.default_rng(order)
    lam = np.cumsum(rng.uniform(0.2, 0.6, order + 1)) - 1.0  # increasing λ: older estimates first
    nodes, lam_s, lam_t = lam[:order], lam[order - 1], lam[order]
    sigma_t = 0.37
    ours = stochastic_adams_weights(torch.tensor(sigma_t, dtype=torch.float64), torch.tensor(nodes),
                                    torch.tensor(lam_s), torch.tensor(lam_t), tau)
    k = 1 + tau ** 2
    alpha_t = sigma_t * math.exp(lam_t)
    expected = []
    for j in range(order):
        def integrand(v: float, j: int = j) -> float:
            basis = np.prod([(v - nodes[m]) / (nodes[j] - nodes[m]) for m in range(order) if m != j])
            return math.exp(k * (v - lam_t)) * basis
        expected.append(alpha_t * k * integrate.quad(integrand, lam_s, lam_t, epsrel=1e-12)[0])
    np.testing.assert_allclose(ours.numpy(), expected, rtol=1e-7, atol=1e-10)
    if order == 1 and tau == 0.0:  # DPM-Solver++(1): α_t(1 - e^{-h})
        assert float(ours[0]) == pytest.approx(alpha_t * -math.expm1(-(lam_t - lam_s)))


def test_sa_solver_pece_evaluates_each_corrected_state():
    sigmas = ksampler_sigmas(SD, "sa_solver_pece", "karras", 5)
    model = EstimateScript(_scripts(9, seed=4))
    SAMPLER_FUNCTIONS["sa_solver_pece"](model, initial_noise(SHAPE, 1) * float(sigmas[0]), sigmas.clone(),
                                        SamplerEnv(SD, seed=1))
    s = [float(v) for v in sigmas]
    assert [c[1] for c in model.calls] == pytest.approx([s[0]] + [v for v in s[1:-1] for _ in range(2)], rel=1e-6)
    plain = EstimateScript(_scripts(5, seed=4))
    SAMPLER_FUNCTIONS["sa_solver"](plain, initial_noise(SHAPE, 1) * float(sigmas[0]), sigmas.clone(),
                                   SamplerEnv(SD, seed=1))
    assert [c[1] for c in plain.calls] == pytest.approx(s[:-1], rel=1e-6)


# --- heunpp2 --------------------------------------------------------------------------------------------

def test_heunpp2_weights():
    sigmas = ksampler_sigmas(SD, "heunpp2", "karras", 4)
    slopes = _scripts(11, seed=5)
    x0 = initial_noise(SHAPE, 1) * float(sigmas[0])
    model = SlopeScript(slopes)
    out = SAMPLER_FUNCTIONS["heunpp2"](model, x0.clone(), sigmas.clone(), SamplerEnv(SD))
    s = [float(v) for v in sigmas]
    x, k = x0.double(), 0
    for i in range(4):
        dt = s[i + 1] - s[i]
        d = [slopes[k + m].double() for m in range(3)]
        if i == 3:  # the last step: Euler
            x, k = x + dt * d[0], k + 1
        elif i == 2:  # the step before the last: Heun with w₂ = σ_{i+1}/(2σ₀)
            w2 = s[i + 1] / (2 * s[0])
            x, k = x + dt * ((1 - w2) * d[0] + w2 * d[1]), k + 2
        else:  # Heun++: evaluations at σ_i, σ_{i+1}, σ_{i+2}
            w2, w3 = s[i + 1] / (3 * s[0]), s[i + 2] / (3 * s[0])
            x, k = x + dt * ((1 - w2 - w3) * d[0] + w2 * d[1] + w3 * d[2]), k + 3
    assert len(model.calls) == k == 3 * 4 - 3
    assert [c[1] for c in model.calls[:3]] == pytest.approx(s[:3], rel=1e-6)
    torch.testing.assert_close(out.double(), x, rtol=1e-5, atol=1e-4)


# --- dpm_fast / dpm_adaptive ----------------------------------------------------------------------------

@pytest.mark.parametrize("steps", [1, 2, 3, 4, 7, 9])
def test_dpm_fast_spends_the_steps_as_model_calls_on_equal_steps_in_log_sigma(steps):
    sigmas = ksampler_sigmas(SD, "dpm_fast", "karras", steps)
    x0 = initial_noise(SHAPE, 1) * float(sigmas[0])
    model = EstimateScript([torch.zeros(SHAPE)] * steps)
    out = SAMPLER_FUNCTIONS["dpm_fast"](model, x0.clone(), sigmas.clone(), SamplerEnv(SD, seed=1))
    # DPM-Solver-fast: ⌊n/3⌋ + 1 equal steps in t = -log σ from σ_max to σ_min (the last σ above 0)
    m = steps // 3 + 1
    orders = [3] * (m - 2) + [2, 1] if steps % 3 == 0 else [3] * (m - 1) + [steps % 3]
    t0, t1 = -math.log(float(sigmas[0])), -math.log(float(sigmas[-2]))
    expected = []
    for i, order in enumerate(orders):
        t, h = t0 + i * (t1 - t0) / m, (t1 - t0) / m
        expected += [math.exp(-(t + f * h)) for f in {1: [0], 2: [0, 1 / 2], 3: [0, 1 / 3, 2 / 3]}[order]]
    assert [c[1] for c in model.calls] == pytest.approx(expected, rel=1e-5)
    # a zero estimate makes the ODE x ∝ σ: it stops at σ_min with that much noise left, not at 0
    # (float32: e^h - 1 of a long step cancels against x; relative to the start's scale)
    torch.testing.assert_close(out, x0 * float(sigmas[-2]) / float(sigmas[0]), rtol=1e-4,
                               atol=1e-5 * float(x0.abs().max()))


def test_pid_controller_is_the_integral_controller_with_atan_limiter():
    pid = PIDStepSizeController(0.05, 0.0, 1.0, 0.0, order=3, accept_safety=0.81)
    h = 0.05
    for error in [0.2, 3.0, 50.0, 0.9, 1e-4]:
        factor = 1 + math.atan((1 / (error + 1e-8)) ** (1 / 3) - 1)
        assert pid.propose_step(error) == (factor >= 0.81)
        h *= factor
        assert pid.h == pytest.approx(h, rel=1e-12)


def test_dpm_adaptive_attempts_are_three_calls_and_cover_the_range():
    sigmas = ksampler_sigmas(SD, "dpm_adaptive", "karras", 10)

    class Gaussian(EstimateScript):
        def __init__(self):
            super().__init__([])

        def __call__(self, x, sigma):
            self.calls.append((x.clone(), float(sigma)))
            return x / (1 + float(sigma) ** 2)  # the exact denoiser of standard-normal data

    model = Gaussian()
    x0 = initial_noise((1, 4, 16, 16), 1) * float(sigmas[0])
    events = []
    env = SamplerEnv(SD, seed=1, callback=lambda i, x, d: events.append(i + 1))
    out = SAMPLER_FUNCTIONS["dpm_adaptive"](model, x0.clone(), sigmas.clone(), env)
    t = [-math.log(c[1]) for c in model.calls]
    assert len(t) % 3 == 0 and len(t) // 3 == len(events) >= 2
    t_start, t_end = -math.log(float(sigmas[0])), -math.log(float(sigmas[-2]))
    assert t[0] == pytest.approx(t_start, rel=1e-5)
    attempt_starts = t[0::3]
    for a in range(len(attempt_starts)):
        s, h = t[3 * a], (t[3 * a + 1] - t[3 * a]) * 3
        assert t[3 * a + 2] == pytest.approx(s + 2 * h / 3, rel=1e-4, abs=1e-5)
        assert s + h <= t_end + 1e-5
    # each attempt starts where the last accepted one ended (or retries from the same point)
    assert attempt_starts == sorted(attempt_starts)
    assert events == sorted(events) and events[-1] == 10
    assert float(out.std()) == pytest.approx(math.sqrt(1 + float(sigmas[-2]) ** 2) * 1.0, abs=0.1)


# --- CFG++ ----------------------------------------------------------------------------------------------

def _cfg_pp_run(sampler: str, ms, steps: int = 3, seed: int = 1, sigmas: torch.Tensor | None = None):
    if sigmas is None:
        sigmas = ksampler_sigmas(ms, sampler, "karras" if ms is SD else "simple", steps)
    steps = len(sigmas) - 1
    estimates, unconds = _scripts(2 * steps, seed=6), _scripts(2 * steps, seed=7)
    model = EstimateScript(estimates, unconds)
    x0 = initial_noise(SHAPE, 1) * float(sigmas[0])
    out = SAMPLER_FUNCTIONS[sampler](model, x0.clone(), sigmas.clone(), SamplerEnv(ms, seed=seed))
    return [float(s) for s in sigmas], x0.double(), [e.double() for e in estimates], [u.double() for u in unconds], \
        model, out.double()


@pytest.mark.parametrize("flow", [False, True])
def test_euler_cfg_pp_is_ddim_with_the_unconditional_noise(flow):
    """CFG++ (Chung et al., 2024): x' = α'·x0_guided + σ'·ε_uncond, ε_uncond = (x - α·x0_uncond)/σ."""
    s, x, d, u, model, out = _cfg_pp_run("euler_cfg_pp", FLOW if flow else SD)
    for i in range(len(s) - 1):
        torch.testing.assert_close(model.calls[i][0].double(), x, rtol=1e-5, atol=1e-5)
        if s[i + 1] == 0:
            x = d[i]
            break
        alpha, alpha_next = (1 - s[i], 1 - s[i + 1]) if flow else (1.0, 1.0)
        x = alpha_next * d[i] + s[i + 1] * (x - alpha * u[i]) / s[i]
    torch.testing.assert_close(out, x, rtol=1e-5, atol=1e-5)


def test_euler_ancestral_cfg_pp_adds_the_generators_noise():
    s, x, d, u, model, out = _cfg_pp_run("euler_ancestral_cfg_pp", SD, seed=9)
    g = torch.Generator().manual_seed(9 + 1)
    for i in range(len(s) - 1):
        torch.testing.assert_close(model.calls[i][0].double(), x, rtol=1e-5, atol=1e-4)
        if s[i + 1] == 0:
            x = d[i]
            break
        up = min(s[i + 1], math.sqrt(s[i + 1] ** 2 * (s[i] ** 2 - s[i + 1] ** 2) / s[i] ** 2))
        down = math.sqrt(s[i + 1] ** 2 - up ** 2)
        x = d[i] + down * (x - u[i]) / s[i] + up * torch.randn(SHAPE, generator=g).double()
    torch.testing.assert_close(out, x, rtol=1e-5, atol=1e-4)


def test_dpmpp_2m_cfg_pp_second_order_step():
    s, x, d, u, model, out = _cfg_pp_run("dpmpp_2m_cfg_pp", SD, steps=4)
    lam = [-math.log(v) if v > 0 else math.inf for v in s]
    for i in range(len(s) - 1):
        torch.testing.assert_close(model.calls[i][0].double(), x, rtol=1e-5, atol=1e-4)
        if s[i + 1] == 0:
            x = d[i]
            break
        h = lam[i + 1] - lam[i]
        x_next = d[i] + math.exp(-h) * (x - u[i])  # the first-order CFG++ (DDIM) step
        if i > 0:
            r = (lam[i] - lam[i - 1]) / h
            x_next = x_next - math.expm1(-h) / (2 * r) * (d[i] - u[i - 1])
        x = x_next
    torch.testing.assert_close(out, x, rtol=1e-5, atol=1e-4)


def test_res_multistep_and_gradient_estimation_cfg_pp():
    s, x0, d, u, model, out = _cfg_pp_run("res_multistep_cfg_pp", SD, steps=4)
    lam = [-math.log(v) for v in s[:-1]]
    x = x0
    for i in range(3):
        torch.testing.assert_close(model.calls[i][0].double(), x, rtol=1e-5, atol=1e-4)
        if i == 0:
            x = d[0] + s[1] * (x - u[0]) / s[0]
            continue
        h, h_prev = lam[i + 1] - lam[i], lam[i] - lam[i - 1]
        phi1 = math.expm1(-h) / -h
        phi2 = (phi1 - 1) / -h
        c2 = -h_prev / h
        # the multistep exponential integrator on the unconditional estimates, guidance added first
        x = math.exp(-h) * (x + d[i] - u[i]) + h * ((phi1 - phi2 / c2) * u[i] + phi2 / c2 * u[i - 1])
    torch.testing.assert_close(out, d[3], rtol=1e-5, atol=1e-5)

    s, x, d, u, model, out = _cfg_pp_run("gradient_estimation_cfg_pp", SD, steps=3)
    old = None
    for i in range(2):
        torch.testing.assert_close(model.calls[i][0].double(), x, rtol=1e-5, atol=1e-4)
        slope = (x - u[i]) / s[i]
        x = d[i] + slope * s[i + 1]
        if old is not None:
            x = x + (2.0 - 1) * (slope - old) * (s[i + 1] - s[i])
        old = slope
    torch.testing.assert_close(model.calls[2][0].double(), x, rtol=1e-5, atol=1e-4)


def test_dpmpp_2s_ancestral_cfg_pp_uses_the_midpoint_uncond_and_adds_the_guidance():
    # (moderate σ ratios: σ_down = √(σ'² - σ_up²) cancels in float32 when σ' ≪ σ, in ComfyUI too)
    s, x, d, u, model, out = _cfg_pp_run("dpmpp_2s_ancestral_cfg_pp", SD, seed=5, sigmas=torch.tensor([3.0, 1.5, 0.0]))
    g = torch.Generator().manual_seed(5 + 1)
    up = min(s[1], math.sqrt(s[1] ** 2 * (s[0] ** 2 - s[1] ** 2) / s[0] ** 2))
    down = math.sqrt(s[1] ** 2 - up ** 2)
    mid = math.sqrt(s[0] * down)  # halfway in λ = -log σ
    x_mid = (mid / s[0]) * x + (1 - mid / s[0]) * u[0]
    assert model.calls[1][1] == pytest.approx(mid, rel=1e-5)
    torch.testing.assert_close(model.calls[1][0].double(), x_mid, rtol=1e-5, atol=1e-4)
    x1 = (down / s[0]) * x + (1 - down / s[0]) * u[1] + up * torch.randn(SHAPE, generator=g).double() + (d[0] - u[0])
    torch.testing.assert_close(model.calls[2][0].double(), x1, rtol=1e-5, atol=1e-4)
    # last step: to σ = 0 with the unconditional slope, plus the guidance: the guided estimate
    torch.testing.assert_close(out, d[2], rtol=1e-5, atol=1e-5)


def test_dpm_adaptive_stops_with_a_clear_error_on_a_non_finite_estimate():
    sigmas = ksampler_sigmas(SD, "dpm_adaptive", "karras", 4)
    model = EstimateScript([torch.full(SHAPE, float("nan"))] * 3)
    with pytest.raises(ValueError, match="not finite"):
        SAMPLER_FUNCTIONS["dpm_adaptive"](model, initial_noise(SHAPE, 1) * float(sigmas[0]), sigmas.clone(),
                                          SamplerEnv(SD, seed=1))
    with pytest.raises(ValueError, match="above 0"):  # no σ above 0 to stop at
        SAMPLER_FUNCTIONS["dpm_fast"](model, torch.zeros(SHAPE), torch.tensor([0.0, 0.0]), SamplerEnv(SD))
