"""Bench: does a reduced precision keep the science? bf16 vs fp32 features on the demo's sweeps.

    .venv/bin/python bench/benchmarks/precision_sweep.py --demo demo_out                # an `orthodiff demo` folder (made if missing)
    .venv/bin/python bench/benchmarks/precision_sweep.py --demo /tmp/mini --cases 40    # a quick check on a small cohort

The rule it decides (issue 33): the default precision is the fastest one whose features
keep the demo's GAP and GLP sweeps within 0.005 validation macro AUROC of fp32 on every
(plane, timestep, block) configuration and select the same top-4 configurations per plane.

From the demo folder's volumes and backbones (`orthodiff demo` is run first when the folder
has none; with `--cases N` a smaller cohort of the demo's kind is made instead), each
precision gets its own copy of the volumes; `extract` runs plane by plane with the
precisions alternated (so a changing load charges them alike), at the demo's timesteps x
3 blocks. Printed: extraction seconds per precision; the error of each block's stored
activations against fp32 (max |diff| / max |fp32| and relative L2); for each pooling, per
precision, the largest |AUROC - fp32 AUROC| over configurations, how many exceed 0.005,
and whether every plane's top 4 is the same; then the verdict.

With `--floor`, a third copy is extracted in fp32 with the plain (contiguous) memory format:
the same arithmetic as the reference code and as `extract` before its channels-last fast path,
so it differs from the fp32 copy by float rounding alone. Its AUROC differences from fp32 are
the sweep's noise floor: how far a configuration moves when nothing but the order of float
additions changes.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr
from rich.console import Console

TOLERANCE = 0.005


def demo_inputs(demo: Path, cases: int | None, console: Console) -> tuple[Path, Path, dict[str, Path]]:
    """(store with volumes, catalog, backbone per plane) of the demo folder, made when missing."""
    from orthodiff import demo as demo_module
    from orthodiff.catalogs.tasks import PLANES

    store, catalog = demo / "store.zarr", demo / "cohort" / "catalog.parquet"
    if not (catalog.exists() and (store / "volumes").exists()):
        if cases is None:
            demo_module.run_demo(demo, console)
        else:
            from orthodiff.catalogs.synth import synthesize
            from orthodiff.featurestore.ingest import ingest

            synthesize(demo_module.JOINT, cases, demo_module.SIZE, demo_module.SEED, demo / "cohort",
                       val=demo_module.VAL, test=demo_module.TEST)
            ingest(catalog, str(store), size=demo_module.INGEST_SIZE)
    backbones = {plane: demo_module.demo_backbone(demo, store, plane, None, console) for plane in PLANES}
    return store, catalog, backbones


def volumes_only(store: Path, copy: Path) -> str:
    """A copy of `store` holding its volumes and no features (nor their completion records,
    which would make `extract` skip the missing features)."""
    from orthodiff.featurestore.features import RECORDS
    from orthodiff.featurestore.store import consolidate

    if copy.exists():
        shutil.rmtree(copy)
    shutil.copytree(store, copy, ignore=lambda folder, names: ["features", RECORDS] if Path(folder) == store else [])
    consolidate(str(copy))
    return str(copy)


FLOOR = "fp32-contiguous"


@contextlib.contextmanager
def contiguous_fp32():
    """`extract` running the plain fp32 model (contiguous memory format) instead of its fast path."""
    from orthodiff.featurestore import extract as module

    fast_model, fast_input = module.inference_model, module.inference_input
    module.inference_model = lambda model, precision: model
    module.inference_input = lambda x, model: x.to(next(model.parameters()).device)
    try:
        yield
    finally:
        module.inference_model, module.inference_input = fast_model, fast_input


def block_errors(stores: dict[str, str], reference: str) -> pd.DataFrame:
    """Per precision and block: max |x - fp32| / max |fp32| and ||x - fp32|| / ||fp32|| over all planes."""
    from orthodiff import open_store

    rows = []
    trees = {p: open_store(s) for p, s in stores.items()}
    for precision, tree in trees.items():
        if precision == reference:
            continue
        for block in ("mid_0", "mid_1", "mid_2"):
            worst, diff2, ref2 = 0.0, 0.0, 0.0
            for path, node in _planes(trees[reference]):
                ref = node["activation"].sel(block=block).values.astype(np.float32)
                got = _node(tree, path)["activation"].sel(block=block).values.astype(np.float32)
                worst = max(worst, float(np.abs(got - ref).max() / np.abs(ref).max()))
                diff2 += float(((got - ref) ** 2).sum())
                ref2 += float((ref**2).sum())
            rows.append({"precision": precision, "block": block, "max error": worst, "relative L2": np.sqrt(diff2 / ref2)})
    return pd.DataFrame(rows)


def _planes(tree) -> list[tuple[str, xr.Dataset]]:
    """(path, dataset) of every features/<backbone>/<plane> node holding activations."""
    return [(node.path, node.to_dataset()) for node in tree.subtree if "activation" in node.data_vars]


def _node(tree, path: str) -> xr.Dataset:
    return tree[path.lstrip("/")].to_dataset()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, required=True, help="an `orthodiff demo` folder (made if missing)")
    parser.add_argument("--cases", type=int, default=None, help="make a cohort of this many exams instead of the demo")
    parser.add_argument("--precisions", default="fp32,bf16", help="the first is the reference")
    parser.add_argument("--poolings", default="gap,glp")
    parser.add_argument("--floor", action="store_true", help=f"also extract a {FLOOR} copy: the sweep's noise floor")
    parser.add_argument("--work", type=Path, default=None, help="where the copies go (default DEMO/precision_sweep)")
    args = parser.parse_args()
    from orthodiff.catalogs.tasks import PLANES
    from orthodiff.demo import TIMESTEPS
    from orthodiff.featurestore.extract import extract
    from orthodiff.heads.inputs import load_inputs
    from orthodiff.heads.pipeline import SMALL_COHORT_PROBE
    from orthodiff.heads.sweep import sweep, top_configs

    console = Console()
    precisions = args.precisions.split(",") + ([FLOOR] if args.floor else [])
    reference = precisions[0]
    store, catalog, backbones = demo_inputs(args.demo, args.cases, console)
    work = args.work or args.demo / "precision_sweep"
    work.mkdir(parents=True, exist_ok=True)
    stores = {p: volumes_only(store, work / f"{p}.zarr") for p in precisions}
    seconds = dict.fromkeys(precisions, 0.0)
    for plane in PLANES:
        for precision in precisions:
            start = time.perf_counter()
            with contiguous_fp32() if precision == FLOOR else contextlib.nullcontext():
                extract(stores[precision], str(backbones[plane]), plane, TIMESTEPS,
                        precision="fp32" if precision == FLOOR else precision, progress=False)
            seconds[precision] += time.perf_counter() - start
    console.print("extraction seconds (3 planes, timesteps " + ",".join(map(str, TIMESTEPS)) + " x 3 blocks): "
                  + ", ".join(f"{p} {s:.1f} s ({seconds[reference] / s:.2f}x {reference})" for p, s in seconds.items()))
    console.print(block_errors(stores, reference).to_string(index=False, float_format="{:.2e}".format))

    passing = set(precisions)
    for pooling in args.poolings.split(","):
        results, tops = {}, {}
        for precision in precisions:
            data, labels, _ = load_inputs(stores[precision], catalog)
            sweep_table = sweep(data.features, data.catalog, labels, pooling, probe_params=SMALL_COHORT_PROBE)
            results[precision] = sweep_table[sweep_table["label"] == "macro"].set_index(["plane", "timestep", "block"])["auroc"]
            tops[precision] = {plane: set(map(tuple, part[["timestep", "block"]].values))
                               for plane, part in top_configs(sweep_table).groupby("plane")}
        pd.DataFrame(results).to_csv(work / f"auroc_{pooling}.csv")  # per configuration, for a closer look
        for precision in precisions[1:]:
            diff = (results[precision] - results[reference]).abs()
            scored = int(diff.notna().sum())  # a configuration without an AUROC on one side fails the rule
            same_top = tops[precision] == tops[reference]
            ok = scored == len(diff) and bool(diff.max() <= TOLERANCE) and same_top
            passing -= set() if ok else {precision}
            console.print(f"{pooling.upper()} sweep, {precision} vs {reference}: {len(diff)} configurations ({scored} scored on both), max |diff| "
                          f"{diff.max():.4f}, mean {diff.mean():.4f}, {int((diff > TOLERANCE).sum())} beyond {TOLERANCE}; "
                          f"same top 4 on every plane: {same_top} -> {'keeps' if ok else 'does not keep'} the science")
    passing.discard(FLOOR)  # fp32 arithmetic in another order: the floor, not a candidate
    fastest = min(passing, key=lambda p: seconds[p])
    console.print(f"verdict: precisions within {TOLERANCE} on every configuration with the same selection: "
                  f"{sorted(passing)}; the fastest of them: {fastest}")


if __name__ == "__main__":
    main()
