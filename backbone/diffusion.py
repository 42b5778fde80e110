"""The noise schedule as a scheduler object, in the manner of diffusers' schedulers.

`NoiseScheduler` owns the cosine schedule's buffers (named and shaped as the reference
checkpoints store them) and three operations: `add_noise` (the forward process),
`set_timesteps` (the reverse process's timesteps) and `step` (one reverse step, DDIM with
`eta = 0`, DDPM's ancestral step with `eta = 1`). It holds no training logic and no loop:
pretraining's loss (`backbone/pretrain.py`), extraction's noising, DDIM sampling
(`backbone/preview.py`) and RePaint (`personas/inpaint.py`) all take one.

Why not diffusers' own schedulers: the checkpoints' buffers and the stored features'
noising (`add_noise` from the precomputed square roots, bit for bit the reference's
`q_sample`) are part of the store's format, and RePaint's resampling needs `undo_step`
over our strided timesteps; the tests check `step` against diffusers' schedulers.
"""

from __future__ import annotations

import hashlib
import math
from typing import NamedTuple

import torch
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


class StepOutput(NamedTuple):
    prev_sample: torch.Tensor  # x at the previous timestep of the reverse process
    pred_original_sample: torch.Tensor  # the clipped x0 the step predicted


class NoiseScheduler(nn.Module):
    """The cosine schedule (buffers `betas`, `alphas_cumprod`, `sqrt_alphas_cumprod`,
    `sqrt_one_minus_alphas_cumprod`, float32, as checkpoints store them beside the network).

    A module only so that `state_dict()` gives the checkpoint's buffers; it has no parameters.
    `step` computes in the sample's dtype from `alphas_cumprod` (so a float64 loop stays
    float64); `add_noise` uses the stored square roots, as the reference's `q_sample`.
    """

    def __init__(self, num_train_timesteps: int = NUM_TIMESTEPS):
        super().__init__()
        betas = cosine_betas(num_train_timesteps)
        alphas_cumprod = torch.cumprod(1 - betas, 0)
        self.num_train_timesteps = num_train_timesteps
        for name, value in {
            "betas": betas,
            "alphas_cumprod": alphas_cumprod,
            "sqrt_alphas_cumprod": alphas_cumprod.sqrt(),
            "sqrt_one_minus_alphas_cumprod": (1 - alphas_cumprod).sqrt(),
        }.items():
            self.register_buffer(name, value.float())
        self.set_timesteps(num_train_timesteps)

    def set_timesteps(self, num_inference_steps: int) -> torch.Tensor:
        """`num_inference_steps` timesteps evenly spaced from T - 1 down to 0 (rounded), in
        `self.timesteps`; `step` goes from each to the next (after the last: x0)."""
        self.timesteps = torch.linspace(self.num_train_timesteps - 1, 0, num_inference_steps).round().long()
        times = self.timesteps.tolist()
        self._previous = dict(zip(times, times[1:] + [-1]))
        return self.timesteps

    def previous_timestep(self, timestep: int) -> int:
        """The timestep `step` goes to from `timestep` (-1: the clean image)."""
        if int(timestep) not in self._previous:
            raise ValueError(f"timestep {timestep} is not one of set_timesteps' {self.timesteps.tolist()}")
        return self._previous[int(timestep)]

    def alpha_bar(self, timestep: int, like: torch.Tensor) -> torch.Tensor:
        """abar_t as a scalar of `like`'s dtype and device; 1 at t = -1 (the clean image)."""
        if timestep < 0:
            return torch.tensor(1.0, dtype=like.dtype, device=like.device)
        return self.alphas_cumprod.to(like.device).to(like.dtype)[timestep]

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise, one timestep per sample.

        Below float64 the square roots are the stored buffers (bit for bit the reference's
        `q_sample`, which the stored features depend on); in float64 they are taken from
        `alphas_cumprod` in float64, as `step` does."""
        x0, t = original_samples, torch.as_tensor(timesteps)
        if x0.dtype == torch.float64:
            abar = self.alphas_cumprod.to(x0.device).double()[t]
            roots = abar.sqrt(), (1 - abar).sqrt()
        else:
            roots = self.sqrt_alphas_cumprod.to(x0.device)[t], self.sqrt_one_minus_alphas_cumprod.to(x0.device)[t]
        a, b = (r.to(x0.dtype).reshape(-1, *([1] * (x0.ndim - 1))) for r in roots)
        return a * x0 + b * noise

    def step(self, model_output: torch.Tensor, timestep: int, sample: torch.Tensor, eta: float = 0.0,
             use_clipped_model_output: bool = False, variance_noise: torch.Tensor | None = None) -> StepOutput:
        """One reverse step from `timestep` to `previous_timestep(timestep)` for an
        epsilon-predicting model: x0 is predicted and clipped to [-1, 1], then (DDIM, Song
        et al. 2021, eq. 12) x_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev - s^2) eps + s z,
        s = eta sqrt((1 - abar_prev) / (1 - abar_t) (1 - abar_t / abar_prev)).

        `eta = 0` is deterministic DDIM; `eta = 1` with `use_clipped_model_output` (eps
        recomputed from the clipped x0) is DDPM's ancestral step with the posterior variance.
        `variance_noise` z is required when `eta > 0`."""
        a_t = self.alpha_bar(int(timestep), sample)
        a_prev = self.alpha_bar(self.previous_timestep(timestep), sample)
        eps = model_output
        x0 = ((sample - (1 - a_t).sqrt() * eps) / a_t.sqrt()).clamp(-1, 1)
        if use_clipped_model_output:
            eps = (sample - a_t.sqrt() * x0) / (1 - a_t).sqrt()
        if not eta:
            return StepOutput(a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps, x0)
        if variance_noise is None:
            raise ValueError("step with eta > 0 needs variance_noise")
        std = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).clamp(min=0).sqrt()
        prev = a_prev.sqrt() * x0 + (1 - a_prev - std**2).clamp(min=0).sqrt() * eps + std * variance_noise
        return StepOutput(prev, x0)

    def undo_step(self, sample: torch.Tensor, timestep: int, noise: torch.Tensor) -> torch.Tensor:
        """The forward process from `previous_timestep(timestep)` back to `timestep`
        (RePaint's resampling): sqrt(abar_t / abar_prev) x + sqrt(1 - abar_t / abar_prev) noise."""
        ratio = self.alpha_bar(int(timestep), sample) / self.alpha_bar(self.previous_timestep(timestep), sample)
        return ratio.sqrt() * sample + (1 - ratio).sqrt() * noise
