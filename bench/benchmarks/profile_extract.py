"""Bench: where a forward of encoder + middle block spends its time, per op kind.

    .venv/bin/python bench/benchmarks/profile_extract.py                          # tiny, batch 8
    .venv/bin/python bench/benchmarks/profile_extract.py --preset paper --batch 1 # the paper's shape, one series

`torch.profiler` over `--repeats` forwards of `middle_features` (all three blocks, random
weights, one timestep) on each path: the plain model in fp32 (what `extract` ran before the
fast path), the fast path (`backbone.precision.inference_model`: channels-last, fp32 and
bf16), and the plain model under bf16 autocast. Per path: milliseconds per series-pass by
op kind (convolution, matmul/attention, normalisation, activation, layout and dtype copies,
elementwise, other), the share of each, and the convolutions' achieved GFLOP/s from their
FLOPs (`bench/benchmarks/flops.py`'s counter, restricted to convolutions) over their measured time.
Paths are profiled in `--rounds` interleaved rounds and each keeps its fastest round.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from orthodiff.backbone import PRESETS, DiffusionUNet
from orthodiff.backbone.precision import autocast, inference_context, inference_input, inference_model

KINDS = {  # op-name fragments -> kind, first match wins
    "convolution": ("conv", "mkldnn_convolution", "cudnn_convolution"),
    "matmul / attention": ("addmm", "mm", "bmm", "linear", "attention", "matmul", "flash"),
    "normalisation": ("group_norm", "native_group_norm", "layer_norm"),
    "activation": ("silu", "softmax", "gelu", "relu"),
    "layout / dtype copies": ("copy_", "to_copy", "contiguous", "clone", "cat"),
    "elementwise": ("add", "mul", "div", "sub", "exp", "cos", "sin"),
}


def kind_of(name: str) -> str:
    name = name.lower()
    return next((kind for kind, parts in KINDS.items() if any(p in name for p in parts)), "other")


def conv_flops(model: DiffusionUNet, x: torch.Tensor, t: torch.Tensor) -> int:
    """FLOPs of the forward's convolutions alone (a multiply-add counts 2)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.middle_features(x, t)
    return sum(v for op, v in counter.get_flop_counts()["Global"].items() if "convolution" in str(op))


def profile_path(run, repeats: int) -> dict[str, float]:
    """Seconds per op kind (self CPU time) over `repeats` calls of `run`, and the wall time."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        for _ in range(repeats):
            run()
        wall = time.perf_counter() - start
    seconds: dict[str, float] = {}
    for event in prof.key_averages():
        seconds[kind_of(event.key)] = seconds.get(kind_of(event.key), 0.0) + event.self_cpu_time_total / 1e6
    return {**seconds, "wall": wall}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny", choices=list(PRESETS))
    parser.add_argument("--batch", type=int, default=8, help="series per forward")
    parser.add_argument("--repeats", type=int, default=2, help="forwards per profile")
    parser.add_argument("--rounds", type=int, default=2, help="profiles per path, interleaved; the fastest is kept")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    config = PRESETS[args.preset]
    torch.manual_seed(0)
    model = DiffusionUNet(config, decoder=False).eval()
    x = torch.randn(args.batch, 1, config.depth, config.image_size, config.image_size)
    t = torch.full((args.batch,), 100)
    flops = conv_flops(model, x, t)

    def plain(precision):
        def run():
            with torch.no_grad(), autocast("cpu", precision):
                return model.middle_features(x, t)
        return run

    def fast(precision):
        net = inference_model(copy.deepcopy(model), precision)

        def run():
            with torch.no_grad(), inference_context("cpu", precision):
                return net.middle_features(inference_input(x, net), t)
        return run

    paths = {"fp32 (plain)": plain("fp32"), "fp32 channels-last": fast("fp32"),
             "bf16 autocast (plain)": plain("bf16"), "bf16 channels-last": fast("bf16")}
    passes = args.repeats * args.batch
    print(f"preset {args.preset} ({config.depth}x{config.image_size}x{config.image_size}), batch {args.batch}, "
          f"{args.repeats} forwards per path, torch threads {torch.get_num_threads()}; "
          f"convolutions {flops / args.batch / 1e9:.2f} GFLOP per series-pass")
    for run in paths.values():
        run()  # warm-up
    results = {}
    for _ in range(args.rounds):  # interleaved, so a changing load charges every path alike
        for name, run in paths.items():
            result = profile_path(run, args.repeats)
            if name not in results or result["wall"] < results[name]["wall"]:
                results[name] = result
    kinds = [*KINDS, "other"]
    print(f"{'ms per series-pass':24s}" + "".join(f"{n:>24s}" for n in paths))
    for kind in kinds:
        print(f"{kind:24s}" + "".join(f"{1e3 * r.get(kind, 0.0) / passes:16.1f} ({r.get(kind, 0.0) / r['wall']:4.0%})"
                                       for r in results.values()))
    print(f"{'wall':24s}" + "".join(f"{1e3 * r['wall'] / passes:24.1f}" for r in results.values()))
    print(f"{'conv GFLOP/s':24s}" + "".join(f"{flops * args.repeats / max(r.get('convolution', 0.0), 1e-9) / 1e9:24.0f}"
                                           for r in results.values()))
    print(f"{'speed-up vs fp32 plain':24s}" + "".join(f"{results['fp32 (plain)']['wall'] / r['wall']:23.2f}x"
                                                     for r in results.values()))
    return results


if __name__ == "__main__":
    main()
