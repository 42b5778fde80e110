"""RePaint-style inpainting with an unconditional (healthy) backbone.

Why RePaint and not the paper's masked-input DDPM (sec. 5.2.1): eq. 12 only asks for some
f_pers(x_j) that completes the ROI from its surroundings with a model of healthy anatomy.
RePaint (Lugmayr et al., CVPR 2022) gets that from the very denoiser `pretrain --healthy`
trains, with no mask channel and no second training objective: at every reverse step the
known voxels are replaced by the image noised to that step, so the unknown ones are
generated in agreement with them, and `jumps` re-noise/re-denoise cycles (resampling)
harmonise the boundary. The reverse step is DDPM-like (DDIM with eta = 1) on `steps`
evenly spaced timesteps, so a few tens of steps suffice and the cost scales linearly.
Noise comes from one CPU generator per series seeded from (seed, series), so a persona
does not depend on workers, device order or reruns. Several series are denoised in one
batch (one forward pass per step for all of them, several times cheaper per series on a
CPU than one at a time); each keeps its own generator, so only float rounding in the
network depends on the batch, and `orthodiff persona` fixes the batches per shard.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from orthodiff.backbone.diffusion import NoiseScheduler, noise_key

POLICY = "RePaint: known voxels = q_sample(x0, t); reverse DDIM(eta=1) steps; `jumps` resampling per step; " \
         "noise from torch.Generator(sha256(seed, series, -1)), CPU"


@torch.no_grad()
def repaint(model: torch.nn.Module, scheduler: NoiseScheduler, x0: torch.Tensor, known: torch.Tensor,
            steps: int = 50, jumps: int = 2,
            generator: torch.Generator | Sequence[torch.Generator] | None = None) -> torch.Tensor:
    """Inpaint where `known` is False in the series `x0` (B, 1, D, H, W) in [-1, 1].

    `known` is (B, 1, D, H, W) or one (D, H, W) mask for all; `generator` one per series
    (a single one for B = 1). Returns x0 with the unknown voxels replaced by their healthy
    completion. The loop runs in float64 on the CPU; `scheduler.set_timesteps(steps)` is
    called here."""
    device = next(model.parameters()).device
    shape = x0.shape
    known = known.to(torch.bool).expand(shape) if known.dim() == 3 else known.to(torch.bool).reshape(shape)
    generators = list(generator) if isinstance(generator, Sequence) else [generator] * shape[0]
    if len(generators) != shape[0]:
        raise ValueError(f"{len(generators)} noise generators for {shape[0]} series")

    def randn() -> torch.Tensor:
        return torch.stack([torch.randn(shape[1:], generator=g, dtype=torch.float64) for g in generators])

    x0d = x0.double()
    x = randn()
    for t in scheduler.set_timesteps(steps).tolist():
        prev = scheduler.previous_timestep(t)
        for jump in range(jumps):
            eps = model(x.float().to(device), torch.full((shape[0],), t, device=device, dtype=torch.long)).double().cpu()
            unknown = scheduler.step(eps, t, x, eta=1.0, use_clipped_model_output=True, variance_noise=randn()).prev_sample
            known_part = scheduler.add_noise(x0d, randn(), torch.full((shape[0],), prev)) if prev >= 0 else x0d
            x_prev = torch.where(known, known_part, unknown)
            # resample: back to step t by the forward process, then again
            x = scheduler.undo_step(x_prev, t, randn()) if jump + 1 < jumps else x_prev
    return torch.where(known, x0d, x.clamp(-1, 1)).to(x0.dtype)


def series_generator(seed: int, series_id: str) -> torch.Generator:
    return torch.Generator().manual_seed(noise_key(seed, series_id, -1))
