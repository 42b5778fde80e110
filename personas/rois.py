"""Regions of interest as integer label volumes: 0 outside, 1..J for the J ROIs.

`box` is the paper's central box (50% of depth x 30% of height x 50% of width, sec. 5.2.1)
split into an n x n x n grid of cells (sec. 5.2.2); `structures` uses the anatomical masks
stored with the volumes (labels as the structure set numbers them).
"""

from __future__ import annotations

import numpy as np

from orthodiff.errors import OrthodiffError

BOX = (0.5, 0.3, 0.5)  # fraction of depth, height, width


def box_bounds(shape: tuple[int, int, int], fractions=BOX) -> list[tuple[int, int]]:
    """(start, stop) per axis of the central box; at least one voxel per axis."""
    out = []
    for size, frac in zip(shape, fractions):
        extent = max(1, int(round(size * frac)))
        start = (size - extent) // 2
        out.append((start, start + extent))
    return out


def box_grid(shape: tuple[int, int, int], n: int = 1, fractions=BOX) -> tuple[np.ndarray, list[str]]:
    """The central box split into n^3 cells: (label volume uint8, ROI names `box{n}_z{i}y{j}x{k}`)."""
    if n not in (1, 2, 3):
        raise OrthodiffError(f"--grid {n}: expected 1, 2 or 3 (cells per axis of the central box)")
    bounds = box_bounds(shape, fractions)
    if any(stop - start < n for start, stop in bounds):
        raise OrthodiffError(f"a {n}x{n}x{n} grid does not fit the central box {bounds} of a {shape} volume")
    labels = np.zeros(shape, np.uint8)
    edges = [np.linspace(start, stop, n + 1).round().astype(int) for start, stop in bounds]
    names = []
    for i in range(n):
        for j in range(n):
            for k in range(n):
                names.append(f"box{n}_z{i}y{j}x{k}")
                labels[edges[0][i]:edges[0][i + 1], edges[1][j]:edges[1][j + 1], edges[2][k]:edges[2][k + 1]] = len(names)
    return labels, names


def cell_index(name: str) -> tuple[int, int, int]:
    """The (z, y, x) position of a grid cell in the grid, from its name (the paper's 3 spatial indices)."""
    rest = name.split("_", 1)[1]
    return int(rest[1]), int(rest[3]), int(rest[5])
