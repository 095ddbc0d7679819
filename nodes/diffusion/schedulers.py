"""ComfyUI sampler/scheduler names → diffusers schedulers, published as data.

ComfyUI names a sampling run with two words: a *sampler* (the solver: ``euler``,
``dpmpp_2m`` …) and a *scheduler* (the noise-level spacing: ``normal``, ``karras`` …).
diffusers folds both into one scheduler class plus config flags.  This module is the single
place that says which pairs we can honour for which kind of model and how, so that node
validation, the sampling loop, tests and docs all read the same table
(:data:`SAMPLERS` / :func:`supported_combinations`).

A pair that is not in the table is *refused* (:func:`check_combination` returns the message the
node shows at queue time); nothing is ever silently replaced by a "close" sampler.

Model kinds:

* ``eps`` / ``v_prediction`` — discrete-time SD1.5/SDXL denoisers (``prediction_type`` is passed
  to the scheduler),
* ``flow`` — rectified-flow models (FLUX): flow-matching schedulers, or the multistep solvers in
  their ``use_flow_sigmas`` mode, with FLUX's resolution-dependent shift ``mu``.

How each ComfyUI scheduler maps for discrete models (diffusers config flags):

=============  =====================================================================
normal         ``timestep_spacing="linspace"`` (ComfyUI: timesteps evenly spaced 999→0)
simple         ``timestep_spacing="trailing"`` (ComfyUI: every n-th sigma from the top)
sgm_uniform    ``timestep_spacing="trailing"`` (ComfyUI: linspace(999, 0, n+1)[:-1], the same timesteps)
ddim_uniform   ``timestep_spacing="leading", steps_offset=1`` (ComfyUI: 1, 1+k, 1+2k … reversed)
karras         ``use_karras_sigmas=True`` (+ ``linspace`` so the range is the model's σ_max…σ_min)
exponential    ``use_exponential_sigmas=True`` (idem)
beta           ``use_beta_sigmas=True`` (alpha = beta = 0.6, ComfyUI's defaults; idem)
=============  =====================================================================

For flow models the spacing is given as explicit sigmas *before* the shift (the scheduler then
applies FLUX's shift): ``simple`` = linspace(1, 1/n, n) — exactly what ``FluxPipeline`` uses —
``normal`` = linspace(1, 1/1000, n), ``sgm_uniform`` = linspace(1, 1/1000, n+1)[:-1]; ``karras``,
``exponential`` and ``beta`` re-space the shifted ``simple`` sigmas (FlowMatchEuler's flags).
"""
from __future__ import annotations

import importlib.util
import inspect
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:  # numpy/diffusers are imported when a scheduler is built: node registration stays light
    import numpy as np

# ComfyUI's full lists (comfy/samplers.py), in ComfyUI's order, so every workflow's widget values
# load; only the combinations in SAMPLERS below can run.
SAMPLER_NAMES: tuple[str, ...] = (
    "euler", "euler_cfg_pp", "euler_ancestral", "euler_ancestral_cfg_pp", "heun", "heunpp2", "dpm_2",
    "dpm_2_ancestral", "lms", "dpm_fast", "dpm_adaptive", "dpmpp_2s_ancestral", "dpmpp_2s_ancestral_cfg_pp",
    "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m", "dpmpp_2m_cfg_pp", "dpmpp_2m_sde", "dpmpp_2m_sde_gpu",
    "dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu", "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ddpm", "lcm", "ipndm",
    "ipndm_v", "deis", "res_multistep", "res_multistep_cfg_pp", "res_multistep_ancestral",
    "res_multistep_ancestral_cfg_pp", "gradient_estimation", "gradient_estimation_cfg_pp", "er_sde", "seeds_2",
    "seeds_3", "sa_solver", "sa_solver_pece", "ddim", "uni_pc", "uni_pc_bh2",
)
SCHEDULER_NAMES: tuple[str, ...] = (
    "simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal", "linear_quadratic",
    "kl_optimal",
)

MODEL_KINDS: tuple[str, ...] = ("eps", "v_prediction", "flow")

