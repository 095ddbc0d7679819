"""Turning CONDITIONING into denoiser calls: batched CFG, areas, masks, timestep ranges, ControlNet.

The denoiser is called through a small adapter (:class:`UNetDenoiser`, :class:`FluxDenoiser`) that
hides each family's calling convention (SDXL's added text/time embeddings, FLUX's packed tokens,
position ids and guidance embedding), so the guidance logic works on plain ``(N, C, h, w)``
latents for every family.

**Bit-exactness with the diffusers pipelines.**  When each side (positive / negative) has one plain
entry — the case every pipeline covers — the negative and positive rows go through the model in
*one* batched call, ``cat([uncond, cond])``, exactly like ``StableDiffusionPipeline`` does; two
separate calls would drift by 1e-6…1e-5 (measured in offline-models.md §4).  Only area/mask/multi-
entry conditioning (which diffusers has no equivalent for) takes the per-entry composite path,
modelled on ComfyUI: each entry's prediction is weighted by its strength, mask and a feathered area
window, and the weighted predictions are averaged.

**ControlNet hooks** (``CondEntry.options["control"]``, a :class:`~nodes.diffusion.types.ControlHook`)
are called once per denoiser call for the rows that carry them — once for the whole
``[uncond, cond]`` batch when both sides hold the same hook object, as the diffusers ControlNet
pipelines do — with these arguments:

* UNet (SD1.5/SDXL): ``sample`` = the scheduler-scaled model input rows (the pipelines'
  ``control_model_input``), ``timestep`` = the scheduler timestep, ``encoder_hidden_states`` = the
  rows' text embeddings, ``added_cond_kwargs`` = ``{"text_embeds", "time_ids"}`` for SDXL (else None);
* FLUX: ``sample`` = the packed latent tokens (N, h/2·w/2, 4C), ``timestep`` = t/1000 per row,
  ``encoder_hidden_states`` = T5 rows, ``flux_kwargs`` = ``{"guidance", "pooled_projections",
  "txt_ids", "img_ids"}``;
* ``percent`` = where the step's σ lies in the model's timestep range, ComfyUI's ``percent_to_sigma``
  inverted (0.0 at σ_max → 1.0 at σ = 0), so start/end percents cut at the same σ as in ComfyUI.

The returned dict is passed as extra keyword arguments to the denoiser call; rows whose entry has
no hook (or whose hook returned None) get zeros of the same shapes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from nodes.diffusion.types import CondEntry, ControlHook, DiffusionModel, ModelFamily

FEATHER = 8  # latent pixels of linear fade at an area's inner edges (as ComfyUI)


# ---------------------------------------------------------------------------------------------
# prepared conditioning

@dataclass
class PreparedCond:
    """One CONDITIONING entry resolved for a run: tensors on the device, area in latent pixels."""

    embeds: torch.Tensor                       # (1|B, L, D)
    pooled: torch.Tensor | None = None         # (1|B, P): SDXL text_embeds / FLUX pooled_projections
    guidance: float | None = None              # FLUX guidance embedding value
    time_ids: torch.Tensor | None = None       # (1, 6|5) SDXL micro-conditioning
    area: tuple[int, int, int, int] | None = None  # (h, w, y, x) in latent pixels
    strength: float = 1.0
    mask: torch.Tensor | None = None           # (1|B, 1, h, w) at latent resolution
    start_percent: float = 0.0
    end_percent: float = 1.0
    control: ControlHook | None = None
    concat: torch.Tensor | None = None         # (1|B, C, h, w) extra input channels (concat_latent_image)

    @property
    def is_plain(self) -> bool:
        return self.area is None and self.mask is None and self.strength > 0

    def active(self, percent: float) -> bool:
        return self.start_percent - 1e-9 <= percent <= self.end_percent + 1e-9


@dataclass
class CondRows:
    """A batch of conditioning rows matching the latent rows of one denoiser call."""

    embeds: torch.Tensor
    pooled: torch.Tensor | None = None
    time_ids: torch.Tensor | None = None
    guidance: torch.Tensor | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # ControlNet residual kwargs


def _area_from_option(area: Any, h: int, w: int) -> tuple[int, int, int, int] | None:
    """ComfyUI's ``area``: (h, w, y, x) in latent pixels (pixels // 8), or ("percentage", h, w, y, x)."""
    if area is None:
        return None
    if isinstance(area, (tuple, list)) and area and area[0] == "percentage":
        ah, aw, ay, ax = (float(v) for v in area[1:5])
        box = (round(ah * h), round(aw * w), round(ay * h), round(ax * w))
    else:
        box = tuple(int(v) for v in area[:4])
    ah, aw, ay, ax = box
    ay, ax = min(max(ay, 0), h - 1), min(max(ax, 0), w - 1)
    ah, aw = max(1, min(ah, h - ay)), max(1, min(aw, w - ax))
    return ah, aw, ay, ax


