"""The paper's persona model (sec. 5.2.1): a 3D DDPM trained on masked inputs.

The alternative to `inpaint.repaint` (our unconditional backbone + RePaint). Here the
denoiser sees, beside x_t, the volume with the ROI box blanked and the mask itself (3 input
channels), and learns to predict the noise of the full volume; at inference the reverse
process is conditioned on the same masked context and the known voxels are kept. The
schedule is Ho et al.'s linear one over T = 1000 steps with betas from 1e-4 to 2e-2, as the
paper writes. Network (`DiffusionModelUNet`) and schedule (`DDPMScheduler`) are MONAI's;
what is ours is the masked conditioning, the training loop and the checkpoint. Sizes default
to a small network that trains on a CPU; the paper's is larger.

A checkpoint records the training cohort (`healthy`: None when not trained on healthy exams
only); `load_masked_ddpm` refuses one that was not, since its personas would not be healthy
baselines (pass `require_healthy=False` for experiments).
"""

from __future__ import annotations

from pathlib import Path

from contextlib import nullcontext

import torch
from torch import nn

from orthodiff.errors import OrthodiffError
from orthodiff.training import is_small, one_thread

TIMESTEPS, BETA_START, BETA_END = 1000, 1e-4, 2e-2  # sec. 5.2.1
POLICY = "masked DDPM (linear betas 1e-4..2e-2, T=1000): DDPM reverse steps conditioned on the masked context, " \
         "known voxels kept; noise from torch.Generator(sha256(seed, series, -1)), CPU, one series at a time"


def scheduler():
    """MONAI's DDPM scheduler with the paper's linear schedule (a new one per loop: it holds
    the inference timesteps)."""
    from monai.networks.schedulers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=TIMESTEPS, schedule="linear_beta", beta_start=BETA_START, beta_end=BETA_END)


class MaskedDDPM(nn.Module):
    """eps_theta(x_t, t | image * (1 - mask), mask) for (B, 1, D, H, W) volumes in [-1, 1];
    `mask` is 1 inside the ROI (unknown) and 0 in the context. D, H, W must be divisible by
    2^(len(channels) - 1). The network only: the schedule is `scheduler()`, the loops are
    `masked_loss` and `masked_inpaint`."""

    def __init__(self, channels: tuple[int, ...] = (8, 16), norm_groups: int = 4):
        super().__init__()
        from monai.networks.nets import DiffusionModelUNet

        self.config = {"channels": list(channels), "norm_groups": norm_groups}
        self.net = DiffusionModelUNet(spatial_dims=3, in_channels=3, out_channels=1, channels=tuple(channels),
                                      attention_levels=(False,) * len(channels), num_res_blocks=1,
                                      norm_num_groups=norm_groups)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, context: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([x_t, context, mask], 1), t)


def masked_loss(model: MaskedDDPM, schedule, x0: torch.Tensor, mask: torch.Tensor,
                generator: torch.Generator) -> torch.Tensor:
    """The epsilon MSE over the whole volume at uniformly drawn timesteps (Ho et al.), the
    input masked: the paper's training on masked inputs."""
    noise = torch.randn(x0.shape, generator=generator)
    t = torch.randint(0, schedule.num_train_timesteps, (len(x0),), generator=generator)
    x_t = schedule.add_noise(x0, noise, t)
    return torch.mean((model(x_t, t, x0 * (1 - mask), mask) - noise) ** 2)


