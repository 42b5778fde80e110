"""The backbone: 3D diffusion U-Net, Gaussian diffusion, checkpoints, pretraining.

Public API: `load_backbone(path, device=None)` -> `DiffusionUNet` (with `middle_features`),
`backbone_id(path)`, `PRESETS`.
"""

from orthodiff.backbone.checkpoint import backbone_id, load_backbone
from orthodiff.backbone.unet import MIDDLE_BLOCKS, PRESETS, DiffusionUNet, UNetConfig

__all__ = ["MIDDLE_BLOCKS", "PRESETS", "DiffusionUNet", "UNetConfig", "backbone_id", "load_backbone"]