# Discrete (SD) schedules → diffusers config flags.  Every recipe's config resets all of them so a
# model's own scheduler_config (which may enable karras, say) never leaks into another choice.
_SIGMA_FLAGS = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")
_DISCRETE_SPACING: dict[str, dict[str, Any]] = {
    "normal": {"timestep_spacing": "linspace"},
    "simple": {"timestep_spacing": "trailing"},
    "sgm_uniform": {"timestep_spacing": "trailing"},
    "ddim_uniform": {"timestep_spacing": "leading", "steps_offset": 1},
}
_DISCRETE_SIGMA_FLAG: dict[str, str] = {
    "karras": "use_karras_sigmas",
    "exponential": "use_exponential_sigmas",
    "beta": "use_beta_sigmas",
}
ALL_DISCRETE = frozenset(_DISCRETE_SPACING) | frozenset(_DISCRETE_SIGMA_FLAG)
SPACING_ONLY = frozenset(_DISCRETE_SPACING)


@dataclass(frozen=True)
class SamplerRecipe:
    """How one ComfyUI sampler runs on diffusers, per model kind.

    ``discrete_class``/``flow_class`` name the diffusers scheduler class (None: not available for that
    kind); ``*_config`` are the config overrides that select the algorithm; ``*_schedules`` are the
    ComfyUI scheduler names honoured.  ``requires`` lists importable modules the class needs.
    ``custom_sigmas_*`` says whether an arbitrary SIGMAS tensor (from a sigma-editing node) can
    drive it, through ``set_timesteps(sigmas=…)``.
    """

    name: str
    discrete_class: str | None
    discrete_config: Mapping[str, Any] = field(default_factory=dict)
    discrete_schedules: frozenset[str] = frozenset()
    flow_class: str | None = None
    flow_config: Mapping[str, Any] = field(default_factory=dict)
    flow_schedules: frozenset[str] = frozenset()
    requires: tuple[str, ...] = ()
    custom_sigmas_discrete: bool = False
    custom_sigmas_flow: bool = False
    note: str = ""

    def schedules_for(self, kind: str) -> frozenset[str]:
        if kind == "flow":
            return self.flow_schedules if self.flow_class else frozenset()
        return self.discrete_schedules if self.discrete_class else frozenset()

    def class_for(self, kind: str) -> str | None:
        return self.flow_class if kind == "flow" else self.discrete_class

    def supports_custom_sigmas(self, kind: str) -> bool:
        return self.custom_sigmas_flow if kind == "flow" else self.custom_sigmas_discrete


_FLOW_DPM = {"use_flow_sigmas": True, "prediction_type": "flow_prediction", "time_shift_type": "exponential"}
FLOW_BASIC = frozenset({"simple", "normal", "sgm_uniform"})

