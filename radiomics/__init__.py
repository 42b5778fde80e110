"""IBSI radiomic features per ROI of the image, its healthy persona and the residual.

`ibsi` computes the families (first order, intensity histogram, morphology, GLCM, GLRLM,
GLSZM, NGTDM, NGLDM) for one ROI, vectorised with numpy/scipy and validated against `mirp`
(`bench/benchmarks/radiomics.py`); `store` writes `radiomics/<settings id>/<plane>/value(series, roi,
source, feature)` with the extract machinery.
"""
