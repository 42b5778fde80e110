"""Networks trained on whole volumes: diffusion-encoder heads and supervised baselines.

Every network takes `(x0, keys)`: a batch of volumes (B, z, y, x) in [-1, 1] and each
series' noise key (`backbone.diffusion.noise_key`), and returns logits. Diffusion networks
noise `x0` to their timestep exactly as `orthodiff extract` does, so a fine-tuned encoder
sees the inputs its features will later be extracted from; baselines ignore the keys.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from orthodiff.backbone import MIDDLE_BLOCKS, PRESETS, DiffusionUNet
from orthodiff.backbone.diffusion import NoiseScheduler, keyed_noise
from orthodiff.errors import OrthodiffError
from orthodiff.heads.probe import ProbeNet

CLASSIFIERS = ("finetune", "resnet18", "unet_encoder", "mrnet")
SEGMENTERS = ("diffusion", "unet", "unetr")
DECODERS = ("light", "skip")


class NoisedEncoder(nn.Module):
    """A diffusion U-Net's encoder and middle block applied to x_t at a fixed timestep.

    Only `unet.encoder_parameters()` train; the decoder and the timestep embedding stay frozen.
    """

    def __init__(self, unet: DiffusionUNet, timestep: int, block: str):
        super().__init__()
        if block not in MIDDLE_BLOCKS:
            raise OrthodiffError(f"--block {block!r}: expected one of {list(MIDDLE_BLOCKS)}")
        self.unet, self.timestep, self.block = unet, int(timestep), block
        self.diffusion = NoiseScheduler()  # named as in saved segmentation models' state dicts
        trainable = {id(p) for p in unet.encoder_parameters()}
        for p in unet.parameters():
            p.requires_grad_(id(p) in trainable)

    def noised(self, x0: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """x_t: fresh noise per step while training (as the paper; the training loop seeds the
        CPU generator, so a run is reproducible), each series' keyed noise otherwise (the
        noise `orthodiff extract` uses)."""
        x0 = x0.float()[:, None]
        if self.training:
            noise = torch.randn(x0.shape).to(x0.device)
        else:
            noise = keyed_noise(keys.tolist(), x0.shape[1:]).to(x0.device)
        t = torch.full((len(x0),), self.timestep, device=x0.device)
        return self.diffusion.add_noise(x0, noise, t)

    def forward(self, x0: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """The middle block's output at `block`."""
        t = torch.full((len(x0),), self.timestep, device=x0.device)
        return self.unet.middle_features(self.noised(x0, keys), t, (self.block,))[self.block]

    def with_skips(self, x0: torch.Tensor, keys: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        t = torch.full((len(x0),), self.timestep, device=x0.device)
        return self.unet.encoder_features(self.noised(x0, keys), t, self.block)


class UsageEncoder(nn.Module):
    """The fingerprint's usage-predictor backbone (paper sec. 5.2.3: a pretrained 3D network,
    classification head removed): per image channel (plane) one pretrained diffusion encoder
    at t = 0 on its `mid_2` output, globally average-pooled, concatenated to (B, `dim`)."""

    def __init__(self, unets: list[DiffusionUNet], names: list[str], planes: list[str | None] | None = None):
        super().__init__()
        self.encoders = nn.ModuleList(NoisedEncoder(unet, 0, "mid_2") for unet in unets)
        self.names, self.dim = names, sum(unet.config.middle_channels for unet in unets)
        self.planes = planes or [None] * len(unets)  # the plane each channel's encoder was pretrained on

    def check_input(self, shape: tuple[int, ...]) -> None:
        """Refuse images (C, D, H, W) the encoders were not pretrained on."""
        if shape[0] != len(self.encoders):
            raise OrthodiffError(f"the usage images have {shape[0]} channels but {len(self.encoders)} encoders "
                                 f"were given ({', '.join(self.names)}): one per channel")
        for name, encoder in zip(self.names, self.encoders):
            config = encoder.unet.config
            if tuple(shape[1:]) != (config.depth, config.image_size, config.image_size):
                raise OrthodiffError(f"{name}: pretrained on {config.depth}x{config.image_size}x{config.image_size} "
                                     f"volumes, the usage images are {'x'.join(map(str, shape[1:]))}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        keys = torch.zeros(len(x), dtype=torch.long)
        return torch.cat([encoder(x[:, c], keys).mean((2, 3, 4)) for c, encoder in enumerate(self.encoders)], 1)


def usage_encoder(checkpoints: list[str]) -> UsageEncoder:
    """`UsageEncoder` from one checkpoint per channel (full or `export-encoder`, e.g. the shipped
    `weights/demo_<plane>.pt`), on the CPU; `planes` from what each checkpoint records."""
    from orthodiff.backbone.checkpoint import load_backbone, read_checkpoint

    ckpts = [read_checkpoint(path) for path in checkpoints]
    unknown = [str(path) for path, ckpt in zip(checkpoints, ckpts) if not ckpt.get("plane")]
    if unknown:
        raise OrthodiffError(f"{unknown[0]}: the checkpoint records no plane, so which volumes it reads is unknown "
                             "(use a `pretrain` checkpoint or its `export-encoder` file)")
    return UsageEncoder([load_backbone(path, "cpu", ckpt) for path, ckpt in zip(checkpoints, ckpts)],
                        [str(path) for path in checkpoints], [ckpt.get("plane") for ckpt in ckpts])


class EncoderClassifier(nn.Module):
    """Noised encoder -> pooling probe head (channel standardisation, pooling, linear)."""

    def __init__(self, encoder: NoisedEncoder, pooling: str, n_labels: int):
        super().__init__()
        self.encoder = encoder
        self.head = ProbeNet(pooling, encoder.unet.config.middle_channels, n_labels)

    def forward(self, x0: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x0, keys))


class CleanInput(nn.Module):
    """A baseline network fed the clean volume as one channel; noise keys are ignored."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x0: torch.Tensor, keys: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(x0.float()[:, None])


class SliceCNN(nn.Module):
    """MRNet-style (Bien et al., PLOS Med 2018): one 2D CNN on every slice of a plane's series,
    global-average pooled per slice, max-pooled across slices, then linear. MRNet's CNN is an
    ImageNet-pretrained AlexNet; no pretrained 2D weights are available here (no torchvision,
    no downloads), so this is a small 2D CNN from scratch with the same slice-wise design.
    `run_baseline_classify` trains one per plane and averages the planes (MRNet: a logistic
    regression over the three planes' probabilities)."""

    def __init__(self, n_labels: int, width: int = 16):
        super().__init__()
        layers, channels = [], 1
        for out in (width, 2 * width, 4 * width):
            layers += [nn.Conv2d(channels, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU(), nn.MaxPool2d(2)]
            channels = out
        self.cnn, self.fc = nn.Sequential(*layers), nn.Linear(channels, n_labels)

    def forward(self, x0: torch.Tensor, keys: torch.Tensor | None = None) -> torch.Tensor:
        b, z = x0.shape[:2]
        per_slice = self.cnn(x0.float().reshape(b * z, 1, *x0.shape[2:])).mean((2, 3)).reshape(b, z, -1)
        return self.fc(per_slice.amax(1))


def _block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv3d(in_channels, out_channels, 3, padding=1), nn.GroupNorm(8, out_channels), nn.SiLU())


class ResBlock3D(nn.Module):
    """relu(x + [conv3 -> GroupNorm(8) -> ReLU -> conv3 -> GroupNorm(8)](x)); reference names."""

    def __init__(self, channels: int):
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv3d(channels, channels, 3, padding=1), nn.GroupNorm(8, channels), nn.ReLU(),
            nn.Conv3d(channels, channels, 3, padding=1), nn.GroupNorm(8, channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.block(x))


class SegHead(nn.Module):
    """The paper's light segmentation head on the middle block alone (no encoder skips):
    ``upsamplings`` transposed convs (kernel 4, stride 2, padding 1), each halving the
    channels and followed by ReLU, a residual block after the first two, then a 1x1x1 conv
    to classes. Parameter names as in the reference (``net.0``, ``net.2.block.0``, ...)."""

    def __init__(self, in_channels: int, n_classes: int, upsamplings: int):
        super().__init__()
        if in_channels % 2**upsamplings or (in_channels >> min(upsamplings, 2)) % 8:
            raise OrthodiffError(f"segmentation head: {in_channels} channels cannot be halved {upsamplings} times "
                                 "into GroupNorm(8) residual blocks")
        layers, channels = [], in_channels
        for k in range(upsamplings):
            layers += [nn.ConvTranspose3d(channels, channels // 2, 4, 2, 1), nn.ReLU()]
            channels //= 2
            if k < 2:
                layers.append(ResBlock3D(channels))
        self.net = nn.Sequential(*layers, nn.Conv3d(channels, n_classes, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class EncoderSegmenter(nn.Module):
    """Noised encoder + middle block + the paper's light head (``SegHead``), with as many
    upsamplings as the encoder downsamples, so the output is back at the input size."""

    def __init__(self, encoder: NoisedEncoder, n_classes: int):
        super().__init__()
        self.encoder = encoder
        config = encoder.unet.config
        self.head = SegHead(config.middle_channels, n_classes, len(config.channel_mult) - 1)

    def forward(self, x0: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x0, keys))


class SkipSegmenter(nn.Module):
    """orthodiff's variant (``--decoder skip``, not the paper's): noised encoder + a decoder
    that, at each encoder resolution, deepest first, upsamples, concatenates that
    resolution's last encoder activation and applies one conv; then 1x1 to classes."""

    def __init__(self, encoder: NoisedEncoder, n_classes: int, width: int = 16):
        super().__init__()
        self.encoder = encoder
        config = encoder.unet.config
        level_channels = [config.width * m for m in config.channel_mult]
        in_channels = [config.middle_channels + level_channels[-1]] + [width + c for c in reversed(level_channels[:-1])]
        self.decoder = nn.ModuleList(_block(c, width) for c in in_channels)
        self.out = nn.Conv3d(width, n_classes, 1)

    def forward(self, x0: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        skips, h = self.encoder.with_skips(x0, keys)
        last_per_size = {tuple(s.shape[2:]): s for s in skips}  # the last activation at each resolution
        for skip, conv in zip(reversed(list(last_per_size.values())), self.decoder):
            h = F.interpolate(h, size=skip.shape[2:], mode="trilinear", align_corners=False)
            h = conv(torch.cat([h, skip], dim=1))
        return self.out(h)


def classifier(name: str, n_labels: int, unet: DiffusionUNet | None = None, timestep: int = 0,
               block: str = "mid_2", pooling: str = "sap", image_size: int | None = None) -> nn.Module:
    """`finetune` (a pretrained `unet`), `unet_encoder` (the same architecture, random init,
    clean input), `resnet18` (MONAI, 3D, random init) or `mrnet` (`SliceCNN`, random init)."""
    if name == "finetune":
        if unet is None:
            raise OrthodiffError("fine-tuning needs a pretrained backbone")
        return EncoderClassifier(NoisedEncoder(unet, timestep, block), pooling, n_labels)
    if name == "unet_encoder":  # the paper's baseline: mid_0, globally average-pooled
        return EncoderClassifier(NoisedEncoder(DiffusionUNet(_config(image_size)), 0, "mid_0"), "gap", n_labels)
    if name == "resnet18":
        from monai.networks.nets import resnet18

        return CleanInput(resnet18(spatial_dims=3, n_input_channels=1, num_classes=n_labels))
    if name == "mrnet":
        return SliceCNN(n_labels)
    raise OrthodiffError(f"--model {name!r}: expected one of {list(CLASSIFIERS)}")


UNETR_SIZES = {"paper": dict(hidden_size=768, num_heads=12, mlp_dim=3072), "small": dict(hidden_size=192, num_heads=4, mlp_dim=384)}


def segmenter(name: str, n_classes: int, image_size: int, unet: DiffusionUNet | None = None,
              timestep: int = 10, block: str = "mid_2", decoder: str = "light", unetr_size: str = "paper") -> nn.Module:
    """`diffusion` (pretrained encoder + the paper's light head, or with ``decoder="skip"``
    orthodiff's skip-connection decoder), or MONAI's 3D `unet` / `unetr`."""
    if name == "diffusion":
        if unet is None:
            raise OrthodiffError("diffusion segmentation needs a pretrained backbone (--backbone)")
        if decoder not in DECODERS:
            raise OrthodiffError(f"--decoder {decoder!r}: expected one of {list(DECODERS)}")
        encoder = NoisedEncoder(unet, timestep, block)
        return EncoderSegmenter(encoder, n_classes) if decoder == "light" else SkipSegmenter(encoder, n_classes)
    if name == "unet":
        from monai.networks.nets import UNet

        return CleanInput(UNet(3, 1, n_classes, channels=(16, 32, 64, 128), strides=(2, 2, 2), num_res_units=1))
    if name == "unetr":
        from monai.networks.nets import UNETR

        if image_size % 16:
            raise OrthodiffError(f"UNETR needs volumes whose in-plane size is a multiple of 16, not {image_size}")
        if unetr_size not in UNETR_SIZES:
            raise OrthodiffError(f"UNETR size {unetr_size!r}: expected one of {list(UNETR_SIZES)}")
        return CleanInput(UNETR(1, n_classes, (16, image_size, image_size), feature_size=16, **UNETR_SIZES[unetr_size]))
    raise OrthodiffError(f"--model {name!r}: expected one of {list(SEGMENTERS)}")


def _config(image_size: int | None):
    """The preset architecture for volumes of `image_size` px (the denoiser a store would pretrain)."""
    match = [c for c in PRESETS.values() if c.image_size == image_size]
    if not match:
        raise OrthodiffError(f"no backbone preset for {image_size} px volumes; presets: "
                             f"{ {n: c.image_size for n, c in PRESETS.items()} }")
    return match[0]