@torch.no_grad()
def masked_inpaint(model: MaskedDDPM, x0: torch.Tensor, mask: torch.Tensor, steps: int = 50,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """x0 with the voxels where `mask` is 1 replaced by their completion: DDPM sampling
    conditioned on the masked context, on `steps` of the T timesteps of `scheduler()`."""
    sampler = scheduler()
    if not 1 <= steps <= sampler.num_train_timesteps:
        raise OrthodiffError(f"sampling steps {steps}: expected 1 to {sampler.num_train_timesteps}")
    mask = mask.to(x0.dtype).expand_as(x0)
    context = x0 * (1 - mask)
    sampler.set_timesteps(steps)
    x = torch.randn(x0.shape, generator=generator)
    with one_thread() if is_small(model, (x0,), len(x0)) else nullcontext():
        for t in sampler.timesteps:
            eps = model(x, torch.full((len(x0),), int(t), dtype=torch.long), context, mask)
            x, _ = sampler.step(eps, int(t), x, generator=generator)
    return torch.where(mask > 0, x.clamp(-1, 1), x0)


def train_masked_ddpm(volumes: torch.Tensor, mask: torch.Tensor, steps: int, batch: int = 2, lr: float = 2e-4,
                      seed: int = 0, healthy: dict | None = None, **config) -> tuple[MaskedDDPM, list[float]]:
    """Train on `volumes` (N, 1, D, H, W) in [-1, 1] (healthy exams: `healthy` says which
    cohort, it is stored with the weights) with the ROI `mask` (D, H, W) blanked. Returns the
    model in eval mode and the loss per step."""
    if volumes.ndim != 5 or volumes.shape[1] != 1 or len(volumes) == 0:
        raise OrthodiffError(f"training volumes must be (N >= 1, 1, D, H, W), got {tuple(volumes.shape)}")
    if not mask.any():
        raise OrthodiffError("the ROI mask is empty: nothing to learn to inpaint")
    torch.manual_seed(seed)
    model, schedule = MaskedDDPM(**config), scheduler()
    model.healthy, model.shape = healthy, list(volumes.shape[2:])
    generator = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    m = mask.to(volumes.dtype)[None, None].expand(batch, 1, *mask.shape)
    losses = []
    model.train()
    with one_thread() if is_small(model, (volumes,), batch) else nullcontext():  # tiny nets: 1 thread is fastest
        for _ in range(steps):
            idx = torch.randint(0, len(volumes), (batch,), generator=generator)
            loss = masked_loss(model, schedule, volumes[idx], m, generator)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
    return model.eval(), losses


def save_masked_ddpm(model: MaskedDDPM, path: str | Path) -> Path:
    from orthodiff.backbone.checkpoint import save_atomic

    return save_atomic({"model": model.state_dict(), "config": model.config, "kind": "masked_ddpm",
                        "schedule": {"kind": "linear", "beta_start": BETA_START, "beta_end": BETA_END},
                        "healthy": getattr(model, "healthy", None), "shape": getattr(model, "shape", None)}, path)


def load_masked_ddpm(path: str | Path, require_healthy: bool = True) -> MaskedDDPM:
    """The model saved by `save_masked_ddpm`; refuses a model not trained on healthy exams."""
    path = Path(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise OrthodiffError(f"{path}: not a readable checkpoint ({type(err).__name__})") from None
    if not isinstance(ckpt, dict) or ckpt.get("kind") != "masked_ddpm":
        raise OrthodiffError(f"{path}: not a masked-DDPM persona checkpoint (train one with `train_masked_ddpm`)")
    if require_healthy and not ckpt.get("healthy"):
        raise OrthodiffError(f"{path}: not trained on healthy exams only (no `healthy` cohort recorded): its "
                             "personas would not be healthy baselines; retrain on the healthy exams")
    model = MaskedDDPM(tuple(ckpt["config"]["channels"]), ckpt["config"]["norm_groups"])
    model.load_state_dict(ckpt["model"])
    model.healthy, model.shape = ckpt.get("healthy"), ckpt.get("shape")
    return model.eval()


def ddpm_id(path: str | Path) -> str:
    """The persona-group id of a masked-DDPM checkpoint: `ddpm-` and its weights' hash."""
    from orthodiff.backbone.checkpoint import read_checkpoint, state_id

    return f"ddpm-{state_id(read_checkpoint(path)['model'])}"
