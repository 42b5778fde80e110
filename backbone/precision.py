"""Reduced-precision inference: `--precision fp32|bf16|fp16` as an autocast context.

Convolutions, linear layers and attention run in the reduced type; GroupNorm stays in
float32 (`GroupNorm32`), and outputs are cast back to float32 by the caller.
"""

from __future__ import annotations

import contextlib

import torch

from orthodiff.options import Precision, choice

PRECISIONS = {Precision.fp32: None, Precision.bf16: torch.bfloat16, Precision.fp16: torch.float16}


def check_precision(precision: str) -> None:
    choice(Precision, precision, "--precision")


def autocast(device: torch.device | str, precision: str):
    """The autocast context of `precision` on `device` (a no-op for fp32)."""
    check_precision(precision)
    dtype = PRECISIONS[Precision(precision)]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)
