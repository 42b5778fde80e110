"""Checkpoints in the reference layout: reading, writing, identity.

A checkpoint is a `torch.save` dict whose `ema` (and `model`) entries hold the U-Net's
parameters under the prefix `denoise_fn.` (`denoise_fn.module.` when trained under DDP)
beside the diffusion buffers. Ours add `step`, `config`, `optimizer` and RNG states, which
published checkpoints lack and loading never requires. An encoder checkpoint
(`export_encoder`, `parts: "encoder"`) keeps only the EMA weights that features need, in
float16: small enough to ship.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import torch

from orthodiff.backbone.unet import PRESETS, DiffusionUNet, UNetConfig
from orthodiff.devices import resolve_device
from orthodiff.errors import OrthodiffError
from orthodiff.files import atomic_write

PREFIXES = ("denoise_fn.module.", "denoise_fn.")


def read_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise OrthodiffError(f"{path}: checkpoint file not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise OrthodiffError(f"{path}: not a readable checkpoint ({type(err).__name__})") from None
    if not isinstance(ckpt, dict) or not any(isinstance(ckpt.get(k), dict) for k in ("ema", "model")):
        raise OrthodiffError(f"{path}: not an OrthoDiffusion checkpoint (no 'ema' or 'model' state dict)")
    return ckpt


def strip_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The U-Net entries of a reference-layout state dict, without `denoise_fn.` prefixes."""
    out = {}
    for key, value in state.items():
        for prefix in PREFIXES:
            if key.startswith(prefix):
                out[key[len(prefix):]] = value
                break
    return out


def unet_state(ckpt: dict) -> dict[str, torch.Tensor]:
    """The U-Net weights of a checkpoint, EMA preferred."""
    return strip_prefix(ckpt["ema"] if isinstance(ckpt.get("ema"), dict) else ckpt["model"])


def infer_config(state: dict[str, torch.Tensor]) -> UNetConfig | None:
    """The architecture that produced `state`, read off the shapes (None if it is not ours)."""
    try:
        width = state["input_blocks.0.0.weight"].shape[0]
    except KeyError:
        return None
    blocks = sorted({int(m.group(1)) for k in state if (m := re.match(r"input_blocks\.(\d+)\.", k))})
    mult, per_level, levels, attention_level = [], 0, [], None
    for i in blocks[1:]:
        if f"input_blocks.{i}.0.op.weight" in state:
            levels.append(per_level)
            per_level = 0
            continue
        out_channels = state[f"input_blocks.{i}.0.in_layers.2.weight"].shape[0]
        if not per_level:
            mult.append(out_channels // width)
        per_level += 1
        if f"input_blocks.{i}.1.qkv.weight" in state:
            attention_level = len(mult) - 1
    levels.append(per_level)
    if attention_level is None or len(set(levels)) != 1:
        return None
    return UNetConfig(16 * 2**attention_level, 16, width, tuple(mult), num_res_blocks=levels[0])


def _mismatch(state: dict[str, torch.Tensor], model: torch.nn.Module) -> str:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k} {tuple(state[k].shape)}!={tuple(v.shape)}" for k, v in expected.items() if k in state and state[k].shape != v.shape]
    parts = [f"{name} ({len(keys)}): {', '.join(keys[:10])}" for name, keys in
             (("missing", missing), ("unexpected", unexpected), ("mis-shaped", shapes)) if keys]
    return "; ".join(parts)


def checkpoint_config(path: str | Path, ckpt: dict, state: dict[str, torch.Tensor]) -> UNetConfig:
    """The architecture of a checkpoint: its saved `config` (ours carry one) or, for
    published checkpoints, the one read off the weight shapes. Shapes cannot show the number
    of attention heads; without a saved config it is 1, as in the published checkpoints."""
    saved = ckpt.get("config")
    if saved is not None:
        try:
            return UNetConfig.from_dict(saved)
        except (TypeError, KeyError, AttributeError) as err:
            raise OrthodiffError(f"{path}: unusable saved 'config' {saved!r} ({err})") from None
    try:
        config = infer_config(state)
    except (KeyError, IndexError, AttributeError, ZeroDivisionError):  # a foreign network's weights
        config = None
    if config is None:
        raise OrthodiffError(f"{path}: weights do not fit the orthodiff U-Net: {_mismatch(state, DiffusionUNet(PRESETS['paper']))}")
    return config


def load_backbone(path: str | Path, device: str | torch.device | None = None, ckpt: dict | None = None) -> DiffusionUNet:
    """The denoiser of a checkpoint in the reference layout (architecture from
    `checkpoint_config`), in eval mode on `device` (CUDA when available). Fails naming
    missing, unexpected and mis-shaped keys. Pass the already read `ckpt` to avoid reading
    the file again."""
    ckpt = ckpt if ckpt is not None else read_checkpoint(path)
    state = unet_state(ckpt)
    if not state:
        raise OrthodiffError(f"{path}: no 'denoise_fn.' weights in the checkpoint")
    model = DiffusionUNet(checkpoint_config(path, ckpt, state), decoder=ckpt.get("parts") != "encoder")
    problems = _mismatch(state, model)
    if problems:
        raise OrthodiffError(f"{path}: weights do not fit the orthodiff U-Net: {problems}")
    model.load_state_dict(state)  # float16 weights of an encoder checkpoint are copied into float32
    return model.to(resolve_device(device)).eval()


def backbone_id(path: str | Path, ckpt: dict | None = None) -> str:
    """A stable content hash of the U-Net weights (prefix and container independent)."""
    return state_id(unet_state(ckpt if ckpt is not None else read_checkpoint(path)))


def state_id(state: dict[str, torch.Tensor]) -> str:
    """A stable content hash of a state dict (names, dtypes, shapes and bytes)."""
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().cpu().contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()[:16]


ENCODER_PARTS = ("time_embed.", "input_blocks.", "middle_block.")


def export_encoder(path: str | Path, out: str | Path) -> Path:
    """Write the EMA time embedding, encoder and middle block of checkpoint `path` to `out`
    in float16, with the architecture, plane, step, seed and the full checkpoint's id: what
    extraction, segmentation heads and fine-tuning load (`load_backbone`), at about a fifth
    of the full checkpoint's bytes. float16 rounding moves features by ~1e-3 relative."""
    ckpt = read_checkpoint(path)
    model = load_backbone(path, "cpu", ckpt)
    state = {f"denoise_fn.{k}": v.half() for k, v in model.state_dict().items() if k.startswith(ENCODER_PARTS)}
    meta = {k: ckpt[k] for k in ("step", "preset", "plane", "seed", "lr") if k in ckpt}
    return save_atomic({"ema": state, "config": model.config.to_dict(), "parts": "encoder",
                        "source_backbone": backbone_id(path, ckpt), **meta}, out)


def reference_state(model: torch.nn.Module, buffers: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`model`'s weights under `denoise_fn.`, with the diffusion buffers beside them."""
    return {**{f"denoise_fn.{k}": v.detach().cpu() for k, v in model.state_dict().items()}, **buffers}


def save_atomic(obj: dict, path: str | Path) -> Path:
    """torch.save through a temporary file renamed over `path`."""
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))