def _even_area(area: tuple[int, int, int, int], h: int, w: int) -> tuple[int, int, int, int]:
    """FLUX packs 2×2 latent patches: snap an area to even offsets and sizes inside the latent."""
    ah, aw, ay, ax = area
    ay, ax = ay - ay % 2, ax - ax % 2
    ah = min(ah + ah % 2, h - ay)
    aw = min(aw + aw % 2, w - ax)
    return max(2, ah - ah % 2), max(2, aw - aw % 2), ay, ax


def _mask_to_latent(mask: torch.Tensor, h: int, w: int) -> torch.Tensor:
    m = mask.float()
    if m.ndim == 2:
        m = m[None]
    if m.ndim == 3:
        m = m[:, None]
    if m.shape[-2:] != (h, w):
        m = torch.nn.functional.interpolate(m, size=(h, w), mode="bilinear", align_corners=False)
    return m.clamp(0, 1)


def _mask_bounds(mask: torch.Tensor) -> tuple[int, int, int, int] | None:
    nz = torch.nonzero(mask.reshape(-1, *mask.shape[-2:]).amax(0) > 0)
    if nz.numel() == 0:
        return None
    y0, x0 = nz.min(0).values.tolist()
    y1, x1 = nz.max(0).values.tolist()
    return y1 - y0 + 1, x1 - x0 + 1, y0, x0


def prepare_conditioning(model: DiffusionModel, entries: Sequence[CondEntry], *, latent_hw: tuple[int, int],
                         pixel_hw: tuple[int, int], device: torch.device, dtype: torch.dtype,
                         negative: bool = False) -> list[PreparedCond]:
    """Resolve CondEntries for ``model`` at this latent size (areas, masks, SDXL time ids, FLUX guidance)."""
    h, w = latent_hw
    out: list[PreparedCond] = []
    family = model.family
    for entry in entries:
        opts = entry.options
        pooled = opts.get("pooled_output")
        prepared = PreparedCond(
            embeds=entry.embeds.to(device=device, dtype=dtype),
            pooled=pooled.to(device=device, dtype=dtype) if pooled is not None else None,
            strength=float(opts.get("strength", 1.0)),
            start_percent=float(opts.get("start_percent", 0.0)),
            end_percent=float(opts.get("end_percent", 1.0)),
            control=opts.get("control"),
        )
        if family.is_sdxl:
            if prepared.pooled is None:
                raise ValueError("SDXL conditioning needs the pooled text embedding (encode the prompt with an "
                                 "SDXL CLIP so 'pooled_output' is set)")
            prepared.time_ids = sdxl_time_ids(family, opts, pixel_hw, negative=negative).to(device=device, dtype=dtype)
        if family.is_flux:
            if prepared.pooled is None:
                raise ValueError("FLUX conditioning needs the pooled CLIP embedding ('pooled_output')")
            prepared.guidance = float(opts.get("guidance", 3.5))
        prepared.area = _area_from_option(opts.get("area"), h, w)
        mask = opts.get("mask")
        if mask is not None:
            m = _mask_to_latent(mask, h, w) * float(opts.get("mask_strength", 1.0))
            if opts.get("set_area_to_bounds"):
                prepared.area = _mask_bounds(m) or prepared.area
            prepared.mask = m.to(device=device, dtype=dtype)
        if family.is_flux and prepared.area is not None:
            prepared.area = _even_area(prepared.area, h, w)
        concat = opts.get("concat_latent_image")
        if concat is not None:
            prepared.concat = _concat_latent(model, concat, h, w).to(device=device, dtype=dtype)
        out.append(prepared)
    return out


