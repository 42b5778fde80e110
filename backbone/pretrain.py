"""Per-plane diffusion pretraining on the store's volumes (`orthodiff pretrain`).

One backbone per plane, trained on that plane's training-split volumes read lazily from the
store. The caller opens them (`orthodiff.featurestore.volumes.open_volumes`), so the backbone
knows nothing about stores. Adam at the reference rate (1e-5 x batch x processes), EMA 0.995,
gradient clipping, checkpoints in the reference layout written atomically every `every` steps together with
the optimizer, EMA, step and every rank's random-generator states, so `resume` (with the
same number of processes) continues exactly the run that an uninterrupted job would have made. Under `torchrun` the model is wrapped in
DistributedDataParallel (NCCL on GPUs, gloo on CPUs) and only rank 0 writes.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
import xarray as xr

from orthodiff.backbone.checkpoint import (
    read_checkpoint, reference_state, save_atomic, strip_prefix, unet_state,
)
from orthodiff.backbone.diffusion import NoiseScheduler
from orthodiff.backbone.unet import PRESETS, DiffusionUNet, preset_name
from orthodiff.catalogs.tasks import PLANES
from orthodiff.devices import resolve_device
from orthodiff.errors import OrthodiffError
from orthodiff.progress import Advance, maybe_progress

EMA_DECAY = 0.995
CLIP_NORM = 1.0
VAL_SERIES = 16  # validation loss over at most this many series, with fixed noise


def denoising_loss(model: torch.nn.Module, scheduler: NoiseScheduler, x0: torch.Tensor,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Epsilon-prediction L2 loss at uniformly drawn timesteps.

    Timesteps and noise are drawn on the CPU from `generator`, so a run is reproducible
    (and resumable) whatever the device.
    """
    t = torch.randint(0, scheduler.num_train_timesteps, (x0.shape[0],), generator=generator).to(x0.device)
    noise = torch.randn(x0.shape, generator=generator).to(x0.device, x0.dtype)
    return F.mse_loss(model(scheduler.add_noise(x0, noise, t), t), noise)


@dataclass
class PlaneVolumes:
    """One split of one plane's volumes, read lazily a batch at a time."""

    volume: object  # xarray.DataArray (series, z, y, x), Dask-backed

    @classmethod
    def select(cls, ds, plane: str, split: str, only: set[str] | None = None) -> PlaneVolumes:
        """One plane and split of `ds` (the `open_volumes` dataset); `only`: if given, keep
        just these series ids (e.g. the healthy ones)."""
        keep = (ds.plane.values == plane) & (ds.split.values == split)
        if only is not None:
            keep &= np.isin(ds.series.values, list(only))
        return cls(ds.volume.isel(series=np.flatnonzero(keep)))

    def __len__(self) -> int:
        return self.volume.sizes["series"]

    def batch(self, index) -> torch.Tensor:
        values = self.volume.isel(series=np.sort(np.asarray(index))).values
        return torch.from_numpy(values.astype(np.float32))[:, None]


