"""Pooling of one middle-block activation (channels x z x y x) into one vector per series.

GAP is the per-channel mean. GLP and SAP return ``[GAP, pooled]`` (2C), parameter names
as in the reference code so its weights load with ``load_state_dict`` unchanged.
Inputs are ``(N, C, *spatial)`` activations; GAP also accepts an already pooled ``(N, C)``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from orthodiff.errors import OrthodiffError
from orthodiff.options import Pooling, choice

POOLINGS = tuple(Pooling)


def tokens(x: torch.Tensor) -> torch.Tensor:
    """(N, C, *spatial) -> (N, tokens, C), computed in float32 (float16 means overflow)."""
    return x.float().flatten(2).transpose(1, 2)


class GAP(nn.Module):
    """Global average pooling: (N, C, *spatial) -> (N, C). No parameters."""

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels
        self.out_dim = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.float() if x.dim() == 2 else tokens(x).mean(1)


class GLP(nn.Module):
    """Global learnable pooling: an MLP scores each token, softmax over tokens, weighted sum."""

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels
        self.out_dim = 2 * channels
        self.attn = nn.Sequential(nn.Linear(channels, channels // 8), nn.ReLU(), nn.Linear(channels // 8, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = tokens(x)
        weights = self.attn(t).softmax(dim=1)
        return torch.cat([t.mean(1), (weights * t).sum(1)], dim=1)


class SAP(nn.Module):
    """Self-attention pooling: multi-head self-attention over tokens, mean, output projection."""

    def __init__(self, channels: int, heads: int = 16):
        super().__init__()
        if channels % heads:
            raise OrthodiffError(f"SAP: {channels} channels are not divisible by {heads} heads")
        self.channels, self.heads = channels, heads
        self.out_dim = 2 * channels
        self.q_proj = nn.Linear(channels, channels)
        self.k_proj = nn.Linear(channels, channels)
        self.v_proj = nn.Linear(channels, channels)
        self.out_proj = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = tokens(x)
        n, length, c = t.shape

        def split(a: torch.Tensor) -> torch.Tensor:
            return a.view(n, length, self.heads, c // self.heads).transpose(1, 2)

        attended = F.scaled_dot_product_attention(split(self.q_proj(t)), split(self.k_proj(t)), split(self.v_proj(t)))
        pooled = self.out_proj(attended.transpose(1, 2).reshape(n, length, c).mean(1))
        return torch.cat([t.mean(1), pooled], dim=1)


def make_pooling(name: str, channels: int) -> nn.Module:
    classes = {Pooling.gap: GAP, Pooling.glp: GLP, Pooling.sap: SAP}
    return classes[choice(Pooling, name, "pooling")](channels)
