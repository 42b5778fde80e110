"""Bench: the knee phantom's picture (README figure) and its generation time per exam.

    .venv/bin/python bench/phantom.py figure docs/phantom.png
    .venv/bin/python bench/phantom.py time --sizes 64 256 --exams 6 3
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from orthodiff.catalogs.synth import Exam, image_series, synthesize
from orthodiff.catalogs.tasks import structures

# (plane, structure values whose area picks the slice shown)
VIEWS = (("sagittal", (10, 11)), ("coronal", (8, 9, 5, 6)), ("axial", (3, 7)))


def figure(png: Path, size: int = 256, seed: int = 0) -> Path:
    """Sagittal, coronal and axial slices of a normal and an ACL-torn knee (same body, a
    fat-suppressed proton-density protocol), each plain and with its mask, and a legend of the
    11 structures."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    names = {s.value: s.name for s in structures("knee").structures}
    colours = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#e377c2", "#ffd700", "#00ced1", "#8b4513",
               "#7cfc00", "#ff00ff"]
    cmap = ListedColormap(colours)
    series = tuple((plane, 0) for plane, _ in VIEWS)
    exams = {
        "normal": Exam(7, "knee", {}, "center_2", 3.0, series),
        "ACL tear (bone bruises, effusion)": Exam(7, "knee", {"ACL": 1, "EFFU": 1}, "center_2", 3.0, series),
    }
    fig, axes = plt.subplots(2, 6, figsize=(16, 6.4))
    slices: dict[str, int] = {}  # chosen on the normal knee, the same for the torn one
    for row, (title, exam) in enumerate(exams.items()):
        for col, (plane, values) in enumerate(VIEWS):
            out = image_series(exam, plane, 0, size, seed)
            k = slices.setdefault(plane, int(np.argmax([np.isin(m, values).sum() for m in out["mask"]])))
            crop = slice(size // 8, size - size // 8)  # the knee fills the central 3/4 of the field of view
            image, mask = out["image"][k][crop, crop], out["mask"][k][crop, crop]
            for ax, overlay in zip(axes[row, 2 * col : 2 * col + 2], (False, True)):
                ax.imshow(image, cmap="gray", vmin=0, vmax=np.percentile(image, 99.5))
                if overlay:
                    ax.imshow(np.ma.masked_equal(mask, 0) - 1, cmap=cmap, vmin=0, vmax=10, alpha=0.55, interpolation="nearest")
                ax.set_title(f"{title + ': ' if col == 0 and not overlay else ''}{plane}{' + mask' if overlay else ''}", fontsize=9)
                ax.axis("off")
    handles = [Patch(color=colours[v - 1], label=f"{v} {names[v]}") for v in sorted(names)]
    fig.legend(handles=handles, loc="lower center", ncol=6, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(png, dpi=72)
    plt.close(fig)
    from PIL import Image

    Image.open(png).convert("RGB").quantize(256, method=Image.Quantize.FASTOCTREE).save(png, optimize=True)  # small enough to commit
    return png


def timing(sizes: list[int], exams: list[int]) -> None:
    for size, n in zip(sizes, exams):
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            synthesize("knee", n, size, 0, Path(tmp) / "cohort", progress=False, workers=1)
            print(f"synth knee --size {size}: {(time.perf_counter() - start) / n:.2f} s per exam ({n} exams, 1 process)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    fig = sub.add_parser("figure")
    fig.add_argument("png", type=Path)
    fig.add_argument("--size", type=int, default=256)
    tim = sub.add_parser("time")
    tim.add_argument("--sizes", type=int, nargs="+", default=[64, 256])
    tim.add_argument("--exams", type=int, nargs="+", default=[6, 3])
    args = parser.parse_args()
    if args.command == "figure":
        print(figure(args.png, args.size))
    else:
        timing(args.sizes, args.exams)


if __name__ == "__main__":
    main()
