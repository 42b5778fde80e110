"""Supervised training on whole volumes: Stage I fine-tuning, segmentation, baselines
(the biomarkers of predicted masks are measured by `evaluation.biomarkers`).

Unlike the heads tier, these run the backbone (or a baseline network) on the stored
volumes: `VolumeClassifier` and `VolumeSegmenter` are the estimators, `runs` the commands.
"""

from importlib import import_module

__all__ = ["VolumeClassifier", "VolumeSegmenter"]


def __getattr__(name: str):
    """``from orthodiff.supervised import VolumeClassifier``, loaded on first use."""
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.estimators"), name)
