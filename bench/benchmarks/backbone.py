"""Bench: one-pass extraction vs the reference workflow, precision, FLOP/s, batching, page faults.

    .venv/bin/python bench/benchmarks/backbone.py --preset tiny                       # every row below
    .venv/bin/python bench/benchmarks/backbone.py --preset paper --timesteps 1 --series 1 --no-full
    .venv/bin/python bench/benchmarks/backbone.py --preset small --train-steps 3      # + pretraining steps/s

Rows, all on the same random weights and inputs:
- one pass: encoder + middle block once per (series, timestep), all three blocks kept.
- reference workflow: encoder + middle block once per block (the reference code's
  `get_feature` stops after the middle block and returns one block per call).
- full network per block: the whole U-Net once per block (a forward hook), a separate
  and much slower baseline, not the reference's workflow.
- precision: the one pass under bf16 / fp16 autocast, its speed and its error against
  fp32 per block (max |diff| / max |fp32|, and the relative L2 error).
- FLOPs of encoder + middle block per series per timestep (`torch.utils.flop_counter`),
  achieved FLOP/s as a fraction of a large matmul's at the same precision.
- batching: series per forward 1 vs `--batch`, time per (series, timestep).
- allocator: minor page faults and system-time share of a pass in a fresh process, with
  glibc defaults vs `reuse_freed_memory()` (what `extract` applies).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from memory import peak_rss_mib
from orthodiff.backbone import MIDDLE_BLOCKS, PRESETS, DiffusionUNet
from orthodiff.backbone.allocator import reuse_freed_memory
from orthodiff.backbone.diffusion import NoiseScheduler
from orthodiff.backbone.pretrain import denoising_loss
from orthodiff.backbone.precision import autocast


def one_pass(model: DiffusionUNet, x: torch.Tensor, t: torch.Tensor, precision: str = "fp32") -> dict:
    with torch.no_grad(), autocast(x.device, precision):
        return {b: v.float() for b, v in model.middle_features(x, t).items()}


def reference_workflow(model: DiffusionUNet, x: torch.Tensor, t: torch.Tensor) -> dict:
    """Encoder + whole middle block once per block, keeping that block."""
    with torch.no_grad():
        return {b: model.middle_features(x, t)[b] for b in MIDDLE_BLOCKS}


def full_network_per_block(model: DiffusionUNet, x: torch.Tensor, t: torch.Tensor) -> dict:
    out = {}
    with torch.no_grad():
        for i, block in enumerate(MIDDLE_BLOCKS):
            hook = model.middle_block[i].register_forward_hook(lambda m, a, o, b=block: out.__setitem__(b, o))
            model(x, t)
            hook.remove()
    return out


def timed(fn, inputs) -> tuple[float, list]:
    start = time.perf_counter()
    results = [fn(*args) for args in inputs]
    return time.perf_counter() - start, results


def paired(fns: list, inputs) -> tuple[list[float], list[list]]:
    """Total seconds and outputs of each of `fns` over `inputs`, interleaved input by input,
    so a machine whose load changes charges all of them alike."""
    seconds, outputs = [0.0] * len(fns), [[] for _ in fns]
    for args in inputs:
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            outputs[i].append(fn(*args))
            seconds[i] += time.perf_counter() - start
    return seconds, outputs


def matmul_peak(precision: str, n: int = 2048, reps: int = 4) -> float:
    """FLOP/s of an n x n x n matmul (under the same autocast), best of `reps`."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    best = float("inf")
    with autocast("cpu", precision):
        a @ b
        for _ in range(reps):
            start = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def allocator_child(preset: str, reuse: bool) -> None:
    """In a fresh process: page faults and system time of 3 passes after a warm-up."""
    if reuse:
        reuse_freed_memory()
    config = PRESETS[preset]
    model = DiffusionUNet(config).eval()
    x = torch.randn(8, 1, config.depth, config.image_size, config.image_size)
    t = torch.full((8,), 100)
    one_pass(model, x, t)
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for _ in range(3):
        one_pass(model, x, t)
    after = resource.getrusage(resource.RUSAGE_SELF)
    user, system = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
    print(json.dumps({"faults": (after.ru_minflt - before.ru_minflt) / 3, "sys_share": system / (user + system),
                      "wall": (time.perf_counter() - start) / 3}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny", choices=list(PRESETS))
    parser.add_argument("--timesteps", type=int, default=8, help="timesteps per series")
    parser.add_argument("--series", type=int, default=2, help="series (each run at every timestep)")
    parser.add_argument("--batch", type=int, default=8, help="series per forward in the batching row")
    parser.add_argument("--no-full", action="store_true", help="skip the full-network baseline (slow at paper)")
    parser.add_argument("--precisions", default="bf16", help="reduced precisions to compare with fp32")
    parser.add_argument("--train-steps", type=int, default=0, help="also time this many pretraining steps (batch 4)")
    parser.add_argument("--allocator-child", choices=["plain", "reuse"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.allocator_child:
        return allocator_child(args.preset, args.allocator_child == "reuse")

    reuse_freed_memory()  # as `extract` runs; the allocator row compares both in fresh processes
    config = PRESETS[args.preset]
    torch.manual_seed(0)
    model = DiffusionUNet(config).eval()
    shape = (1, 1, config.depth, config.image_size, config.image_size)
    times = torch.linspace(10, 500, args.timesteps).long()
    inputs = [(torch.randn(shape), t[None]) for _ in range(args.series) for t in times]
    passes = len(inputs)
    print(f"preset {args.preset} ({config.depth}x{config.image_size}x{config.image_size}, "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters), {args.series} series x "
          f"{args.timesteps} timesteps x 3 blocks, batch 1, torch threads {torch.get_num_threads()}")
    one_pass(model, *inputs[0])  # warm-up
    (t_ours, t_ref), (ours, ref) = paired([lambda x, t: one_pass(model, x, t),
                                           lambda x, t: reference_workflow(model, x, t)], inputs)
    equal = all(torch.equal(a[b], r[b]) for a, r in zip(ours, ref) for b in MIDDLE_BLOCKS)
    print(f"one pass {t_ours:.2f} s vs reference workflow (encoder + middle once per block) {t_ref:.2f} s: "
          f"{t_ref / t_ours:.2f}x, outputs equal: {equal}")
    if not args.no_full:
        t_full, full = timed(lambda x, t: full_network_per_block(model, x, t), inputs)
        equal = all(torch.equal(a[b], r[b]) for a, r in zip(ours, full) for b in MIDDLE_BLOCKS)
        print(f"  separate baseline, full network once per block: {t_full:.2f} s ({t_full / t_ours:.2f}x), "
              f"outputs equal: {equal}")

    with FlopCounterMode(display=False) as counter:
        one_pass(model, *inputs[0])
    flops = counter.get_total_flops()
    print(f"encoder + middle: {flops / 1e9:.2f} GFLOP per series per timestep")
    per_pass = {"fp32": t_ours / passes}
    for precision in ["fp32", *[p for p in args.precisions.split(",") if p]]:
        if precision != "fp32":
            one_pass(model, *inputs[0], precision)
            (t_32, t_p), (_, low) = paired([lambda x, t: one_pass(model, x, t),
                                            lambda x, t, p=precision: one_pass(model, x, t, p)], inputs)
            per_pass[precision] = t_p / passes * per_pass["fp32"] / (t_32 / passes)  # scaled to the first fp32 run
            errors = []
            for b in MIDDLE_BLOCKS:
                ref_b, low_b = torch.stack([o[b] for o in ours]), torch.stack([o[b] for o in low])
                diff = (low_b - ref_b).abs().max() / ref_b.abs().max()
                rel = (low_b - ref_b).norm() / ref_b.norm()
                errors.append(f"{b} max {diff:.1e} rel {rel:.1e}")
            print(f"{precision}: {per_pass[precision]:.3f} s per pass ({per_pass['fp32'] / per_pass[precision]:.2f}x fp32); "
                  f"error vs fp32: {'; '.join(errors)}")
        peak = matmul_peak(precision)
        achieved = flops / per_pass[precision]
        print(f"{precision}: achieved {achieved / 1e9:.1f} GFLOP/s, matmul peak {peak / 1e9:.1f} GFLOP/s "
              f"({achieved / peak:.0%})")

    if args.batch > 1:
        x = torch.randn(args.batch, *shape[1:])
        t = torch.full((args.batch,), int(times[len(times) // 2]))
        one_pass(model, x, t)
        t_batched, _ = timed(lambda: one_pass(model, x, t), [()])
        t_single, _ = timed(lambda i: one_pass(model, x[i : i + 1], t[i : i + 1]), [(i,) for i in range(args.batch)])
        print(f"batching: {t_single / args.batch:.3f} s per series at batch 1, {t_batched / args.batch:.3f} s at "
              f"batch {args.batch} ({t_single / t_batched:.2f}x)")

    runs = {}
    for mode in ("plain", "reuse"):
        out = subprocess.run([sys.executable, __file__, "--preset", args.preset, "--allocator-child", mode],
                             capture_output=True, text=True, check=True).stdout
        runs[mode] = json.loads(out.strip().splitlines()[-1])
    print(f"allocator, batch-8 pass: glibc defaults {runs['plain']['faults']:.0f} page faults, "
          f"{runs['plain']['sys_share']:.0%} system time, {runs['plain']['wall']:.2f} s; kept pages "
          f"{runs['reuse']['faults']:.0f} faults, {runs['reuse']['sys_share']:.0%} system, {runs['reuse']['wall']:.2f} s")

    if args.train_steps:
        scheduler, opt = NoiseScheduler(), torch.optim.Adam(model.train().parameters(), 1e-4)
        batch = torch.randn(4, 1, config.depth, config.image_size, config.image_size)
        start = time.perf_counter()
        for _ in range(args.train_steps):
            loss = denoising_loss(model, scheduler, batch)
            opt.zero_grad()
            loss.backward()
            opt.step()
        print(f"pretraining, batch 4: {args.train_steps / (time.perf_counter() - start):.3f} steps/s")
    print(f"peak resident memory: {peak_rss_mib() / 1024:.2f} GiB")


if __name__ == "__main__":
    main()
