"""Per-plane diffusion pretraining on the store's volumes (`orthodiff pretrain`).

One backbone per plane, trained on that plane's training-split volumes read lazily from the
store. Adam at the reference rate (1e-5 x batch x processes), EMA 0.995, gradient clipping,
checkpoints in the reference layout written atomically every `every` steps together with
the optimizer, EMA, step and random-generator states, so `resume` continues exactly the run
that an uninterrupted job would have made. Under `torchrun` the model is wrapped in
DistributedDataParallel (NCCL on GPUs, gloo on CPUs) and only rank 0 writes.
"""

from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from orthodiff.backbone.checkpoint import (
    read_checkpoint, reference_state, save_atomic, strip_prefix, unet_state,
)
from orthodiff.backbone.diffusion import GaussianDiffusion
from orthodiff.backbone.unet import PRESETS, DiffusionUNet, preset_name
from orthodiff.catalogs.tasks import PLANES
from orthodiff.devices import resolve_device
from orthodiff.errors import OrthodiffError

EMA_DECAY = 0.995
CLIP_NORM = 1.0
VAL_SERIES = 16  # validation loss over at most this many series, with fixed noise


@dataclass
class PlaneVolumes:
    """One split of one plane's volumes, read lazily a batch at a time."""

    volume: object  # xarray.DataArray (series, z, y, x), Dask-backed

    @classmethod
    def from_store(cls, store: str, plane: str, split: str) -> PlaneVolumes:
        from orthodiff.featurestore.volumes import open_volumes

        ds = open_volumes(store)
        keep = (ds.plane.values == plane) & (ds.split.values == split)
        return cls(ds.volume.isel(series=np.flatnonzero(keep)))

    def __len__(self) -> int:
        return self.volume.sizes["series"]

    def batch(self, index) -> torch.Tensor:
        values = self.volume.isel(series=np.sort(np.asarray(index))).values
        return torch.from_numpy(values.astype(np.float32))[:, None]


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class Pretrainer:
    """Trains one plane's denoiser; `run()` returns the EMA model."""

    def __init__(self, store: str, plane: str, preset: str = "tiny", steps: int = 1000, batch: int = 4,
                 out: str | Path = "backbone.pt", every: int = 500, seed: int = 0, lr: float | None = None,
                 resume: bool = False, device: str | None = None, progress: bool = True):
        if plane not in PLANES:
            raise OrthodiffError(f"--plane {plane!r}: expected one of {list(PLANES)}")
        if preset not in PRESETS:
            raise OrthodiffError(f"--preset {preset!r}: expected one of {list(PRESETS)}")
        if steps < 0 or batch < 1 or every < 1:
            raise OrthodiffError(f"--steps must be at least 0, --batch and --every at least 1 (got {steps}, {batch}, {every})")
        self.out, self.steps, self.batch, self.every, self.seed = Path(out), steps, batch, every, seed
        self.plane, self.progress, self.resume = plane, progress, resume
        if self.out.exists() and not resume:
            raise OrthodiffError(f"{self.out} exists: pass --resume to continue it, or choose another --out")
        self.config = PRESETS[preset]
        self.train = PlaneVolumes.from_store(store, plane, "train")
        self.val = PlaneVolumes.from_store(store, plane, "val")
        if not len(self.train):
            raise OrthodiffError(f"{store}: no {plane} training volumes")
        size = self.train.volume.sizes["x"]
        if size != self.config.image_size:
            raise OrthodiffError(
                f"{store}: volumes are {size} px in-plane but preset {preset!r} expects {self.config.image_size} "
                f"(ingest with --size {self.config.image_size} or pick another preset)"
            )
        self.rank, self.world = _world()
        self.device = resolve_device(device)
        self.lr = lr if lr is not None else 1e-5 * batch * self.world
        self.diffusion = GaussianDiffusion()

    def _checkpoint(self, step, model, ema, opt, generator, history) -> dict:
        buffers = dict(self.diffusion.state_dict())
        return {
            "ema": reference_state(ema, buffers), "model": reference_state(model, buffers),
            "optimizer": opt.state_dict(), "step": step, "preset": preset_name(self.config),
            "config": self.config.to_dict(), "plane": self.plane, "seed": self.seed, "lr": self.lr,
            "rng": {"torch": torch.get_rng_state(), "sampler": generator.get_state()}, "history": history,
        }

    def _restore(self, model, ema, opt, generator) -> tuple[int, dict]:
        ckpt = read_checkpoint(self.out)
        if ckpt.get("config") != self.config.to_dict() or ckpt.get("plane") != self.plane:
            raise OrthodiffError(f"{self.out}: a checkpoint of another preset or plane; cannot --resume it here")
        if "optimizer" not in ckpt or "rng" not in ckpt:
            raise OrthodiffError(f"{self.out}: holds weights only (no optimizer/RNG state); cannot --resume it")
        model.load_state_dict(strip_prefix(ckpt["model"]))
        ema.load_state_dict(unet_state(ckpt))
        opt.load_state_dict(ckpt["optimizer"])
        torch.set_rng_state(ckpt["rng"]["torch"])
        generator.set_state(ckpt["rng"]["sampler"])
        return int(ckpt["step"]), ckpt["history"]

    @torch.no_grad()
    def validation_loss(self, model: torch.nn.Module) -> float:
        if not len(self.val):
            return float("nan")
        generator = torch.Generator().manual_seed(self.seed + 10_000)
        x0 = self.val.batch(np.arange(min(len(self.val), VAL_SERIES))).to(self.device)
        return float(self.diffusion.loss(model, x0, generator))

    def run(self) -> DiffusionUNet:
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        torch.manual_seed(self.seed)
        model = DiffusionUNet(self.config).to(self.device)
        ema = copy.deepcopy(model).requires_grad_(False)
        opt = torch.optim.Adam(model.parameters(), lr=self.lr)
        generator = torch.Generator().manual_seed(self.seed * 1000 + self.rank)
        history = {"loss": [], "val_loss": []}
        first = 0
        if self.resume and self.out.exists():
            first, history = self._restore(model, ema, opt, generator)
        net = model
        if self.world > 1:
            net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[self.device] if self.device.type == "cuda" else None)
        autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda")
        columns = (TextColumn(f"pretrain {self.plane}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                   TextColumn("loss {task.fields[loss]:.4f}  {task.fields[rate]:.2f} steps/s"), TimeRemainingColumn())
        with Progress(*columns, disable=not self.progress or self.rank != 0, transient=True) as bar:
            task = bar.add_task("pretrain", total=self.steps, completed=first, loss=float("nan"), rate=0.0)
            start = time.perf_counter()
            for step in range(first + 1, self.steps + 1):
                index = torch.randint(0, len(self.train), (self.batch,), generator=generator).numpy()
                x0 = self.train.batch(index).to(self.device)
                with autocast:
                    loss = self.diffusion.loss(net, x0, generator)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP_NORM)
                opt.step()
                with torch.no_grad():
                    for e, p in zip(ema.parameters(), model.parameters()):
                        e.lerp_(p, 1 - EMA_DECAY)
                history["loss"].append(loss.item())
                rate = (step - first) / max(time.perf_counter() - start, 1e-9)
                bar.update(task, completed=step, loss=history["loss"][-1], rate=rate)
                if self.rank == 0 and (step % self.every == 0 or step == self.steps):
                    history["val_loss"].append((step, self.validation_loss(ema)))
                    save_atomic(self._checkpoint(step, model, ema, opt, generator, history), self.out)
            if self.steps == 0 and self.rank == 0:  # the initialisation itself: a random-init baseline
                history["val_loss"].append((0, self.validation_loss(ema)))
                save_atomic(self._checkpoint(0, model, ema, opt, generator, history), self.out)
        return ema.eval()


def pretrain(store: str, plane: str, preset: str = "tiny", steps: int = 1000, batch: int = 4,
             out: str | Path = "backbone.pt", **options) -> Path:
    """Pretrain (or with `resume=True` continue) one plane's backbone; returns the checkpoint path.

    Under `torchrun`, initialises the process group from the environment first.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    Pretrainer(store, plane, preset, steps, batch, out, **options).run()
    return Path(out)
