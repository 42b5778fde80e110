"""The 3D diffusion U-Net (denoiser) in the reference parameter layout.

Module and parameter names follow the layout of the published OrthoDiffusion checkpoints
(`time_embed`, `input_blocks`, `middle_block`, `output_blocks`, `out`; ResBlocks with
`in_layers`/`emb_layers`/`out_layers`/`skip_connection`; attention with `norm`/`qkv`/
`proj_out`), so their state dicts load unchanged. Downsampling halves depth too (stride 2
in all three axes). `middle_features` runs the encoder and middle block only: one pass
yields every middle-block output the feature store keeps.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from orthodiff.errors import OrthodiffError

MIDDLE_BLOCKS = ("mid_0", "mid_1", "mid_2")


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of the denoiser; `attention_ds` is the downsample factor with attention."""

    image_size: int
    depth: int = 16
    width: int = 32
    channel_mult: tuple[int, ...] = (1, 2, 3, 4)
    num_heads: int = 1
    num_res_blocks: int = 1

    @property
    def attention_ds(self) -> int:
        return max(self.image_size // 16, 1)

    @property
    def middle_channels(self) -> int:
        return self.width * self.channel_mult[-1]

    @property
    def middle_shape(self) -> tuple[int, int, int, int]:
        """(channels, d, h, w) of each middle-block output."""
        f = 2 ** (len(self.channel_mult) - 1)
        return (self.middle_channels, max(self.depth // f, 1), self.image_size // f, self.image_size // f)

    def to_dict(self) -> dict:
        return {**asdict(self), "channel_mult": list(self.channel_mult)}

    @classmethod
    def from_dict(cls, values: dict) -> UNetConfig:
        """The inverse of `to_dict` (raises TypeError on unknown fields)."""
        return cls(**{**values, "channel_mult": tuple(values["channel_mult"])})


PRESETS = {
    "paper": UNetConfig(256, 16, 64, (1, 1, 2, 2, 4)),
    "small": UNetConfig(128, 16, 32, (1, 1, 2, 3, 4)),
    "tiny": UNetConfig(64, 16, 32, (1, 2, 3, 4)),
    "demo": UNetConfig(32, 16, 32, (1, 2, 2)),
}


def preset_name(config: UNetConfig) -> str:
    return next((name for name, c in PRESETS.items() if c == config), "custom")


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 1000.0) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps: [cos, sin] at geometric frequencies.

    The reference weights were trained with a longest period of 1000 (= NUM_TIMESTEPS), not the 10000
    common elsewhere; the fixture checkpoint only reproduces with 1000.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class GroupNorm32(nn.GroupNorm):
    """GroupNorm with float32 statistics: under autocast (float32 weights, reduced-precision
    input) through a float32 copy; when input and weights share a reduced type (a bfloat16
    model) the kernel itself accumulates in float32, so no copy is made."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == self.weight.dtype:
            return super().forward(x)
        return super().forward(x.float()).type(x.dtype)


def norm(channels: int) -> nn.GroupNorm:
    return GroupNorm32(32, channels)


class ResBlock(nn.Module):
    def __init__(self, channels: int, emb_dim: int, out_channels: int):
        super().__init__()
        self.in_layers = nn.Sequential(norm(channels), nn.SiLU(), nn.Conv3d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, out_channels))
        self.out_layers = nn.Sequential(
            norm(out_channels), nn.SiLU(), nn.Dropout(0.0), nn.Conv3d(out_channels, out_channels, 3, padding=1)
        )
        self.skip_connection = (
            nn.Identity() if out_channels == channels else nn.Conv3d(channels, out_channels, 1)
        )

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x) + self.emb_layers(emb).type(x.dtype)[:, :, None, None, None]
        return self.skip_connection(x) + self.out_layers(h)


class AttentionBlock(nn.Module):
    """Self-attention over all voxels; heads split the qkv channels in the reference order."""

    def __init__(self, channels: int, num_heads: int = 1):
        super().__init__()
        self.num_heads = num_heads
        self.norm = norm(channels)
        self.qkv = nn.Conv1d(channels, channels * 3, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        b, c, *spatial = x.shape
        channels_last = x.dim() == 5 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last_3d)
        x = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(x))
        heads = qkv.reshape(b * self.num_heads, 3 * c // self.num_heads, -1)
        q, k, v = (part.transpose(1, 2) for part in heads.split(c // self.num_heads, dim=1))
        h = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, c, -1)
        out = (x + self.proj_out(h)).reshape(b, c, *spatial)
        return out.contiguous(memory_format=torch.channels_last_3d) if channels_last else out  # as it came


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.op = nn.Conv3d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Trilinear x2 in all three axes, then a conv (the reference's decoder upsampling)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv3d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="trilinear", align_corners=False))


class Step(nn.Sequential):
    """A sequence of layers that all receive the timestep embedding."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = layer(x, emb) if isinstance(layer, (ResBlock, AttentionBlock, Downsample, Upsample)) else layer(x)
        return x


class DiffusionUNet(nn.Module):
    """Epsilon-predicting 3D U-Net: `forward(x_t, t)` for (B, 1, D, H, W) and (B,) ints.

    With `decoder=False` it holds the time embedding, encoder and middle block only: all
    that features (`middle_features`, `encoder_features`) and fine-tuning need, at about
    40% of the weights; `forward` (denoising, sampling, pretraining) then raises.
    """

    def __init__(self, config: UNetConfig, decoder: bool = True):
        super().__init__()
        self.config = config
        w, emb_dim = config.width, 4 * config.width
        self.time_embed = nn.Sequential(nn.Linear(w, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.input_blocks = nn.ModuleList([Step(nn.Conv3d(1, w, 3, padding=1))])
        skips, ch, ds = [w], w, 1
        for level, mult in enumerate(config.channel_mult):
            for _ in range(config.num_res_blocks):
                layers = [ResBlock(ch, emb_dim, mult * w)]
                ch = mult * w
                if ds == config.attention_ds:
                    layers.append(AttentionBlock(ch, config.num_heads))
                self.input_blocks.append(Step(*layers))
                skips.append(ch)
            if level != len(config.channel_mult) - 1:
                self.input_blocks.append(Step(Downsample(ch)))
                skips.append(ch)
                ds *= 2
        self.middle_block = Step(
            ResBlock(ch, emb_dim, ch), AttentionBlock(ch, config.num_heads), ResBlock(ch, emb_dim, ch)
        )
        self.output_blocks, self.out = None, None
        if not decoder:
            return
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(config.channel_mult))):
            for i in range(config.num_res_blocks + 1):
                layers = [ResBlock(ch + skips.pop(), emb_dim, mult * w)]
                ch = mult * w
                if ds == config.attention_ds:
                    layers.append(AttentionBlock(ch, config.num_heads))
                if level and i == config.num_res_blocks:
                    layers.append(Upsample(ch))
                    ds //= 2
                self.output_blocks.append(Step(*layers))
        self.out = nn.Sequential(norm(ch), nn.SiLU(), nn.Conv3d(ch, 1, 3, padding=1))

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def _encode(self, x: torch.Tensor, t: torch.Tensor, keep_skips: bool = True):
        """(timestep embedding, encoder output, encoder activations for the decoder)."""
        emb = self.time_embed(timestep_embedding(t, self.config.width).to(x.dtype))
        skips, h = [], x
        for block in self.input_blocks:
            h = block(h, emb)
            if keep_skips:
                skips.append(h)
        return emb, h, skips

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.out is None:
            raise OrthodiffError("this backbone holds the encoder and middle block only (features and fine-tuning); "
                                 "denoising, sampling and pretraining need a full checkpoint")
        emb, h, skips = self._encode(x, t)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h)

    def middle_features(
        self, x_t: torch.Tensor, t: torch.Tensor, blocks: tuple[str, ...] = MIDDLE_BLOCKS
    ) -> dict[str, torch.Tensor]:
        """Outputs of the middle block's layers (`mid_0` ResBlock, `mid_1` attention,
        `mid_2` ResBlock) from one pass through encoder and middle block; no decoder."""
        unknown = [b for b in blocks if b not in MIDDLE_BLOCKS]
        if unknown:
            raise ValueError(f"unknown block(s) {unknown}; expected {list(MIDDLE_BLOCKS)}")
        emb, h, _ = self._encode(x_t, t, keep_skips=False)
        last = max(MIDDLE_BLOCKS.index(b) for b in blocks)
        out = {}
        for i, layer in enumerate(self.middle_block[: last + 1]):
            h = layer(h, emb)
            if MIDDLE_BLOCKS[i] in blocks:
                out[MIDDLE_BLOCKS[i]] = h
        return out

    def encoder_features(self, x_t: torch.Tensor, t: torch.Tensor, block: str) -> tuple[list[torch.Tensor], torch.Tensor]:
        """(every encoder activation, the middle block's output at `block`): what a
        segmentation decoder needs. Runs the encoder and middle block only."""
        emb, h, skips = self._encode(x_t, t)
        for layer in self.middle_block[: MIDDLE_BLOCKS.index(block) + 1]:
            h = layer(h, emb)
        return skips, h

    def encoder_parameters(self) -> list[nn.Parameter]:
        """The parameters Stage I fine-tuning trains: encoder and middle block."""
        return [*self.input_blocks.parameters(), *self.middle_block.parameters()]
