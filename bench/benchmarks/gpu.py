"""Bench for a GPU: extraction series/s (fp32, bf16, compiled) vs the reference workflow,
pretraining steps/s, peak GPU memory; one command, one table.

    .venv/bin/python bench/benchmarks/gpu.py                                  # paper preset on CUDA (~3 min on an H100)
    .venv/bin/python bench/benchmarks/gpu.py --device cpu --preset demo --series 2 --timesteps 2 --train-steps 1 --no-compile

Extraction runs as `extract` does: per timestep, batches of `--batch` series, encoder +
middle block once, all three blocks kept, on the fast path (`backbone.precision`:
channels-last 3D; bf16 = a bfloat16 network; compiled = `torch.compile` of it). The
reference workflow runs the plain fp32 model's encoder + middle block once per block (the
reference code's `get_feature`), in fp32 and under its bf16 AMP. Random weights and inputs
of the preset's shape; throughput does not depend on the values. Each row's error is the
largest over blocks of max |out - reference fp32| / max |reference fp32|. Expected numbers:
`docs/results/gpu-estimate.md`.
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import pandas as pd
import torch

from orthodiff.backbone import MIDDLE_BLOCKS, PRESETS, DiffusionUNet
from orthodiff.backbone.diffusion import NoiseScheduler
from orthodiff.backbone.pretrain import denoising_loss
from orthodiff.backbone.precision import Compiled, autocast, inference_context, inference_input, inference_model
from orthodiff.tables import frame_table, make_console


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def extraction(fn, x: torch.Tensor, timesteps: list[int], batch: int, device: torch.device) -> tuple[float, dict]:
    """Seconds to run `fn(x_t, t)` over every timestep x batch of series; the last output."""
    sync(device)
    start = time.perf_counter()
    for ts in timesteps:
        for i in range(0, len(x), batch):
            t = torch.full((len(x[i : i + batch]),), ts, device=device)
            out = fn(x[i : i + batch], t)
    sync(device)
    return time.perf_counter() - start, out


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--preset", default="paper", choices=list(PRESETS))
    parser.add_argument("--series", type=int, default=32)
    parser.add_argument("--timesteps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8, help="series per forward")
    parser.add_argument("--train-steps", type=int, default=20)
    parser.add_argument("--train-batch", type=int, default=2)
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile row")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    config = PRESETS[args.preset]
    torch.manual_seed(0)
    model = DiffusionUNet(config).to(device).eval()
    x = torch.randn(args.series, 1, config.depth, config.image_size, config.image_size, device=device)
    timesteps = torch.linspace(10, 500, args.timesteps).long().tolist()

    def ours(precision, compiled=False):
        net = inference_model(copy.deepcopy(model), precision)
        forward = Compiled(net.middle_features, precision) if compiled else net.middle_features

        def run(x_t, t):
            with torch.no_grad(), inference_context(device, precision):
                return forward(inference_input(x_t, net), t)
        return run

    def reference(precision):
        def run(x_t, t):
            with torch.no_grad(), autocast(device, precision):
                return {b: model.middle_features(x_t, t)[b] for b in MIDDLE_BLOCKS}
        return run

    variants = [("orthodiff", "fp32", ours("fp32")), ("orthodiff", "bf16", ours("bf16")),
                ("reference workflow", "fp32", reference("fp32")), ("reference workflow", "bf16 AMP", reference("bf16"))]
    if not args.no_compile:
        variants.insert(2, ("orthodiff compiled", "bf16", ours("bf16", compiled=True)))
    rows, outputs = [], {}
    for name, precision, fn in variants:
        start = time.perf_counter()
        extraction(fn, x[: args.batch], timesteps[:1], args.batch, device)  # warm-up (and compilation)
        warm = time.perf_counter() - start
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        seconds, outputs[(name, precision)] = extraction(fn, x, timesteps, args.batch, device)
        rows.append({"what": f"extraction, {name}", "precision": precision,
                     "series/s": args.series / seconds, "steps/s": None, "warm-up s": warm,
                     "peak GPU GiB": peak_gib(device)})
    base = rows[[r["what"] for r in rows].index("extraction, reference workflow")]["series/s"]
    ref_fp32 = outputs[("reference workflow", "fp32")]
    for row in rows:
        row["vs reference fp32"] = row["series/s"] / base
        out = outputs[(row["what"].removeprefix("extraction, "), row["precision"])]
        row["error"] = max(((out[b].float() - ref_fp32[b]).abs().max() / ref_fp32[b].abs().max()).item()
                           for b in MIDDLE_BLOCKS)
    fp32_error = rows[0]["error"]

    scheduler = NoiseScheduler().to(device)
    for precision in ("fp32", "bf16"):
        net = DiffusionUNet(config).to(device).train()
        opt = torch.optim.Adam(net.parameters(), 1e-4)
        batch = torch.randn(args.train_batch, 1, config.depth, config.image_size, config.image_size, device=device)

        def step():
            with autocast(device, precision):
                loss = denoising_loss(net, scheduler, batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        step()  # warm-up
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        sync(device)
        start = time.perf_counter()
        for _ in range(args.train_steps):
            step()
        sync(device)
        rows.append({"what": f"pretraining, batch {args.train_batch}", "precision": precision, "series/s": None,
                     "steps/s": args.train_steps / (time.perf_counter() - start), "warm-up s": None,
                     "peak GPU GiB": peak_gib(device), "vs reference fp32": None, "error": None})
        del net, opt

    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    title = (f"{card} (torch {torch.__version__}), preset {args.preset}, {args.series} series x {args.timesteps} "
             f"timesteps x 3 blocks, batch {args.batch}; fp32 fast path vs reference: max rel. error {fp32_error:.1e}")
    table = pd.DataFrame(rows).assign(error=lambda d: d["error"].map(lambda e: None if pd.isna(e) else f"{e:.1e}"))
    make_console().print(frame_table(table, title, float_format="{:.2f}"))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": card, "fp32_error": fp32_error, "rows": rows}, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