def healthy_series(catalog: str | Path) -> set[str]:
    """Series of exams whose labels are all 0 in `catalog` (the persona backbone's data)."""
    from orthodiff.catalogs.cohort import label_columns, read_catalog

    df = read_catalog(catalog)
    labels = label_columns(df)
    sick = df.groupby("case_id")[labels].transform("max").fillna(1).to_numpy().any(axis=1)
    return set(df.loc[~sick, "series_id"].astype(str))


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class Pretrainer:
    """Trains one plane's denoiser; `run()` returns the EMA model."""

    def __init__(self, volumes: xr.Dataset, plane: str, preset: str = "tiny", steps: int = 1000, batch: int = 4,
                 out: str | Path = "backbone.pt", every: int = 500, seed: int = 0, lr: float | None = None,
                 resume: bool = False, device: str | None = None, progress: bool | Advance = True,
                 healthy_catalog: str | Path | None = None):
        if plane not in PLANES:
            raise OrthodiffError(f"--plane {plane!r}: expected one of {list(PLANES)}")
        if preset not in PRESETS:
            raise OrthodiffError(f"--preset {preset!r}: expected one of {list(PRESETS)}")
        if steps < 0 or batch < 1 or every < 1:
            raise OrthodiffError(f"--steps must be at least 0, --batch and --every at least 1 (got {steps}, {batch}, {every})")
        self.out, self.steps, self.batch, self.every, self.seed = Path(out), steps, batch, every, seed
        # str(): a CLI Plane enum member would make the checkpoint unreadable under weights_only=True
        self.plane, self.progress, self.resume = str(plane), progress, resume
        if self.out.exists() and not resume:
            raise OrthodiffError(f"{self.out} exists: pass --resume to continue it, or choose another --out")
        self.config = PRESETS[preset]
        only = healthy_series(healthy_catalog) if healthy_catalog is not None else None
        store = volumes.encoding.get("source", "the volumes")
        self.train = PlaneVolumes.select(volumes, plane, "train", only)
        self.val = PlaneVolumes.select(volumes, plane, "val", only)
        if not len(self.train):
            raise OrthodiffError(f"{store}: no {plane} training volumes" + (" of healthy exams" if only is not None else ""))
        self.healthy = None if only is None else {"catalog": str(healthy_catalog), "train_series": len(self.train)}
        size = self.train.volume.sizes["x"]
        if size != self.config.image_size:
            raise OrthodiffError(
                f"{store}: volumes are {size} px in-plane but preset {preset!r} expects {self.config.image_size} "
                f"(ingest with --size {self.config.image_size} or pick another preset)"
            )
        self.rank, self.world = _world()
        self.device = resolve_device(device)
        self.lr = lr if lr is not None else 1e-5 * batch * self.world
        self.scheduler = NoiseScheduler()

    def _rng_states(self, generator) -> list[dict]:
        """Every rank's random-generator states (each rank draws its own batches and noise);
        a collective call: all ranks take part."""
        state = {"torch": torch.get_rng_state(), "sampler": generator.get_state()}
        if self.world == 1:
            return [state]
        states = [None] * self.world
        dist.all_gather_object(states, state)
        return states

    def _checkpoint(self, step, model, ema, opt, rng: list[dict], history) -> dict:
        buffers = dict(self.scheduler.state_dict())
        return {
            "ema": reference_state(ema, buffers), "model": reference_state(model, buffers),
            "optimizer": opt.state_dict(), "step": step, "preset": preset_name(self.config),
            "config": self.config.to_dict(), "plane": self.plane, "seed": self.seed, "lr": self.lr,
            "rng": {"ranks": rng}, "history": history,
            "healthy": self.healthy,  # None: trained on all exams; else the healthy series count used
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
        ranks = ckpt["rng"].get("ranks", [ckpt["rng"]])  # checkpoints before per-rank states hold one
        if len(ranks) != self.world:
            raise OrthodiffError(
                f"{self.out}: written by {len(ranks)} process(es), resumed with {self.world}: each process continues "
                f"its own batches and noise, so resume with {len(ranks)} (torchrun --nproc_per_node {len(ranks)})"
            )
        torch.set_rng_state(ranks[self.rank]["torch"])
        generator.set_state(ranks[self.rank]["sampler"])
        return int(ckpt["step"]), ckpt["history"]

    @torch.no_grad()
    def validation_loss(self, model: torch.nn.Module) -> float:
        if not len(self.val):
            return float("nan")
        generator = torch.Generator().manual_seed(self.seed + 10_000)
        x0 = self.val.batch(np.arange(min(len(self.val), VAL_SERIES))).to(self.device)
        return float(denoising_loss(model, self.scheduler, x0, generator))

    def run(self) -> DiffusionUNet:
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
        with maybe_progress(self.progress if self.rank == 0 else False, f"pretrain {self.plane}", self.steps - first) as advance:
            for step in range(first + 1, self.steps + 1):
                index = torch.randint(0, len(self.train), (self.batch,), generator=generator).numpy()
                x0 = self.train.batch(index).to(self.device)
                with autocast:
                    loss = denoising_loss(net, self.scheduler, x0, generator)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP_NORM)
                opt.step()
                with torch.no_grad():
                    for e, p in zip(ema.parameters(), model.parameters()):
                        e.lerp_(p, 1 - EMA_DECAY)
                history["loss"].append(loss.item())
                advance(loss=history["loss"][-1])
                if step % self.every == 0 or step == self.steps:
                    rng = self._rng_states(generator)
                    if self.rank == 0:
                        history["val_loss"].append((step, self.validation_loss(ema)))
                        save_atomic(self._checkpoint(step, model, ema, opt, rng, history), self.out)
            if self.steps == 0:  # the initialisation itself: a random-init baseline
                rng = self._rng_states(generator)
                if self.rank == 0:
                    history["val_loss"].append((0, self.validation_loss(ema)))
                    save_atomic(self._checkpoint(0, model, ema, opt, rng, history), self.out)
        return ema.eval()


def pretrain(volumes: xr.Dataset, plane: str, preset: str = "tiny", steps: int = 1000, batch: int = 4,
             out: str | Path = "backbone.pt", **options) -> Path:
    """Pretrain (or with `resume=True` continue) one plane's backbone on `volumes` (the
    `open_volumes` dataset of a store); returns the checkpoint path.

    Under `torchrun`, initialises the process group from the environment first.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    Pretrainer(volumes, plane, preset, steps, batch, out, **options).run()
    return Path(out)
