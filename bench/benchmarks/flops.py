"""Bench: FLOPs of encoder + middle block per series per timestep at every preset.

    .venv/bin/python bench/benchmarks/flops.py

Counted with `torch.utils.flop_counter` on one forward of `middle_features` built on the
meta device: shapes only, no weights allocated and nothing computed, so the `paper` preset
costs no more to count than `tiny`. A multiply-add counts as 2 FLOPs (convolutions,
matmuls, attention); elementwise ops (norms, activations) are not counted.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from orthodiff.backbone import PRESETS, DiffusionUNet


def middle_flops(preset: str, device: str = "meta") -> int:
    """FLOPs of `middle_features` (encoder + middle block, all blocks kept) for one series."""
    config = PRESETS[preset]
    with torch.device(device):
        model = DiffusionUNet(config)
        x = torch.zeros(1, 1, config.depth, config.image_size, config.image_size)
        t = torch.full((1,), 100)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.middle_features(x, t)
    return counter.get_total_flops()


def main() -> None:
    for preset, config in PRESETS.items():
        with torch.device("meta"):
            params = sum(p.numel() for p in DiffusionUNet(config).parameters())
        print(f"{preset:6s} {config.depth}x{config.image_size}x{config.image_size}, {params / 1e6:6.1f} M parameters: "
              f"{middle_flops(preset) / 1e9:7.1f} GFLOP encoder + middle per series per timestep")


if __name__ == "__main__":
    main()
