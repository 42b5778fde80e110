"""Reduced-precision inference: `--precision fp32|bf16|fp16` as an autocast context.

Convolutions, linear layers and attention run in the reduced type; GroupNorm stays in
float32 (`GroupNorm32`), and outputs are cast back to float32 by the caller.
"""

from __future__ import annotations

import contextlib

import torch

from orthodiff.errors import OrthodiffError

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise OrthodiffError(f"--precision {precision!r}: expected one of {list(PRECISIONS)}")


def autocast(device: torch.device | str, precision: str):
    """The autocast context of `precision` on `device` (a no-op for fp32)."""
    check_precision(precision)
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)
