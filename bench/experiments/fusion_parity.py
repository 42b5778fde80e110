"""Bench: test macro AUROC / CF1 / OF1 of the fusion heads on synthetic pooled features.

A small synthetic cohort (``heads.synthetic``: activations whose channels carry the labels,
EHR weakly related), GAP Stage I, then each fusion head at one shared small-cohort setting
(fusion settings the installed ``FusionHead`` lacks are dropped):

    .venv/bin/python bench/experiments/fusion_parity.py --exams 400
"""

from __future__ import annotations

import argparse
import inspect
import time

import numpy as np

from orthodiff.heads.fusion import FusionHead
from orthodiff.heads.metrics import summary
from orthodiff.heads.protocol import FusionData, TwoStageFusion, stage_one_probe, stage_two_head
from orthodiff.heads.synthetic import synthetic_catalog, synthetic_features

LABELS = ["ACL", "PCL", "MM", "LM", "MCL", "LCL", "PD", "EFFU"]
METHODS = ("concat", "linear_concat", "cross_attention", "mpae", "ehr_only")
# one small-cohort setting for every head (the paper's 5e-5 x 5 epochs needs thousands of exams)
FUSION = {"epochs": 30, "lr": 3e-3, "batch_size": 16, "weight_decay": 1e-2,
          "plane_epochs": 30, "plane_lr": 3e-3, "gate_epochs": 200}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exams", type=int, default=400)
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    catalog = synthetic_catalog(args.exams, LABELS, seed=args.seed)
    data = synthetic_features(catalog, LABELS, channels=args.channels, timesteps=(100,), blocks=("mid_1",), seed=args.seed)
    features = {p: ds.activation.sel(timestep=100, block="mid_1") for p, ds in data.items()}
    train, test = catalog[catalog.split == "train"], catalog[catalog.split == "test"]
    accepted = inspect.signature(FusionHead).parameters
    fusion = {k: v for k, v in FUSION.items() if k in accepted}
    probe = {"epochs": 30, "lr": 3e-3, "batch_size": 16}
    print("| method | macro AUROC | CF1 | OF1 | seconds |\n|---|---|---|---|---|")
    for method in METHODS:
        start = time.perf_counter()
        model = TwoStageFusion(stage_one_probe("gap", probe, args.seed), stage_two_head(method, fusion, args.seed))
        X = FusionData(features, train)
        pred = model.fit(X, X.labels(LABELS)).predict_exams(FusionData(features, test))
        s = summary(pred[LABELS].to_numpy(), pred[[f"p_{c}" for c in LABELS]].to_numpy())
        print(f"| {method} | {s['macro_auroc']:.3f} | {s['CF1']:.3f} | {s['OF1']:.3f} | {time.perf_counter() - start:.1f} |")
    print(f"({len(test.case_id.unique())} test exams, {np.mean(catalog.split == 'train'):.0%} of series in train)")


if __name__ == "__main__":
    main()
