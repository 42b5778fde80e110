"""Gaussian diffusion: cosine noise schedule, forward noising, epsilon loss, DDIM sampling.

Kept apart from the network so schedules, samplers and models can be swapped.
"""

from __future__ import annotations

import hashlib
import math

import torch
import torch.nn.functional as F
from torch import nn

NUM_TIMESTEPS = 1000  # diffusion steps of the published checkpoints (their buffers have this length)


def noise_key(seed: int, series_id: str, timestep: int) -> int:
    """The generator seed of a series' noise at `timestep`: one value per (seed, series, t)."""
    digest = hashlib.sha256(f"{seed}|{series_id}|{timestep}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def keyed_noise(keys, shape: tuple[int, ...]) -> torch.Tensor:
    """Standard normal noise of `shape` per key, stacked: independent of batching and device."""
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(k))) for k in keys])


def cosine_betas(steps: int = NUM_TIMESTEPS, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Betas whose cumulative product follows cos^2 of the normalised time (float64)."""

    def alpha_bar(u: float) -> float:
        return math.cos((u + s) / (1 + s) * math.pi / 2) ** 2

    return torch.tensor(
        [min(1 - alpha_bar((i + 1) / steps) / alpha_bar(i / steps), max_beta) for i in range(steps)],
        dtype=torch.float64,
    )


class GaussianDiffusion(nn.Module):
    """The schedule as buffers (`betas`, `alphas_cumprod`, ...), as checkpoints store them."""

    def __init__(self, steps: int = NUM_TIMESTEPS):
        super().__init__()
        betas = cosine_betas(steps)
        alphas_cumprod = torch.cumprod(1 - betas, 0)
        self.num_timesteps = steps
        for name, value in {
            "betas": betas,
            "alphas_cumprod": alphas_cumprod,
            "sqrt_alphas_cumprod": alphas_cumprod.sqrt(),
            "sqrt_one_minus_alphas_cumprod": (1 - alphas_cumprod).sqrt(),
        }.items():
            self.register_buffer(name, value.float())

    @staticmethod
    def _at(values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return values.to(like.device)[t].to(like.dtype).reshape(-1, *([1] * (like.ndim - 1)))

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise."""
        return self._at(self.sqrt_alphas_cumprod, t, x0) * x0 + self._at(self.sqrt_one_minus_alphas_cumprod, t, x0) * noise

    def loss(self, model: nn.Module, x0: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Epsilon-prediction L2 loss at uniformly drawn timesteps.

        Timesteps and noise are drawn on the CPU from `generator`, so a run is reproducible
        (and resumable) whatever the device.
        """
        t = torch.randint(0, self.num_timesteps, (x0.shape[0],), generator=generator).to(x0.device)
        noise = torch.randn(x0.shape, generator=generator).to(x0.device, x0.dtype)
        return F.mse_loss(model(self.q_sample(x0, t, noise), t), noise)

    @torch.no_grad()
    def ddim_sample(
        self, model: nn.Module, shape: tuple[int, ...], steps: int = 50, generator: torch.Generator | None = None,
        progress=None,
    ) -> torch.Tensor:
        """Deterministic DDIM (eta = 0) from pure noise over `steps` evenly spaced timesteps;
        `progress()` is called after each step."""
        device = next(model.parameters()).device
        x = torch.randn(shape, generator=generator).to(device)
        times = torch.linspace(self.num_timesteps - 1, 0, steps).round().long().tolist()
        abar = self.alphas_cumprod.to(device)
        for i, t in enumerate(times):
            eps = model(x, torch.full((shape[0],), t, device=device, dtype=torch.long))
            a_t = abar[t]
            x0 = ((x - (1 - a_t).sqrt() * eps) / a_t.sqrt()).clamp(-1, 1)
            a_prev = abar[times[i + 1]] if i + 1 < len(times) else torch.tensor(1.0, device=device)
            x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
            if progress:
                progress()
        return x