SAMPLERS: dict[str, SamplerRecipe] = {r.name: r for r in (
    SamplerRecipe("euler", "EulerDiscreteScheduler", {}, ALL_DISCRETE,
                  "FlowMatchEulerDiscreteScheduler", {"stochastic_sampling": False},
                  FLOW_BASIC | {"karras", "exponential", "beta"},
                  custom_sigmas_discrete=True, custom_sigmas_flow=True),
    SamplerRecipe("euler_ancestral", "EulerAncestralDiscreteScheduler", {}, SPACING_ONLY,
                  note="diffusers' EulerAncestralDiscreteScheduler has no karras/exponential/beta sigmas "
                       "and no flow-matching form"),
    SamplerRecipe("heun", "HeunDiscreteScheduler", {}, ALL_DISCRETE,
                  "FlowMatchHeunDiscreteScheduler", {}, frozenset({"normal"}),
                  note="FlowMatchHeunDiscreteScheduler only spaces timesteps linearly (ComfyUI 'normal')"),
    SamplerRecipe("dpm_2", "KDPM2DiscreteScheduler", {}, ALL_DISCRETE),
    SamplerRecipe("dpm_2_ancestral", "KDPM2AncestralDiscreteScheduler", {}, ALL_DISCRETE),
    SamplerRecipe("lms", "LMSDiscreteScheduler", {}, ALL_DISCRETE),
    SamplerRecipe("dpmpp_2m", "DPMSolverMultistepScheduler",
                  {"algorithm_type": "dpmsolver++", "solver_order": 2, "solver_type": "midpoint",
                   "use_flow_sigmas": False, "final_sigmas_type": "zero"}, ALL_DISCRETE,
                  "DPMSolverMultistepScheduler",
                  {"algorithm_type": "dpmsolver++", "solver_order": 2, "solver_type": "midpoint",
                   "final_sigmas_type": "zero", **_FLOW_DPM}, frozenset({"simple"}),
                  note="on flow models diffusers spaces sigmas 0.999·(1 - i/n) (≈ 'simple')"),
    SamplerRecipe("dpmpp_2m_sde", "DPMSolverMultistepScheduler",
                  {"algorithm_type": "sde-dpmsolver++", "solver_order": 2, "solver_type": "midpoint",
                   "use_flow_sigmas": False, "final_sigmas_type": "zero"}, ALL_DISCRETE,
                  "DPMSolverMultistepScheduler",
                  {"algorithm_type": "sde-dpmsolver++", "solver_order": 2, "solver_type": "midpoint",
                   "final_sigmas_type": "zero", **_FLOW_DPM}, frozenset({"simple"})),
    SamplerRecipe("dpmpp_sde", "DPMSolverSDEScheduler", {}, ALL_DISCRETE, requires=("torchsde",)),
    SamplerRecipe("ddim", "DDIMScheduler", {"clip_sample": False, "set_alpha_to_one": False}, SPACING_ONLY,
                  note="DDIMScheduler has no karras/exponential/beta sigmas and no flow-matching form"),
    # ComfyUI's uni_pc is UniPC's B(h) = h variant ("bh1"), uni_pc_bh2 the B(h) = e^h - 1 one
    *(SamplerRecipe(name, "UniPCMultistepScheduler",
                    {"solver_type": variant, "use_flow_sigmas": False, "final_sigmas_type": "zero"}, ALL_DISCRETE,
                    "UniPCMultistepScheduler",
                    {"solver_type": variant, "final_sigmas_type": "zero", "use_flow_sigmas": True,
                     "prediction_type": "flow_prediction", "time_shift_type": "exponential"}, FLOW_BASIC,
                    custom_sigmas_flow=True)
      for name, variant in (("uni_pc", "bh1"), ("uni_pc_bh2", "bh2"))),
)}


def supported_combinations() -> list[tuple[str, str, str]]:
    """Every (sampler, scheduler, model kind) triple that runs, in a stable order."""
    out = []
    for name in SAMPLER_NAMES:
        recipe = SAMPLERS.get(name)
        if recipe is None:
            continue
        for kind in MODEL_KINDS:
            for sched in SCHEDULER_NAMES:
                if sched in recipe.schedules_for(kind):
                    out.append((name, sched, kind))
    return out


def supported_samplers(kind: str | None = None) -> list[str]:
    return [n for n in SAMPLER_NAMES if n in SAMPLERS and (kind is None or SAMPLERS[n].schedules_for(kind))]


def supported_schedulers(sampler: str | None = None, kind: str | None = None) -> list[str]:
    kinds = MODEL_KINDS if kind is None else (kind,)
    recipes = [SAMPLERS[sampler]] if sampler in SAMPLERS else list(SAMPLERS.values())
    names = set()
    for r in recipes:
        for k in kinds:
            names |= r.schedules_for(k)
    return [s for s in SCHEDULER_NAMES if s in names]


def missing_requirement(sampler: str) -> str | None:
    """The module a sampler needs that is not installed, if any."""
    recipe = SAMPLERS.get(sampler)
    for mod in (recipe.requires if recipe else ()):
        if importlib.util.find_spec(mod) is None:
            return mod
    return None


