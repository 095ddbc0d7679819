"""LoRA files → :class:`WeightPatch` deltas keyed by our module's parameter names, and applying them.

Why patches instead of merging at load: MODEL/CLIP values are immutable handles sharing one resident
model, so LoraLoader only *describes* deltas; the sampler/encoder adds them for the duration of a
run with :func:`apply_patches` and restores the exact original tensors afterwards.  Changing a LoRA
or its strength therefore never reloads the base model.

Key formats understood (matched after normalising ``.`` to ``_`` on both sides, so one table serves
them all):

* kohya / A1111: ``lora_unet_<module>``, ``lora_te_``, ``lora_te1_``, ``lora_te2_`` with
  ``.lora_up.weight`` / ``.lora_down.weight`` / ``.alpha`` (and LoCon ``.lora_mid.weight``); the
  ``<module>`` may be a diffusers name (sd-scripts for SD1.x), an LDM/SGM name (sd-scripts for
  SDXL) or a BFL name (FLUX, fused qkv split by rows);
* diffusers / PEFT: ``unet.`` / ``transformer.`` / ``text_encoder.`` / ``text_encoder_2.`` prefixes
  with ``.lora_A.weight`` / ``.lora_B.weight`` (or ``.lora.down/up.weight``);
* ComfyUI-style ``diffusion_model.<original name>.lora_up.weight``.
"""
from __future__ import annotations

import contextlib
import logging
import re
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Mapping, Sequence

import torch

from nodes.diffusion import keymaps
from nodes.diffusion.types import ModelFamily, WeightPatch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoraDelta:
    """A low-rank delta ``up @ down × alpha/rank`` for a whole parameter or a block of its rows.

    ``rows`` (start, stop) selects the rows of the target that the delta covers (BFL fused qkv
    LoRAs target our separate q/k/v, or the other way round).
    """

    up: torch.Tensor
    down: torch.Tensor
    alpha: float | None = None
    mid: torch.Tensor | None = None
    rows: tuple[int, int] | None = None

    def full(self, shape: torch.Size, device: torch.device) -> torch.Tensor:
        """The dense float32 delta for a parameter of ``shape`` (before strength)."""
        up = self.up.to(device=device, dtype=torch.float32)
        down = self.down.to(device=device, dtype=torch.float32)
        rank = down.shape[0]
        scale = float(self.alpha) / rank if self.alpha is not None else 1.0
        if self.mid is not None:  # LoCon/Tucker: down 1x1, mid kxk, up 1x1
            mid = self.mid.to(device=device, dtype=torch.float32)
            delta = torch.einsum("i j k l, j r, p i -> p r k l", mid, down.flatten(1), up.flatten(1))
        elif down.ndim == 4 and (down.shape[2] > 1 or down.shape[3] > 1):
            delta = (up.flatten(1) @ down.flatten(1)).reshape(up.shape[0], *down.shape[1:])
        else:
            delta = up.flatten(1) @ down.flatten(1)
        delta = delta * scale
        if self.rows is None:
            return delta.reshape(shape)
        out = torch.zeros(shape, device=device, dtype=torch.float32)
        out[self.rows[0]:self.rows[1]] = delta.reshape(self.rows[1] - self.rows[0], *shape[1:])
        return out


def delta_tensor(spec: Any, shape: torch.Size, device: torch.device) -> torch.Tensor:
    """Dense float32 delta of a WeightPatch entry: LoraDelta, list of them, (up, down, alpha) or a tensor."""
    if isinstance(spec, LoraDelta):
        return spec.full(shape, device)
    if isinstance(spec, (list, tuple)) and spec and isinstance(spec[0], LoraDelta):
        return sum(s.full(shape, device) for s in spec)
    if isinstance(spec, torch.Tensor):
        return spec.to(device=device, dtype=torch.float32).reshape(shape)
    up, down, alpha = spec
    return LoraDelta(up, down, alpha).full(shape, device)


