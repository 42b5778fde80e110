"""The one training loop every torch model here uses (heads, fine-tuning, segmentation,
promptable models), and row-block reading of (lazy) arrays.

Inputs are lists of arrays sharing the first (row) dimension: numpy arrays, or lazy
arrays (xarray DataArray / Dask) that are read in contiguous blocks of ``block_rows`` rows,
so a head streams from the feature store with memory bounded by one block. Each epoch
visits the blocks in a random order and the rows of a block in a random order; for
in-memory arrays the block is the whole array (a plain shuffle).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from orthodiff.errors import OrthodiffError


def in_memory(x) -> bool:
    """Whether ``x`` is a numpy array or tensor (used whole); any other array-like (xarray,
    Dask, Zarr) is read in row blocks. Not ``heads.estimator.is_lazy``, which asks whether
    an input must be left unvalidated so that it stays lazy."""
    return isinstance(x, (np.ndarray, torch.Tensor))


def read_rows(x, start: int, stop: int) -> torch.Tensor:
    """Rows [start, stop) as a tensor; integer arrays stay integer, floats become float32
    unless float16 (pooling casts to float32 itself, which halves block memory)."""
    block = np.asarray(x[start:stop])
    if block.dtype.kind == "f" and block.dtype != np.float16:
        block = block.astype(np.float32, copy=False)
    return torch.from_numpy(np.ascontiguousarray(block))


def n_rows(inputs: Sequence) -> int:
    sizes = {len(x) for x in inputs}
    if len(sizes) != 1:
        raise OrthodiffError(f"inputs disagree on the number of rows: {sorted(sizes)}")
    return sizes.pop()


def _block_size(inputs: Sequence, block_rows: int | None, n: int, stream: bool = False) -> int:
    if stream or not all(in_memory(x) for x in inputs):
        return max(1, min(block_rows or 256, n))
    return max(n, 1)


def blocks(inputs: Sequence, size: int, order: np.ndarray | None = None) -> Iterator[tuple[int, list]]:
    """(start, [tensor per input]) per contiguous block of ``size`` rows, blocks in ``order``."""
    n = n_rows(inputs)
    count = math.ceil(n / size)
    for b in order if order is not None else range(count):
        start = int(b) * size
        yield start, [read_rows(x, start, min(start + size, n)) for x in inputs]


def seeded(seed: int, build: Callable[[], nn.Module]) -> nn.Module:
    """Build a module under ``seed`` without touching the global torch RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def weighted_bce(logits: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """BCE with logits, mean over labels, weighted mean over rows; extra middle dims of
    ``logits`` (e.g. a batch of configurations) are independent models and are summed."""
    shape = (y.shape[0],) + (1,) * (logits.dim() - 2) + (y.shape[1],)
    row_weight = (w / (w.sum() * y.shape[1])).view((-1,) + (1,) * (logits.dim() - 1))
    return F.binary_cross_entropy_with_logits(logits, y.view(shape).expand_as(logits), weight=row_weight, reduction="sum")


# Below these sizes a step's ops take microseconds, and a pool of intra-op threads costs more
# in fork/join than it saves; on a loaded machine each join also waits for a descheduled
# thread (`bench/benchmarks/heads_threads.py`).
SMALL_PARAMETERS, SMALL_BATCH_ELEMENTS = 2**20, 2**22


@contextmanager
def one_thread():
    """Run the block with one intra-op torch thread, then restore the previous count."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def is_small(model: nn.Module, inputs: Sequence, batch_size: int) -> bool:
    """A model and batch small enough that one CPU thread trains them fastest."""
    row_elements = sum(math.prod(x.shape[1:]) for x in inputs)
    return (sum(p.numel() for p in model.parameters()) < SMALL_PARAMETERS
            and row_elements * batch_size < SMALL_BATCH_ELEMENTS)


@dataclass(frozen=True)
class Amp:
    """Mixed-precision settings of a training loop: whether ``torch.autocast`` is on, its
    dtype, and whether a ``GradScaler`` guards the float16 gradients from underflow."""

    enabled: bool
    dtype: torch.dtype | None = None
    scaler: bool = False


def amp_settings(device_type: str, amp: bool | None = None, bf16: bool | None = None) -> Amp:
    """The mixed precision of training on a device of `device_type` ("cuda", "cpu", ...).

    `amp` None follows the MSK evaluation paper's recipe (mixed precision on the GPU): on for
    CUDA, off elsewhere; True asks for it, but it stays off off CUDA (CPU autocast is slower
    than float32 for these models and the recipe never used it). On CUDA it is bfloat16
    where the GPU supports it (`bf16`, default: ``torch.cuda.is_bf16_supported()``; no loss
    scaling needed) and float16 with a ``GradScaler`` on older GPUs."""
    if device_type != "cuda" or amp is False:
        return Amp(False)
    if bf16 is None:
        bf16 = torch.cuda.is_bf16_supported()
    return Amp(True, torch.bfloat16) if bf16 else Amp(True, torch.float16, scaler=True)


def train(
    model: nn.Module,
    inputs: Sequence,
    y,
    sample_weight: np.ndarray | None,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    random_state: int,
    weight_decay: float = 0.0,
    block_rows: int | None = None,
    forward: Callable[..., torch.Tensor] | None = None,
    loss: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] = weighted_bce,
    param_groups: list[dict] | None = None,
    on_step: Callable[[], None] | None = None,
    cosine: bool = True,
    optimizer: str = "adam",
    warm_restarts: int = 0,
    clip_norm: float | None = None,
    accumulate: int = 1,
    validate: Callable[[], float] | None = None,
    patience: int = 0,
    min_delta: float = 0.0,
    amp: bool | None = None,
) -> nn.Module:
    """Adam + cosine schedule over all steps (constant rate when ``cosine`` is False);
    returns ``model``.

    The MSK evaluation paper's fine-tuning recipe is a set of options that all default to
    off: ``optimizer="adamw"`` (decoupled ``weight_decay``), ``warm_restarts`` > 0 (cosine
    annealing restarting every that many epochs instead of one cosine), ``clip_norm``
    (gradient-norm clipping), ``accumulate`` (an optimizer step every that many batches),
    and early stopping: ``validate()`` (a validation loss) after every epoch, stopping when it
    has not improved by ``min_delta`` for ``patience`` epochs and restoring the best weights.

    ``loss(output, y, weights)`` defaults to weighted BCE with logits. ``y`` is read in the
    same blocks as the inputs, so it may be lazy too (segmentation masks). ``param_groups``
    (torch optimizer groups) overrides the trainable parameters, e.g. a smaller learning
    rate for a pretrained encoder than for its new head. Batches move to the model's device;
    the forward pass and loss run under ``amp``'s mixed precision (`amp_settings`: by default
    bfloat16 autocast on CUDA, float16 with loss scaling on GPUs without bfloat16, none on
    the CPU); on the CPU a small model (`is_small`) trains on one thread. ``on_step()`` is called after every optimizer step
    (progress bars).
    """
    n = n_rows(inputs)
    y = np.asarray(y, dtype=np.float32) if in_memory(y) else y
    w = np.ones(n, np.float32) if sample_weight is None else np.asarray(sample_weight, dtype=np.float32)
    if len(y) != n or len(w) != n:
        raise OrthodiffError(f"{n} input rows but {len(y)} label rows and {len(w)} weights")
    forward = forward or model
    size = _block_size([*inputs, y], block_rows, n)
    n_blocks = math.ceil(n / size)
    per_epoch = sum(math.ceil(math.ceil(min(size, n - b * size) / batch_size) / accumulate) for b in range(n_blocks))
    steps = epochs * per_epoch
    params = param_groups or [p for p in model.parameters() if p.requires_grad]
    if optimizer not in ("adam", "adamw"):
        raise OrthodiffError(f"unknown optimizer {optimizer!r}; choose adam or adamw")
    optimizer = (torch.optim.AdamW if optimizer == "adamw" else torch.optim.Adam)(params, lr=lr, weight_decay=weight_decay,
                                                                                fused=bool(params))
    if warm_restarts:
        schedule = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(optimizer, T_0=max(warm_restarts * per_epoch, 1))
    else:
        schedule = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(steps, 1)) if cosine
                    else torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0))
    trainable = [p for group in optimizer.param_groups for p in group["params"]]
    best, best_state, waited = math.inf, None, 0
    device = next(model.parameters()).device
    precision = amp_settings(device.type, amp)
    scaler = torch.amp.GradScaler(device.type, enabled=precision.scaler)
    rng = np.random.default_rng(random_state)
    model.train()
    threads = one_thread() if device.type == "cpu" and is_small(model, inputs, batch_size) else nullcontext()
    with threads, torch.random.fork_rng(devices=[]):
        torch.manual_seed(random_state)
        for _ in range(epochs):
            for _, tensors in blocks([*inputs, y, w], size, rng.permutation(n_blocks)):
                # one gather per block, then contiguous batches (cheaper than a gather per batch);
                # index_select copies rows ~2.5x faster than advanced indexing
                perm = torch.from_numpy(rng.permutation(len(tensors[0])))
                tensors = [torch.index_select(t, 0, perm).to(device) for t in tensors]
                starts = list(range(0, len(perm), batch_size))
                for b, i in enumerate(starts):
                    *xs, y_batch, w_batch = (t[i : i + batch_size] for t in tensors)
                    with torch.autocast(device.type, dtype=precision.dtype, enabled=precision.enabled):
                        value = loss(forward(*xs), y_batch, w_batch)
                    if b % accumulate == 0:
                        optimizer.zero_grad(set_to_none=True)
                    scaler.scale(value / accumulate if accumulate > 1 else value).backward()
                    if (b + 1) % accumulate and b + 1 < len(starts):
                        continue  # gradients add up until `accumulate` batches (or the block's last)
                    if clip_norm:
                        scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
                        torch.nn.utils.clip_grad_norm_(trainable, clip_norm)
                    scaler.step(optimizer)
                    scaler.update()
                    schedule.step()
                    if on_step:
                        on_step()
            if validate is not None:
                model.eval()
                current = float(validate())
                model.train()
                if current < best - min_delta:
                    best, waited = current, 0
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                else:
                    waited += 1
                    if patience and waited >= patience:
                        break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return model


@torch.no_grad()
def apply(fn: Callable[..., torch.Tensor], inputs: Sequence, block_rows: int | None = None) -> np.ndarray:
    """``fn`` over all rows block by block (no gradients), concatenated as numpy."""
    size = _block_size(inputs, block_rows, n_rows(inputs), stream=True)
    return np.concatenate([fn(*tensors).cpu().numpy() for _, tensors in blocks(inputs, size)])