def check_sampler(sampler: str, kind: str | None = None) -> str | None:
    """None if ``sampler`` can run (on ``kind`` models if given), else the user-facing reason."""
    if sampler not in SAMPLERS:
        return (f"sampler_name '{sampler}' is not supported by this runtime (it samples with diffusers "
                f"schedulers); supported samplers: {', '.join(supported_samplers())}")
    if kind is not None and not SAMPLERS[sampler].schedules_for(kind):
        return (f"sampler_name '{sampler}' has no diffusers equivalent for {_kind_words(kind)} models; "
                f"supported samplers for them: {', '.join(supported_samplers(kind))}")
    mod = missing_requirement(sampler)
    if mod:
        return f"sampler_name '{sampler}' needs the Python package '{mod}', which is not installed"
    return None


def check_combination(sampler: str, scheduler: str, kind: str | None = None) -> str | None:
    """None if the pair is honoured (for ``kind``, or for at least one kind when None), else the message.

    The message names the supported values so the user can pick one.
    """
    msg = check_sampler(sampler, kind)
    if msg:
        return msg
    if scheduler not in SCHEDULER_NAMES:
        return f"scheduler '{scheduler}' is unknown; supported schedulers: {', '.join(supported_schedulers(sampler, kind))}"
    recipe = SAMPLERS[sampler]
    kinds = MODEL_KINDS if kind is None else (kind,)
    if any(scheduler in recipe.schedules_for(k) for k in kinds):
        return None
    allowed = supported_schedulers(sampler, kind)
    where = f" on {_kind_words(kind)} models" if kind else ""
    extra = f" ({recipe.note})" if recipe.note else ""
    return (f"scheduler '{scheduler}' cannot be used with sampler '{sampler}'{where}{extra}; "
            f"supported schedulers for '{sampler}'{where}: {', '.join(allowed) or 'none'}")


def _kind_words(kind: str | None) -> str:
    return {"eps": "epsilon-prediction (SD)", "v_prediction": "v-prediction (SD)",
            "flow": "flow-matching (FLUX)"}.get(kind or "", str(kind))


def model_kind(prediction_type: str) -> str:
    """DiffusionModel.prediction_type → table kind."""
    if prediction_type in ("flow", "flow_prediction"):
        return "flow"
    if prediction_type in ("v_prediction", "v"):
        return "v_prediction"
    return "eps"


# ---------------------------------------------------------------------------------------------
# building a scheduler

@dataclass
class BuiltScheduler:
    """A fresh diffusers scheduler plus the ``set_timesteps`` keyword arguments for one run."""

    scheduler: Any
    timestep_kwargs: dict[str, Any]
    kind: str


def _scheduler_class(name: str, config: Mapping[str, Any] | None = None) -> type:
    import diffusers

    if name == "UniPCMultistepScheduler" and (config or {}).get("solver_type") == "bh1":
        return unipc_bh1_class()
    return getattr(diffusers, name)


_UNIPC_BH1: type | None = None


def unipc_bh1_class() -> type:
    """UniPCMultistepScheduler whose B(h) = h variant survives the final step to σ = 0.

    diffusers computes that last (order-1, ``lower_order_final``) predictor step with
    B(h) = h = -∞ times a zero correction, which is NaN; with either B(h) the step's exact value is
    the data prediction m0 (σ_t = 0, α_t = 1, h·φ₁ = -1), which is returned instead.  Every other
    step is diffusers' own code.  (Defined lazily: diffusers is heavy to import.)
    """
    global _UNIPC_BH1
    if _UNIPC_BH1 is None:
        from diffusers import UniPCMultistepScheduler

        class UniPCBh1Scheduler(UniPCMultistepScheduler):
            def multistep_uni_p_bh_update(self, model_output, *args, sample=None, order=None, **kwargs):
                idx = self.step_index
                if (self.predict_x0 and order == 1 and idx is not None and idx + 1 < len(self.sigmas)
                        and float(self.sigmas[idx + 1]) == 0.0):
                    ref = sample if sample is not None else (args[0] if args else model_output)
                    return self.model_outputs[-1].to(ref.dtype)
                return super().multistep_uni_p_bh_update(model_output, *args, sample=sample, order=order, **kwargs)

        _UNIPC_BH1 = UniPCBh1Scheduler
    return _UNIPC_BH1