def _concat_latent(model: DiffusionModel, latent: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """``concat_latent_image`` (raw VAE latent, InstructPixToPixConditioning) in the model's input space.

    FLUX Canny/Depth and SDXL take it normalised like the sampled latent ((x - shift)·scale, ComfyUI's
    ``process_latent_in``); SD1.5 InstructPix2Pix takes it raw, as diffusers' pipeline and ComfyUI do.
    """
    from nodes.diffusion.sampling import latent_format  # sampling imports this module

    c = latent.float()
    if c.ndim == 3:
        c = c[None]
    if tuple(c.shape[-2:]) != (h, w):
        c = torch.nn.functional.interpolate(c, size=(h, w), mode="bilinear", align_corners=False)
    if model.family.is_flux or model.family.is_sdxl:
        scale, shift = latent_format(model)
        c = (c - shift) * scale
    return c


def _with_concat(denoiser: Any, x: torch.Tensor, entry: PreparedCond) -> torch.Tensor:
    """Latent rows plus the entry's extra input channels (zeros when the model wants some but the entry has none)."""
    c = entry.concat
    if c is None:
        missing = int(getattr(denoiser, "in_channels", x.shape[1])) - x.shape[1]
        return x if missing <= 0 else torch.cat([x, x.new_zeros(x.shape[0], missing, *x.shape[2:])], 1)
    if tuple(c.shape[-2:]) != tuple(x.shape[-2:]) and entry.area is not None:  # an area crop of the latent
        ah, aw, ay, ax = entry.area
        c = c[..., ay:ay + ah, ax:ax + aw]
    if c.shape[0] != x.shape[0]:
        c = c.repeat(math.ceil(x.shape[0] / c.shape[0]), 1, 1, 1)[:x.shape[0]]
    return torch.cat([x, c.to(dtype=x.dtype)], 1)


def sdxl_time_ids(family: ModelFamily, opts: dict, pixel_hw: tuple[int, int], *, negative: bool) -> torch.Tensor:
    """SDXL micro-conditioning (original size, crop, target size | aesthetic score), diffusers' order.

    Option names follow ComfyUI's CLIPTextEncodeSDXL: width/height, crop_w/crop_h,
    target_width/target_height; the defaults are the image size with no crop, as in both
    ComfyUI and ``StableDiffusionXLPipeline``.
    """
    ph, pw = pixel_hw
    height = int(opts.get("height", ph))
    width = int(opts.get("width", pw))
    crop_top = int(opts.get("crop_h", 0))
    crop_left = int(opts.get("crop_w", 0))
    if family == ModelFamily.SDXL_REFINER:
        score = float(opts.get("aesthetic_score", 2.5 if negative else 6.0))
        ids = [height, width, crop_top, crop_left, score]
    else:
        ids = [height, width, crop_top, crop_left, int(opts.get("target_height", ph)), int(opts.get("target_width", pw))]
    return torch.tensor([ids], dtype=torch.float32)


# ---------------------------------------------------------------------------------------------
# denoiser adapters

class UNetDenoiser:
    """UNet2DConditionModel (SD1.5, SDXL): ``unet(x, t, encoder_hidden_states, added_cond_kwargs)``."""

    def __init__(self, model: DiffusionModel, module: torch.nn.Module) -> None:
        self.model = model
        self.module = module
        self.family = model.family
        self.in_channels = int(getattr(getattr(module, "config", None), "in_channels", 4))

    def control_inputs(self, x: torch.Tensor, t: torch.Tensor, rows: CondRows) -> dict[str, Any]:
        return {"sample": x, "timestep": t, "encoder_hidden_states": rows.embeds,
                "added_cond_kwargs": self._added(rows), "flux_kwargs": None}

    def _added(self, rows: CondRows) -> dict | None:
        if not self.family.is_sdxl:
            return None
        return {"text_embeds": rows.pooled, "time_ids": rows.time_ids}

    def __call__(self, x: torch.Tensor, t: torch.Tensor, rows: CondRows) -> torch.Tensor:
        return self.module(x, t, encoder_hidden_states=rows.embeds, added_cond_kwargs=self._added(rows),
                           return_dict=False, **rows.extra)[0]


def pack_latents(x: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) → FLUX tokens (B, h/2·w/2, 4C): 2×2 patches, the layout FluxPipeline uses."""
    b, c, h, w = x.shape
    x = x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    b, _, d = tokens.shape
    c = d // 4
    x = tokens.view(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c, h, w)


def flux_image_ids(h: int, w: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Position ids of the (h/2)×(w/2) token grid: (row, col) in channels 1 and 2."""
    ids = torch.zeros(h // 2, w // 2, 3)
    ids[..., 1] = ids[..., 1] + torch.arange(h // 2)[:, None]
    ids[..., 2] = ids[..., 2] + torch.arange(w // 2)[None, :]
    return ids.reshape((h // 2) * (w // 2), 3).to(device=device, dtype=dtype)


class FluxDenoiser:
    """FluxTransformer2DModel: packs latents into tokens and passes ids, pooled text and guidance."""

    def __init__(self, model: DiffusionModel, module: torch.nn.Module) -> None:
        self.model = model
        self.module = module
        self.family = model.family
        cfg = getattr(module, "config", None)
        self.guidance_embeds = bool(getattr(cfg, "guidance_embeds", model.family == ModelFamily.FLUX_DEV))
        self.in_channels = int(getattr(cfg, "in_channels", 64)) // 4

    def _kwargs(self, x: torch.Tensor, t: torch.Tensor, rows: CondRows) -> dict[str, Any]:
        n, _, h, w = x.shape
        timestep = t.expand(n).to(x.dtype) if t.ndim == 0 else t.to(x.dtype)
        return {
            "hidden_states": pack_latents(x),
            "timestep": timestep / 1000,
            "guidance": rows.guidance if self.guidance_embeds else None,
            "pooled_projections": rows.pooled,
            "encoder_hidden_states": rows.embeds,
            "txt_ids": torch.zeros(rows.embeds.shape[1], 3, device=x.device, dtype=rows.embeds.dtype),
            "img_ids": flux_image_ids(h, w, x.device, rows.embeds.dtype),
        }

    def control_inputs(self, x: torch.Tensor, t: torch.Tensor, rows: CondRows) -> dict[str, Any]:
        kw = self._kwargs(x, t, rows)
        return {"sample": kw.pop("hidden_states"), "timestep": kw.pop("timestep"),
                "encoder_hidden_states": kw.pop("encoder_hidden_states"), "added_cond_kwargs": None,
                "flux_kwargs": kw}

    def __call__(self, x: torch.Tensor, t: torch.Tensor, rows: CondRows) -> torch.Tensor:
        _, _, h, w = x.shape
        out = self.module(**self._kwargs(x, t, rows), return_dict=False, **rows.extra)[0]
        return unpack_latents(out, h, w)


def make_denoiser(model: DiffusionModel, module: torch.nn.Module) -> UNetDenoiser | FluxDenoiser:
    return FluxDenoiser(model, module) if model.family.is_flux else UNetDenoiser(model, module)


# ---------------------------------------------------------------------------------------------
# building rows and calling

def _rows_for(entry: PreparedCond, n: int, dtype: torch.dtype) -> CondRows:
    def expand(t: torch.Tensor | None) -> torch.Tensor | None:
        if t is None:
            return None
        if t.shape[0] == n:
            return t
        if n % t.shape[0]:
            raise ValueError(f"conditioning batch {t.shape[0]} does not divide the latent batch {n}")
        return t.repeat(n // t.shape[0], *([1] * (t.ndim - 1)))

    guidance = None
    if entry.guidance is not None:
        guidance = torch.full([n], entry.guidance, dtype=torch.float32, device=entry.embeds.device)
    return CondRows(embeds=expand(entry.embeds), pooled=expand(entry.pooled), time_ids=expand(entry.time_ids),
                    guidance=guidance)


def _cat_rows(parts: Sequence[CondRows]) -> CondRows:
    def cat(name: str) -> torch.Tensor | None:
        vals = [getattr(p, name) for p in parts]
        return None if any(v is None for v in vals) else torch.cat(vals, 0)

    return CondRows(embeds=cat("embeds"), pooled=cat("pooled"), time_ids=cat("time_ids"), guidance=cat("guidance"))


def _zeros_like_tree(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return torch.zeros_like(v)
    if isinstance(v, (list, tuple)):
        return type(v)(_zeros_like_tree(i) for i in v)
    return v


def _cat_tree(values: Sequence[Any]) -> Any:
    first = values[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(list(values), 0)
    if isinstance(first, (list, tuple)):
        return type(first)(_cat_tree([v[i] for v in values]) for i in range(len(first)))
    return first


def _control_kwargs(denoiser: Any, x_parts: Sequence[torch.Tensor], row_parts: Sequence[CondRows],
                    hooks: Sequence[ControlHook | None], t: torch.Tensor, percent: float) -> dict[str, Any]:
    """Residual kwargs for a batched call whose row groups may carry different ControlNet hooks."""
    if all(h is None for h in hooks):
        return {}
    if len(set(id(h) for h in hooks)) == 1:
        # one hook for every row group: one ControlNet call on the whole batch (as the pipelines do)
        x = torch.cat(list(x_parts), 0)
        rows = _cat_rows(row_parts)
        res = hooks[0].residuals(family=denoiser.family, percent=percent, **denoiser.control_inputs(x, t, rows))
        return res or {}
    results = []
    for x, rows, hook in zip(x_parts, row_parts, hooks):
        res = None
        if hook is not None:
            res = hook.residuals(family=denoiser.family, percent=percent, **denoiser.control_inputs(x, t, rows))
        results.append(res)
    template = next((r for r in results if r), None)
    if template is None:
        return {}
    filled = [r if r else {k: _zeros_like_tree(v) for k, v in template.items()} for r in results]
    return {k: _cat_tree([r[k] for r in filled]) for k in template}


def _call(denoiser: Any, x_parts: Sequence[torch.Tensor], entries: Sequence[PreparedCond], t: torch.Tensor,
          percent: float) -> list[torch.Tensor]:
    """One denoiser call over several row groups (each group: latent rows + one conditioning entry)."""
    dtype = x_parts[0].dtype
    row_parts = [_rows_for(e, x.shape[0], dtype) for x, e in zip(x_parts, entries)]
    rows = _cat_rows(row_parts)
    rows.extra = _control_kwargs(denoiser, x_parts, row_parts, [e.control for e in entries], t, percent)
    x_parts = [_with_concat(denoiser, x, e) for x, e in zip(x_parts, entries)]
    out = denoiser(torch.cat(list(x_parts), 0) if len(x_parts) > 1 else x_parts[0], t, rows)
    return list(out.split([x.shape[0] for x in x_parts], 0))


def _batchable(entries: Sequence[PreparedCond]) -> bool:
    shapes = {tuple(e.embeds.shape[1:]) for e in entries}
    return len(shapes) == 1 and all(e.is_plain for e in entries)


def _feather_window(ah: int, aw: int, ay: int, ax: int, h: int, w: int, device, dtype) -> torch.Tensor:
    win = torch.ones(ah, aw, device=device, dtype=dtype)
    rr = min(FEATHER, ah // 4, aw // 4)
    for i in range(rr):
        f = (i + 1) / rr
        if ay > 0:
            win[i, :] *= f
        if ay + ah < h:
            win[ah - 1 - i, :] *= f
        if ax > 0:
            win[:, i] *= f
        if ax + aw < w:
            win[:, aw - 1 - i] *= f
    return win


def _composite(denoiser: Any, x: torch.Tensor, entries: Sequence[PreparedCond], t: torch.Tensor,
               percent: float) -> torch.Tensor:
    """ComfyUI-style weighted average of per-entry predictions over their areas/masks."""
    n, _, h, w = x.shape
    out = torch.zeros_like(x)
    count = torch.full_like(x[:, :1], 1e-37)
    for entry in entries:
        ah, aw, ay, ax = entry.area if entry.area is not None else (h, w, 0, 0)
        crop = x[:, :, ay:ay + ah, ax:ax + aw]
        pred = _call(denoiser, [crop], [entry], t, percent)[0]
        weight = _feather_window(ah, aw, ay, ax, h, w, x.device, x.dtype)[None, None] * entry.strength
        if entry.mask is not None:
            m = entry.mask[:, :, ay:ay + ah, ax:ax + aw]
            weight = weight * (m if m.shape[0] == n else m.repeat(n // m.shape[0], 1, 1, 1))
        out[:, :, ay:ay + ah, ax:ax + aw] += pred * weight
        count[:, :, ay:ay + ah, ax:ax + aw] += weight.expand(n, 1, ah, aw)
    return out / count


def guided_prediction(denoiser: Any, x: torch.Tensor, t: torch.Tensor, positive: Sequence[PreparedCond],
                      negative: Sequence[PreparedCond] | None, cfg: float, percent: float) -> torch.Tensor:
    """The classifier-free-guided model output for latent rows ``x`` (already scaled for the model).

    ``cfg == 1`` (or no negative) runs the positive side only, like the pipelines.  With one plain
    entry per side, uncond and cond rows share one batched call, ``[uncond, cond]``.
    """
    return guided_prediction_and_uncond(denoiser, x, t, positive, negative, cfg, percent)[0]


def guided_prediction_and_uncond(denoiser: Any, x: torch.Tensor, t: torch.Tensor, positive: Sequence[PreparedCond],
                                 negative: Sequence[PreparedCond] | None, cfg: float, percent: float,
                                 keep_uncond: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`guided_prediction` and the unconditional output it was guided from (None when the
    negative side was not evaluated).

    ``keep_uncond`` evaluates the negative side even at cfg 1, in the same batched call — ComfyUI's
    ``disable_cfg1_optimization``, which its CFG++ samplers set because they need that output; the
    guided result is then computed as uncond + cfg·(cond - uncond) like any other.
    """
    pos = [e for e in positive if e.active(percent)]
    use_neg = negative is not None and (keep_uncond or not math.isclose(cfg, 1.0))
    neg = [e for e in negative if e.active(percent)] if use_neg else []
    if use_neg and len(pos) == 1 and len(neg) == 1 and _batchable([pos[0], neg[0]]):
        uncond, cond = _call(denoiser, [x, x], [neg[0], pos[0]], t, percent)
        return uncond + cfg * (cond - uncond), uncond
    if not use_neg and len(pos) == 1 and pos[0].is_plain:
        return _call(denoiser, [x], [pos[0]], t, percent)[0], None
    cond = _composite(denoiser, x, pos, t, percent)
    if not use_neg:
        return cond, None
    uncond = _composite(denoiser, x, neg, t, percent)
    return uncond + cfg * (cond - uncond), uncond
