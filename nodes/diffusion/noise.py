"""Where the randomness of a sampling run comes from, seeded the way ComfyUI seeds it.

* **Initial noise** (:func:`initial_noise`, ComfyUI's ``prepare_noise``): a CPU generator seeded
  with the seed draws one standard-normal tensor of the whole latent batch's shape — so a seed gives
  the same start on every device.  With a LATENT ``batch_index`` (LatentFromBatch, RepeatLatentBatch),
  the generator draws one single-image tensor after another and batch row *j* gets draw number
  ``batch_index[j]``, so an image taken out of a batch keeps the noise it had in the batch.
* **Per-step noise of ancestral samplers** (:func:`default_noise_sampler`): a *new* generator on the
  sampling device, seeded with the seed — plus 1 on the CPU, so that there it does not repeat the
  initial noise (ComfyUI's rule since its PR #11528; on a GPU the CUDA generator's numbers differ from
  the CPU's anyway) — draws one tensor of the batch's shape per step.
* **SDE samplers** (:class:`BrownianTreeNoiseSampler`): the increments of a Brownian motion over
  σ ∈ [σ_min, σ_max] from ``torchsde.BrownianTree`` with the seed as entropy, normalised by
  √|σ_next - σ|; the tree lives on the CPU (the ``_gpu`` samplers keep it on the sampling device).
  A Brownian tree gives consistent noise for any step spacing, which is why these samplers use it.
"""
from __future__ import annotations

import warnings
from typing import Callable, Sequence

import torch

NoiseSampler = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def initial_noise(shape: Sequence[int], seed: int, batch_index: Sequence[int] | None = None,
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The initial noise of a latent batch of ``shape`` for ``seed`` (CPU, then cast to ``dtype``)."""
    generator = torch.Generator("cpu").manual_seed(int(seed))
    if batch_index is None:
        return torch.randn(list(shape), dtype=torch.float32, generator=generator, device="cpu").to(dtype)
    indices = [int(i) for i in batch_index]
    if len(indices) != shape[0]:
        raise ValueError(f"LATENT batch_index has {len(indices)} entries for a batch of {shape[0]}")
    draws: dict[int, torch.Tensor] = {}
    wanted = set(indices)
    for i in range(max(indices) + 1):
        draw = torch.randn([1] + list(shape[1:]), dtype=torch.float32, generator=generator, device="cpu")
        if i in wanted:
            draws[i] = draw
    return torch.cat([draws[i] for i in indices], dim=0).to(dtype)


def default_noise_sampler(x: torch.Tensor, seed: int | None) -> NoiseSampler:
    """Per-step noise for ancestral samplers: one fresh tensor like ``x`` per call."""
    generator = None
    if seed is not None:
        if x.device.type == "cpu":
            seed = seed + 1
        generator = torch.Generator(device=x.device).manual_seed(int(seed))

    def sample(sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        return torch.randn(x.size(), dtype=x.dtype, layout=x.layout, device=x.device, generator=generator)

    return sample


class BrownianTreeNoiseSampler:
    """Standard-normal noise for the step σ → σ_next from one Brownian path per run (see module doc)."""

    def __init__(self, x: torch.Tensor, sigma_min: torch.Tensor, sigma_max: torch.Tensor, seed: int | None,
                 cpu: bool = True) -> None:
        import torchsde

        self.cpu = cpu
        t0, t1 = torch.as_tensor(sigma_min), torch.as_tensor(sigma_max)
        self.sign = 1 if t0 < t1 else -1
        t0, t1 = (t0, t1) if t0 < t1 else (t1, t0)
        w0 = torch.zeros_like(x)
        if seed is None:
            seed = int(torch.randint(0, 2 ** 63 - 1, ()).item())
        if cpu:
            t0, w0, t1 = t0.detach().cpu(), w0.detach().cpu(), t1.detach().cpu()
        self.tree = torchsde.BrownianTree(t0, w0, t1, entropy=int(seed))

    def __call__(self, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        a, b = torch.as_tensor(sigma), torch.as_tensor(sigma_next)
        sign = 1 if a < b else -1
        lo, hi = (a, b) if a < b else (b, a)
        device, dtype = lo.device, lo.dtype
        if self.cpu:
            lo, hi = lo.detach().cpu().float(), hi.detach().cpu().float()
        with warnings.catch_warnings():
            # torchsde notes float32 σ bounds a hair outside its float64 interval; harmless
            warnings.filterwarnings("ignore", message="Should have", category=UserWarning)
            w = self.tree(lo, hi)
        w = w.to(device=device, dtype=dtype) * (self.sign * sign)
        return w / (b - a).abs().sqrt()