def _accepts(cls: type, key: str) -> bool:
    return key in inspect.signature(cls.__init__).parameters


def flow_base_sigmas(scheduler: str, steps: int) -> "np.ndarray":
    """Unshifted flow sigmas for a ComfyUI scheduler name (see the module docstring)."""
    import numpy as np

    if scheduler in ("simple", "karras", "exponential", "beta"):
        return np.linspace(1.0, 1.0 / steps, steps)
    if scheduler == "normal":
        return np.linspace(1.0, 1.0 / 1000, steps)
    if scheduler == "sgm_uniform":
        return np.linspace(1.0, 1.0 / 1000, steps + 1)[:-1]
    raise ValueError(f"no flow spacing for scheduler {scheduler!r}")


def build_scheduler(scheduler_config: Mapping[str, Any], sampler: str, scheduler: str, *, kind: str,
                    steps: int, mu: float | None = None, zsnr: bool = False, seed: int | None = None,
                    custom_sigmas: "np.ndarray | None" = None) -> BuiltScheduler:
    """A new diffusers scheduler for (sampler, scheduler) configured from the model's own config.

    ``mu``: FLUX's shift exponent (``calculate_shift`` of the image's token count, or
    ModelSamplingFlux's value); it turns dynamic shifting on.  ``zsnr``: zero-terminal-SNR betas
    (ModelSamplingDiscrete).  ``seed`` seeds the Brownian tree of SDE schedulers that keep their own
    noise source (DPMSolverSDE), so a seed reproduces.  ``custom_sigmas``: an explicit descending
    sigma list (without the final 0) for samplers that accept ``set_timesteps(sigmas=…)``.
    Raises ValueError with the user-facing message if the combination is unsupported.
    """
    if custom_sigmas is None:
        msg = check_combination(sampler, scheduler, kind)
    else:
        msg = check_sampler(sampler, kind)
        if msg is None and not SAMPLERS[sampler].supports_custom_sigmas(kind):
            ok = [n for n in supported_samplers(kind) if SAMPLERS[n].supports_custom_sigmas(kind)]
            msg = (f"sampler '{sampler}' cannot follow an explicit SIGMAS list on {_kind_words(kind)} models "
                   f"(its diffusers scheduler computes its own); samplers that can: {', '.join(ok)}; "
                   f"or feed it SIGMAS straight from BasicScheduler")
    if msg:
        raise ValueError(msg)
    recipe = SAMPLERS[sampler]
    cls = _scheduler_class(recipe.class_for(kind),  # type: ignore[arg-type]
                           recipe.flow_config if kind == "flow" else recipe.discrete_config)
    base = {k: v for k, v in dict(scheduler_config).items() if not k.startswith("_")}
    kwargs: dict[str, Any] = {}
    if kind == "flow":
        return _build_flow(cls, recipe, base, scheduler, steps, mu, custom_sigmas)
    overrides: dict[str, Any] = {flag: False for flag in _SIGMA_FLAGS if _accepts(cls, flag)}
    overrides["prediction_type"] = kind if kind != "eps" else "epsilon"
    overrides.update(recipe.discrete_config)
    if custom_sigmas is not None:
        # explicit sigmas follow the k-diffusion convention (start from noise·σ_max); in diffusers'
        # Euler that is the linspace/trailing behaviour of init_noise_sigma
        overrides["timestep_spacing"] = "linspace"
    else:
        if scheduler in _DISCRETE_SPACING:
            overrides.update(_DISCRETE_SPACING[scheduler])
        else:
            # the re-spaced sigmas span the *spaced* timesteps' range in most classes: linspace
            # spacing makes that the model's full range (σ_max … σ_min), as in ComfyUI
            overrides[_DISCRETE_SIGMA_FLAG[scheduler]] = True
            overrides["timestep_spacing"] = "linspace"
    if zsnr:
        if not _accepts(cls, "rescale_betas_zero_snr"):
            raise ValueError(f"sampler '{sampler}' ({cls.__name__}) does not support zero-terminal-SNR (zsnr)")
        overrides["rescale_betas_zero_snr"] = True
    if "noise_sampler_seed" in inspect.signature(cls.__init__).parameters and seed is not None:
        overrides["noise_sampler_seed"] = int(seed) % (2**63 - 1)
    sched = cls.from_config({**base, **overrides})
    if custom_sigmas is not None:
        kwargs["sigmas"] = [float(s) for s in custom_sigmas] + [0.0]
        kwargs["num_inference_steps"] = None
    else:
        kwargs["num_inference_steps"] = steps
    return BuiltScheduler(sched, kwargs, kind)


