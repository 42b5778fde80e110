"""`mirp` as an oracle for `ibsi.roi_features`: the same ROI, discretisation and voxel size,
features matched by mirp's names (the bench and the tests use it; nothing else does).

mirp is the optional extra `orthodiff[mirp]` (it brings itk and PyWavelets): imported only
here, with an error naming the extra. The image and mask go to mirp as NIfTI files written
with the voxel size, since mirp takes numpy arrays as 1 mm voxels.
"""

from __future__ import annotations

import logging
import re
import tempfile
import warnings
from pathlib import Path

import numpy as np

from orthodiff.errors import OrthodiffError

MIRP_FAMILIES = ["morphology", "statistics", "intensity_histogram", "glcm", "glrlm", "glszm", "gldzm", "ngtdm", "ngldm"]
NAME = re.compile(r"^((?:stat|ih|morph|cm|rlm|szm|dzm|ngt|ngl)_[a-z0-9_]+?)(?:_d1|_fbn|_fbs|_3d|_a0|$)")


def mirp_features(image: np.ndarray, mask: np.ndarray, spacing=(1.0, 1.0, 1.0), bins: int = 32,
                  discretisation: str = "fixed_bin_number", bin_width: float | None = None) -> dict[str, float]:
    """mirp's features of `image` (z, y, x) in `mask` with voxel size `spacing` (z, y, x),
    texture as `roi_features` computes it (3D, directions merged, distance 1), Moran's I and
    Geary's C exact (no sampling), keyed by the names `roi_features` uses."""
    try:
        import nibabel as nib
        from mirp import extract_features
    except ImportError as error:
        raise OrthodiffError(f"the mirp oracle needs the optional extra: pip install 'orthodiff[mirp]' ({error})") from None
    texture = dict(glcm_spatial_method="3d_volume_merge", glrlm_spatial_method="3d_volume_merge", glszm_spatial_method="3d",
                   gldzm_spatial_method="3d", ngtdm_spatial_method="3d", ngldm_spatial_method="3d", glcm_distance=1.0)
    # mirp's fixed bin size needs a lower bound: a re-segmentation range from the ROI's minimum keeps every voxel
    lowest = float(image.astype(np.float32)[mask].min())
    levels = (dict(base_discretisation_method="fixed_bin_size", base_discretisation_bin_width=bin_width,
                   resegmentation_intensity_range=[lowest, np.inf]) if discretisation == "fixed_bin_size" else
              dict(base_discretisation_method="fixed_bin_number", base_discretisation_n_bins=bins))
    affine = np.diag([*map(float, spacing[::-1]), 1.0])  # NIfTI axes are (x, y, z)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.disable(logging.INFO)
        paths = [str(Path(tmp) / name) for name in ("image.nii.gz", "mask.nii.gz")]
        for path, data in zip(paths, (image.astype(np.float32), mask.astype(np.uint8))):
            nib.save(nib.Nifti1Image(np.ascontiguousarray(data.transpose(2, 1, 0)), affine), path)
        try:
            table = extract_features(image=paths[0], mask=paths[1], image_modality="mr", base_feature_families=MIRP_FAMILIES,
                                     no_approximation=True, ibsi_compliant=False, **levels, **texture)[0]
        finally:
            logging.disable(logging.NOTSET)
    values = {}
    for column, value in table.iloc[0].items():
        m = NAME.match(column)
        if m and isinstance(value, (int, float, np.floating, np.integer)):
            values.setdefault(m.group(1), float(value))
    return values
