"""Bench: Stage I fine-tuning and segmentation training steps/s and peak memory, per preset.

    .venv/bin/python bench/benchmarks/supervised_steps.py --presets tiny,small --steps 4

Each (preset, task) runs in a fresh process: a randomly initialised backbone of the preset,
random volumes (and masks), one warm-up step, then `--steps` timed optimizer steps of
`--batch` series through `orthodiff.training.train` exactly as `finetune` and `segment train`
run them (SAP head; light decoder, cross-entropy + Dice). Peak RSS is read from the kernel.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import numpy as np
import torch

from memory import peak_rss_mib

TASKS = ("finetune", "segment")

def child(preset: str, task: str, steps: int, batch: int) -> dict:
    from orthodiff.backbone import PRESETS, DiffusionUNet
    from orthodiff.training import train
    from orthodiff.supervised.estimators import encoder_head_groups, dice_ce
    from orthodiff.supervised.networks import EncoderClassifier, EncoderSegmenter, NoisedEncoder

    torch.set_num_threads(2)
    config = PRESETS[preset]
    torch.manual_seed(0)
    encoder = NoisedEncoder(DiffusionUNet(config), 10, "mid_2")
    rng = np.random.default_rng(0)

    def data(n):
        x = rng.uniform(-1, 1, (n, 16, config.image_size, config.image_size)).astype(np.float16)
        keys = np.arange(n, dtype=np.int64)
        if task == "finetune":
            return [x, keys], rng.integers(0, 2, (n, 8)).astype(np.float32)
        return [x, keys], rng.integers(0, 12, (n, 16, config.image_size, config.image_size)).astype(np.uint8)

    if task == "finetune":
        net, loss, lr = EncoderClassifier(encoder, "sap", 8), {}, 1e-5
    else:
        net, loss, lr = EncoderSegmenter(encoder, 12), {"loss": dice_ce()}, 1e-4

    def run(n):
        inputs, y = data(n)
        train(net, inputs, y, None, epochs=1, lr=lr, batch_size=batch, random_state=0,
              param_groups=encoder_head_groups(net, lr, 1e-3), **loss)

    run(batch)  # warm-up: allocator, kernels
    start = time.perf_counter()
    run(steps * batch)
    seconds = time.perf_counter() - start
    return {"preset": preset, "task": task, "steps_per_s": steps / seconds, "s_per_step": seconds / steps,
            "peak_mib": peak_rss_mib(),
            "trainable_m": sum(p.numel() for p in net.parameters() if p.requires_grad) / 1e6}

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="tiny,small")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--child", nargs=2, metavar=("PRESET", "TASK"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child, args.steps, args.batch)))
        return
    print(f"{'preset':<7} {'task':<9} {'steps/s':>8} {'s/step':>7} {'peak MiB':>9} {'trainable M':>12}  (batch {args.batch}, 2 CPU threads)")
    for preset in args.presets.split(","):
        for task in TASKS:
            cmd = [sys.executable, __file__, "--child", preset, task, "--steps", str(args.steps), "--batch", str(args.batch)]
            r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
            print(f"{preset:<7} {task:<9} {r['steps_per_s']:>8.3f} {r['s_per_step']:>7.2f} {r['peak_mib']:>9.0f} {r['trainable_m']:>12.2f}")

if __name__ == "__main__":
    main()
