"""IBSI radiomic features per ROI of the image, its healthy persona and the residual.

`ibsi` computes the families (first order, intensity histogram, morphology, GLCM, GLRLM,
GLSZM, GLDZM, NGTDM, NGLDM) for one ROI, vectorised with numpy/scipy, morphology
(`morphology`) in mm from the voxel size; `oracle` runs `mirp` on the same ROI for the tests
and `bench/benchmarks/radiomics.py` (the extra `orthodiff[mirp]`); `store` writes
`radiomics/<settings id>/<plane>/value(series, roi, source, feature)` with the extract machinery.
"""