@contextlib.contextmanager
def apply_patches(module: torch.nn.Module, patches: Sequence[WeightPatch], prefix: str = "") -> Iterator[torch.nn.Module]:
    """Add each patch's deltas × strength to ``module``'s parameters for the ``with`` block.

    Only delta names starting with ``prefix`` are used (``prefix`` stripped) — text-encoder patches
    are keyed ``"clip_l.<param>"`` etc.  A strength of 0 touches nothing.  On exit (also on error
    or interrupt) every touched parameter gets its exact original tensor back.
    """
    active = [p for p in patches if p.strength != 0 and p.deltas]
    if not active:
        yield module
        return
    params = dict(module.named_parameters())
    saved: dict[str, torch.Tensor] = {}
    try:
        with torch.no_grad():
            for patch in active:
                for name, spec in patch.deltas.items():
                    if prefix:
                        if not name.startswith(prefix):
                            continue
                        name = name[len(prefix):]
                    p = params.get(name)
                    if p is None:
                        continue
                    if name not in saved:
                        saved[name] = p.detach().clone()
                    delta = delta_tensor(spec, p.shape, p.device)
                    p.copy_((p.float() + patch.strength * delta).to(p.dtype))
        yield module
    finally:
        with torch.no_grad():
            for name, original in saved.items():
                params[name].copy_(original)


# --- key tables -----------------------------------------------------------------------------

def _norm(name: str) -> str:
    return name.replace(".", "_")


Target = tuple[str, tuple[int, int] | None]  # (parameter name, row slice)


def unet_targets(denoiser: torch.nn.Module, family: ModelFamily) -> dict[str, list[Target]]:
    """normalised module name (diffusers and original spellings) -> weight targets in ``denoiser``."""
    weights = [n[:-len(".weight")] for n, _ in denoiser.named_parameters() if n.endswith(".weight")]
    table: dict[str, list[Target]] = {}
    for m in weights:
        table[_norm(m)] = [(m + ".weight", None)]
    if family.is_flux:
        cfg = denoiser.config
        nd, ns = int(cfg.num_layers), int(cfg.num_single_layers)
        present = set(weights)
        for d, b in keymaps.flux_module_map(nd, ns).items():
            if d in present:
                table[_norm(b)] = [(d + ".weight", None)]
        params = dict(denoiser.named_parameters())
        for fused, parts in keymaps.flux_fused_groups(nd, ns).items():
            start, targets = 0, []
            for p in parts:
                rows = params[p + ".weight"].shape[0]
                targets.append((p + ".weight", (start, start + rows)))
                start += rows
            table[_norm(fused)] = targets
    else:
        for d, ldm in keymaps.unet_diffusers_to_ldm(weights, denoiser.config).items():
            table[_norm(ldm)] = [(d + ".weight", None)]
    return table


def text_encoder_targets(encoder: torch.nn.Module) -> dict[str, list[Target]]:
    """normalised canonical (``text_model.…``) and raw module names -> weight targets."""
    table: dict[str, list[Target]] = {}
    for n, _ in encoder.named_parameters():
        if not n.endswith(".weight"):
            continue
        m = n[:-len(".weight")]
        table[_norm(m)] = [(n, None)]
        if not m.startswith("text_model.") and not m.startswith(("encoder.block", "shared", "text_projection")):
            table[_norm("text_model." + m)] = [(n, None)]
    return table


# --- parsing LoRA files ----------------------------------------------------------------------

_SUFFIXES = (
    (".lora_up.weight", "up"), (".lora_down.weight", "down"), (".lora_mid.weight", "mid"), (".alpha", "alpha"),
    (".lora_B.weight", "up"), (".lora_A.weight", "down"), (".lora.up.weight", "up"), (".lora.down.weight", "down"),
)
UNET_PREFIXES = ("lora_unet_", "unet.", "transformer.", "diffusion_model.", "model.diffusion_model.",
                 "base_model.model.", "lora_transformer_")
# text-encoder prefix -> role ("te1"=first encoder of the family, "te2"=second)
TE_PREFIXES = (("lora_te1_", "te1"), ("lora_te2_", "te2"), ("lora_te3_", "te3"), ("lora_te_", "te1"),
               ("text_encoder_2.", "te2"), ("text_encoder.", "te1"), ("lora_clip_l_", "te1"))


def is_lora(keys: Iterable[str]) -> bool:
    return any(k.endswith(s) for k in keys for s, _ in _SUFFIXES[:3] + _SUFFIXES[4:])


