"""Inference precision (`--precision`), and the fast inference path.

- ``fp32``: float32 weights and activations.
- ``bf16``: the network itself in bfloat16 (weights cast once), so convolutions and
  matmuls run natively in bfloat16 with float32 accumulation, and no per-op casts:
  GroupNorm statistics and the attention softmax accumulate in float32 inside their kernels
  (``GroupNorm32`` no longer round-trips through a float32 copy when input and weights
  agree, and scaled-dot-product attention keeps float32 softmax statistics).
- ``fp16``: float16 autocast (CUDA), as the reference code's AMP.

Every precision runs in the channels-last 3D memory format (`inference_model`), which the
convolution kernels (oneDNN, cuDNN) prefer; the caller casts outputs back to float32.
`autocast` stays for the reference workflow's AMP in the benchmarks.
"""

from __future__ import annotations

import contextlib
import warnings

import torch
from torch import nn

from orthodiff.options import Precision, choice

PRECISIONS = {Precision.fp32: None, Precision.bf16: torch.bfloat16, Precision.fp16: torch.float16}


def check_precision(precision: str) -> Precision:
    return choice(Precision, precision, "--precision")


def autocast(device: torch.device | str, precision: str):
    """The autocast context of `precision` on `device` (a no-op for fp32)."""
    dtype = PRECISIONS[check_precision(precision)]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


def inference_model(model: nn.Module, precision: str) -> nn.Module:
    """`model` (in place) as the fast path of `precision` runs it: channels-last 3D, and its
    weights in bfloat16 for ``bf16``."""
    precision = check_precision(precision)
    model = model.to(memory_format=torch.channels_last_3d)
    return model.to(torch.bfloat16) if precision is Precision.bf16 else model


def inference_input(x: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """A (B, 1, D, H, W) input on `model`'s device, dtype and memory format."""
    weight = next(model.parameters())
    return x.to(weight.device, weight.dtype).contiguous(memory_format=torch.channels_last_3d)


def inference_context(device: torch.device | str, precision: str):
    """What `inference_model`'s forward runs under: autocast for ``fp16``, nothing else."""
    return autocast(device, precision) if check_precision(precision) is Precision.fp16 else contextlib.nullcontext()


class Compiled:
    """`torch.compile(function)` for inference that falls back to `function` (with one
    warning) when compilation fails, e.g. without a C++ compiler or on an unsupported device,
    or when its first output is not eager's: the first call also runs `function` and
    compares (a largest error above `TOLERANCE` of the output's magnitude, or a non-finite
    value eager does not have, means a miscompiled network). torch 2.13 on this project's
    CPU compiles the bf16 backbone to NaN (tests/test_backbone.py), so the check is not
    hypothetical.

    In fp32 with inductor's freezing: the weights become constants of the graph, so
    convolution weights are prepacked once and normalisation and activations fuse around
    them (this project's 2-core CPU, `tiny`: 1.25x eager per forward, see the benchmarks
    page); weights changed after the first call are therefore not seen."""

    TOLERANCE = 0.05  # far above bf16's rounding (about 1.6e-2 of a block's magnitude), far below a miscompile

    def __init__(self, function, precision: str = "fp32"):
        options = {"freezing": True} if check_precision(precision) is Precision.fp32 else None
        self.function, self.compiled = function, torch.compile(function, options=options)
        self.checked = False

    def __call__(self, *args, **kwargs):
        if self.compiled is None:
            return self.function(*args, **kwargs)
        try:
            out = self.compiled(*args, **kwargs)
        except Exception as err:  # dynamo and inductor raise many types; eager is always right
            warnings.warn(f"torch.compile failed ({type(err).__name__}: {str(err)[:200]}); running eagerly", stacklevel=2)
            self.compiled = None
            return self.function(*args, **kwargs)
        if not self.checked:
            self.checked = True
            expected = self.function(*args, **kwargs)
            error = largest_error(out, expected)
            if not error <= self.TOLERANCE:
                self.compiled = None
                warnings.warn(f"torch.compile's output is not eager's (largest error {error:.3g} of its magnitude); "
                              "running eagerly", stacklevel=2)
                return expected
        return out


def largest_error(out, expected) -> float:
    """The largest |out - expected| over a tensor or a dict of tensors, relative to each
    tensor's largest |expected|; inf where `out` is non-finite and `expected` is not."""
    pairs = [(out[k], expected[k]) for k in expected] if isinstance(expected, dict) else [(out, expected)]
    errors = []
    for got, want in pairs:
        got, want = got.float(), want.float()
        if not torch.isfinite(got).all() and torch.isfinite(want).all():
            return float("inf")
        errors.append(((got - want).abs().max() / want.abs().max().clamp_min(1e-30)).item())
    return max(errors)