def _build_flow(cls: type, recipe: SamplerRecipe, base: dict, scheduler: str, steps: int, mu: float | None,
                custom_sigmas: "np.ndarray | None") -> BuiltScheduler:
    overrides: dict[str, Any] = dict(recipe.flow_config)
    dynamic = mu is not None
    static_shift = float(base.get("shift", 1.0))
    if custom_sigmas is not None:
        # explicit sigmas are final (already shifted, e.g. BasicScheduler's values): no second shift
        dynamic, static_shift, mu = False, 1.0, None
    for flag in _SIGMA_FLAGS:
        if _accepts(cls, flag):
            overrides[flag] = (custom_sigmas is None and _DISCRETE_SIGMA_FLAG.get(scheduler) == flag)
    kwargs: dict[str, Any] = {}
    name = cls.__name__
    if name == "FlowMatchHeunDiscreteScheduler":
        # No dynamic shifting in this class: exp(mu) as a static shift is the same time shift.
        overrides["shift"] = math.exp(mu) if dynamic else static_shift
        sched = cls.from_config({**base, **overrides})
        kwargs["num_inference_steps"] = steps
        return BuiltScheduler(sched, kwargs, "flow")
    if name == "FlowMatchEulerDiscreteScheduler":
        overrides["use_dynamic_shifting"] = dynamic
        if custom_sigmas is not None:
            overrides["shift"] = 1.0
        sched = cls.from_config({**base, **overrides})
        sigmas = custom_sigmas if custom_sigmas is not None else flow_base_sigmas(scheduler, steps)
        kwargs.update(num_inference_steps=None if custom_sigmas is not None else steps, sigmas=sigmas)
        if dynamic:
            kwargs["mu"] = mu
        return BuiltScheduler(sched, kwargs, "flow")
    # multistep solvers in flow mode (DPMSolverMultistep, UniPC)
    overrides["use_dynamic_shifting"] = dynamic
    overrides["flow_shift"] = static_shift
    sched = cls.from_config({**base, **overrides})
    if dynamic:
        kwargs["mu"] = mu
    if name == "UniPCMultistepScheduler":
        sigmas = custom_sigmas if custom_sigmas is not None else flow_base_sigmas(scheduler, steps)
        kwargs.update(num_inference_steps=None, sigmas=sigmas)
    else:
        kwargs["num_inference_steps"] = steps
    return BuiltScheduler(sched, kwargs, "flow")


def calculate_shift(image_seq_len: int, base_seq_len: int = 256, max_seq_len: int = 4096,
                    base_shift: float = 0.5, max_shift: float = 1.15) -> float:
    """FLUX's resolution-dependent shift exponent (linear in the number of image tokens)."""
    m = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    b = base_shift - m * base_seq_len
    return image_seq_len * m + b


def supported_table_markdown() -> str:
    """The support table as Markdown (for docs), derived from :data:`SAMPLERS`."""
    lines = ["| sampler | diffusers scheduler | eps / v_prediction schedulers | flow schedulers |",
             "|---|---|---|---|"]
    for name in supported_samplers():
        r = SAMPLERS[name]
        disc = ", ".join(s for s in SCHEDULER_NAMES if s in r.discrete_schedules) or "—"
        flow = ", ".join(s for s in SCHEDULER_NAMES if s in r.flow_schedules) if r.flow_class else "—"
        cls = r.discrete_class or ""
        if r.flow_class and r.flow_class != cls:
            cls += f" / {r.flow_class}"
        lines.append(f"| {name} | {cls} | {disc} | {flow} |")
    return "\n".join(lines)