def group_lora(sd: Mapping[str, torch.Tensor]) -> dict[str, dict[str, Any]]:
    """``{module key: {"up":…, "down":…, "alpha":…, "mid":…}}`` for every LoRA module in a file."""
    groups: dict[str, dict[str, Any]] = {}
    for k, v in sd.items():
        for suffix, part in _SUFFIXES:
            if k.endswith(suffix):
                groups.setdefault(k[:-len(suffix)], {})[part] = v
                break
    return {m: g for m, g in groups.items() if "up" in g and "down" in g}


def _strip(module_key: str, prefixes: Sequence[str]) -> str | None:
    for p in prefixes:
        if module_key.startswith(p):
            return module_key[len(p):]
    return None


def build_deltas(groups: Mapping[str, dict[str, Any]], table: Mapping[str, list[Target]],
                 prefixes: Sequence[str], key_prefix: str = "") -> tuple[dict[str, Any], int]:
    """Deltas for the groups whose (prefix-stripped, normalised) name is in ``table``; returns (deltas, matched)."""
    deltas: dict[str, Any] = {}
    matched = 0
    for module_key, g in groups.items():
        rest = _strip(module_key, prefixes)
        if rest is None:
            continue
        targets = table.get(_norm(rest))
        if targets is None:
            continue
        matched += 1
        alpha = g.get("alpha")
        alpha = float(alpha.item()) if isinstance(alpha, torch.Tensor) else alpha
        up, down = g["up"], g["down"]
        if len(targets) == 1 and targets[0][1] is None:
            specs = [(targets[0][0], LoraDelta(up, down, alpha, g.get("mid")))]
        else:
            # a fused LoRA (BFL qkv) over separate targets: split the up rows per target
            specs, start = [], 0
            for name, rows in targets:
                n = rows[1] - rows[0]
                specs.append((name, LoraDelta(up[start:start + n], down, alpha, g.get("mid"))))
                start += n
        for name, spec in specs:
            name = key_prefix + name
            if name in deltas:
                prev = deltas[name]
                deltas[name] = (prev if isinstance(prev, list) else [prev]) + [spec]
            else:
                deltas[name] = spec
    return deltas, matched


def te_roles(family: ModelFamily) -> dict[str, str]:
    """Which encoder key a LoRA's te1/te2 prefix means in each family."""
    if family.is_flux:
        return {"te1": "clip_l", "te2": "t5xxl"}
    if family is ModelFamily.SDXL_REFINER:
        return {"te1": "clip_g"}
    if family.is_sdxl:
        return {"te1": "clip_l", "te2": "clip_g"}
    return {"te1": "clip_l"}


def _te_prefixes(role: str) -> list[str]:
    return [p for p, r in TE_PREFIXES if r == role]


def lora_patches(sd: Mapping[str, torch.Tensor], name: str, *, denoiser: torch.nn.Module | None,
                 family: ModelFamily, encoders: Mapping[str, torch.nn.Module] | None,
                 strength_model: float, strength_clip: float) -> tuple[WeightPatch | None, WeightPatch | None, int, int]:
    """(model patch, clip patch, matched modules, total modules) for one LoRA file."""
    groups = group_lora(sd)
    model_patch = clip_patch = None
    matched = 0
    if denoiser is not None:
        deltas, n = build_deltas(groups, unet_targets(denoiser, family), UNET_PREFIXES)
        matched += n
        model_patch = WeightPatch(name, float(strength_model), deltas)
    if encoders:
        clip_deltas: dict[str, Any] = {}
        for role, enc_key in te_roles(family).items():
            enc = encoders.get(enc_key)
            if enc is None:
                continue
            deltas, n = build_deltas(groups, text_encoder_targets(enc), _te_prefixes(role), key_prefix=enc_key + ".")
            matched += n
            clip_deltas.update(deltas)
        clip_patch = WeightPatch(name, float(strength_clip), clip_deltas)
    return model_patch, clip_patch, matched, len(groups)


def unmatched_summary(groups: Mapping[str, Any], limit: int = 3) -> str:
    keys = sorted(groups)[:limit]
    return ", ".join(re.sub(r"\s+", " ", k) for k in keys)
