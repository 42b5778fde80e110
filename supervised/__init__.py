"""Supervised training on whole volumes: Stage I fine-tuning, segmentation, baselines, biomarkers.

Unlike the heads tier, these run the backbone (or a baseline network) on the stored
volumes: `VolumeClassifier` and `VolumeSegmenter` are the estimators, `runs` the commands.
"""
