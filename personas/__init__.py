"""Healthy personas: a backbone trained on healthy exams inpaints regions of interest.

`rois` defines the regions (the paper's central box split into an n x n x n grid, or the
anatomical structure masks), `inpaint` is the RePaint-style sampler, `store` persists
`personas/<backbone id>/<plane>/persona(series, z, y, x)` with its ROI mask, and `fidelity`
scores personas (SSIM/MSE on healthy exams, residual localisation on lesions).
"""
