"""The paper's persona comparators (sec. 5.2.1, its reconstruction table): a 3D GAN and a
ViT3D autoencoder, both completing the masked ROI from its context, small and CPU-trainable.

Both see the volume with the ROI blanked and the mask (2 channels) and output the whole
volume; only the ROI of their output is used (`inpaint` keeps the context voxels), exactly
as the masked DDPM (`personas.ddpm`) is used, so `personas.fidelity` scores all three alike.
- "gan": a context-encoder GAN: MONAI `UNet` generator trained on the ROI's L1 error plus a
  least-squares adversarial term from a MONAI `PatchDiscriminator` that sees the composed
  volume (Pathak et al. 2016 style; `adversarial` weights the GAN term).
- "vit_ae": MONAI `ViTAutoEnc` (patch embedding, transformer, transposed-convolution
  decoder; its decoder upsamples 16x, so patches are 16 voxels) trained on the ROI's MSE.
Sizes default to small networks; the paper's are larger.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import nn

from orthodiff.errors import OrthodiffError
from orthodiff.training import is_small, one_thread

PERSONA_COMPARATORS = ("gan", "vit_ae")


class ContextInpainter(nn.Module):
    """f(image with ROI blanked, mask) -> volume; `inpaint` keeps the context voxels."""

    def __init__(self, kind: str, shape: tuple[int, int, int], width: int = 8):
        super().__init__()
        if kind not in PERSONA_COMPARATORS:
            raise OrthodiffError(f"persona comparator {kind!r}: expected one of {list(PERSONA_COMPARATORS)}")
        self.kind = kind
        if kind == "gan":
            from monai.networks.nets import PatchDiscriminator, UNet

            if any(size % 4 for size in shape):
                raise OrthodiffError(f"the GAN generator needs volume sides divisible by 4, got {shape}")
            self.generator = UNet(spatial_dims=3, in_channels=2, out_channels=1, channels=(width, 2 * width, 4 * width),
                                  strides=(2, 2))
            self.discriminator = PatchDiscriminator(spatial_dims=3, num_layers_d=2, channels=width, in_channels=1, kernel_size=3)
        else:
            from monai.networks.nets import ViTAutoEnc

            if any(size % 16 for size in shape):
                raise OrthodiffError(f"the ViT autoencoder needs volume sides divisible by 16 (its patches), got {shape}")
            self.generator = ViTAutoEnc(in_channels=2, img_size=shape, patch_size=16, hidden_size=8 * width,
                                        mlp_dim=16 * width, num_layers=2, num_heads=4, deconv_chns=width)

    def complete(self, x0: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        out = self.generator(torch.cat([x0 * (1 - mask), mask], 1))
        return torch.tanh(out[0] if isinstance(out, tuple) else out)

    @torch.no_grad()
    def inpaint(self, x0: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        mask = mask.to(x0.dtype).expand_as(x0)
        return torch.where(mask > 0, self.complete(x0, mask), x0)


def train_persona_comparator(kind: str, volumes: torch.Tensor, mask: torch.Tensor, steps: int, batch: int = 2,
                             lr: float = 2e-4, seed: int = 0, adversarial: float = 0.01,
                             width: int = 8) -> tuple[ContextInpainter, list[float]]:
    """Train `kind` on `volumes` (N, 1, D, H, W) in [-1, 1] (healthy exams) with the ROI
    `mask` (D, H, W) blanked; returns the model in eval mode and the reconstruction loss per step."""
    if volumes.ndim != 5 or volumes.shape[1] != 1 or len(volumes) == 0:
        raise OrthodiffError(f"training volumes must be (N >= 1, 1, D, H, W), got {tuple(volumes.shape)}")
    if not mask.any():
        raise OrthodiffError("the ROI mask is empty: nothing to learn to inpaint")
    torch.manual_seed(seed)
    model = ContextInpainter(kind, tuple(volumes.shape[2:]), width)
    generator = torch.Generator().manual_seed(seed)
    g_opt = torch.optim.Adam(model.generator.parameters(), lr=lr)
    d_opt = torch.optim.Adam(model.discriminator.parameters(), lr=lr) if kind == "gan" else None
    m = mask.to(volumes.dtype)[None, None].expand(batch, 1, *mask.shape)
    losses = []
    model.train()
    with one_thread() if is_small(model, (volumes,), batch) else nullcontext():  # tiny nets: 1 thread is fastest
        for _ in range(steps):
            x0 = volumes[torch.randint(0, len(volumes), (batch,), generator=generator)]
            out = model.complete(x0, m)
            roi = m.sum()
            if kind == "gan":
                fake = torch.where(m > 0, out, x0)
                d_real, d_fake = model.discriminator(x0)[-1], model.discriminator(fake.detach())[-1]
                d_loss = ((d_real - 1) ** 2).mean() + (d_fake ** 2).mean()
                d_opt.zero_grad()
                d_loss.backward()
                d_opt.step()
                recon = ((out - x0).abs() * m).sum() / roi
                loss = recon + adversarial * ((model.discriminator(fake)[-1] - 1) ** 2).mean()
            else:
                recon = loss = (((out - x0) ** 2) * m).sum() / roi
            g_opt.zero_grad()
            loss.backward()
            g_opt.step()
            losses.append(float(recon.detach()))
    return model.eval(), losses
