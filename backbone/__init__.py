"""The backbone: 3D diffusion U-Net, Gaussian diffusion, checkpoints, pretraining.

Public API: `load_backbone(path, device=None)` -> `DiffusionUNet` (with `middle_features`),
`backbone_id(path)`, `PRESETS`, `NUM_TIMESTEPS` (the length of the noise schedule).
"""

from orthodiff.backbone.checkpoint import backbone_id, load_backbone
from orthodiff.backbone.diffusion import NUM_TIMESTEPS
from orthodiff.backbone.unet import MIDDLE_BLOCKS, PRESETS, DiffusionUNet, UNetConfig

__all__ = ["MIDDLE_BLOCKS", "NUM_TIMESTEPS", "PRESETS", "DiffusionUNet", "UNetConfig", "backbone_id", "load_backbone"]
