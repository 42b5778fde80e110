"""A fused CPU kernel for ``batched_sap.attention_mean``: the mean over queries of
softmax(q^T k), and its gradient, one (row, query) at a time with the L scores in L1 cache.

Written by hand because no library computes it: torch's attention kernels (SDPA) also form
P V, and the eager chunked path writes each (L x L) score matrix to memory several times
(scores, probabilities, their gradient), so a SAP training step spent ~70% of its time
there. Here a row of scores is computed, exponentiated and reduced in place; the backward
pass recomputes it from the saved row log-sum-exp. The C source is compiled on first use
for each (head size, tokens) pair with the system C compiler (specialised sizes let it
vectorise ``expf`` through glibc's libmvec) and loaded with ctypes; without a compiler, or
if compilation fails, ``load`` returns None (one warning) and the eager path runs.
Float32 CPU tensors only.
"""

from __future__ import annotations

import ctypes
import functools
import os
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import torch

SOURCE = r"""
#include <math.h>
#include <stdint.h>
#include <float.h>

/* q, k: (B, DIM, N, LEN); abar, lse: (B, N, LEN); one softmax problem per (b, n).
   abar[b, n, j] = mean_i softmax_j(s[i, :]), lse[b, n, i] = logsumexp_j s[i, j],
   s[i, j] = sum_e q[b, e, n, i] k[b, e, n, j]. */
#define ROW (N * LEN) /* stride of e */

/* s[j] = sum_e q[e, i] k[e, j] for one query i, each s[j] summed in a register */
static inline void scores(const float *q, const float *k, int i, int64_t N, float *s) {
    float qi[DIM];
    for (int e = 0; e < DIM; e++) qi[e] = q[e * ROW + i];
    for (int j = 0; j < LEN; j++) {
        float acc = 0.f;
        for (int e = 0; e < DIM; e++) acc += qi[e] * k[e * ROW + j];
        s[j] = acc;
    }
}
void forward(const float *q, const float *k, float *abar, float *lse, int64_t B, int64_t N) {
    float s[LEN];
    for (int64_t b = 0; b < B * N; b++) {
        const int64_t start = (b / N) * DIM * ROW + (b % N) * LEN;
        const float *qb = q + start, *kb = k + start;
        float *ab = abar + b * LEN;
        for (int j = 0; j < LEN; j++) ab[j] = 0.f;
        for (int i = 0; i < LEN; i++) {
            scores(qb, kb, i, N, s);
            float m = -FLT_MAX, z = 0.f;
            for (int j = 0; j < LEN; j++) m = s[j] > m ? s[j] : m;
            for (int j = 0; j < LEN; j++) { s[j] = expf(s[j] - m); z += s[j]; }
            const float r = 1.f / (z * LEN);
            for (int j = 0; j < LEN; j++) ab[j] += s[j] * r;
            lse[b * LEN + i] = m + logf(z);
        }
    }
}

/* g: (B, N, LEN) gradient of the loss with respect to abar, divided by LEN (d abar_j / d P_ij);
   dq, dk: (B, DIM, N, LEN). With p_ij = exp(s_ij - lse_i) and c_i = sum_j p_ij g_j,
   d s_ij = p_ij (g_j - c_i), dq_i = sum_j ds_ij k_j, dk_j = sum_i ds_ij q_i; dk is
   accumulated over TILE queries at a time (one load and store of it per TILE rows). */
#define TILE 4
void backward(const float *q, const float *k, const float *g, const float *lse, float *dq, float *dk,
              int64_t B, int64_t N) {
    float s[TILE][LEN], dkl[DIM][LEN];
    for (int64_t b = 0; b < B * N; b++) {
        const int64_t start = (b / N) * DIM * ROW + (b % N) * LEN;
        const float *qb = q + start, *kb = k + start, *gb = g + b * LEN;
        float *dqb = dq + start, *dkb = dk + start;
        for (int e = 0; e < DIM; e++)
            for (int j = 0; j < LEN; j++) dkl[e][j] = 0.f;
        for (int i0 = 0; i0 < LEN; i0 += TILE) {
            const int rows = LEN - i0 < TILE ? LEN - i0 : TILE;
            for (int t = 0; t < TILE; t++) {
                float *st = s[t];
                if (t >= rows) { /* past the last query: zeros add nothing to dk */
                    for (int j = 0; j < LEN; j++) st[j] = 0.f;
                    continue;
                }
                const int i = i0 + t;
                scores(qb, kb, i, N, st);
                const float l = lse[b * LEN + i];
                float c = 0.f;
                for (int j = 0; j < LEN; j++) { st[j] = expf(st[j] - l); c += st[j] * gb[j]; }
                for (int j = 0; j < LEN; j++) st[j] *= gb[j] - c;
                for (int e = 0; e < DIM; e++) {
                    const float *ke = kb + e * ROW;
                    float acc = 0.f;
                    for (int j = 0; j < LEN; j++) acc += st[j] * ke[j];
                    dqb[e * ROW + i] = acc;
                }
            }
            for (int e = 0; e < DIM; e++) {
                float qe[TILE];
                for (int t = 0; t < TILE; t++) qe[t] = t < rows ? qb[e * ROW + i0 + t] : 0.f;
                for (int j = 0; j < LEN; j++) {
                    float acc = dkl[e][j];
                    for (int t = 0; t < TILE; t++) acc += s[t][j] * qe[t];
                    dkl[e][j] = acc;
                }
            }
        }
        for (int e = 0; e < DIM; e++)
            for (int j = 0; j < LEN; j++) dkb[e * ROW + j] = dkl[e][j];
    }
}
"""


@functools.cache
def load(dim: int, length: int) -> ctypes.CDLL | None:
    """The kernel compiled for head size ``dim`` and ``length`` tokens, or None (with one
    warning) where no C compiler is found or compilation fails."""
    compiler = shutil.which(os.environ.get("CC", "cc"))
    if compiler is None:
        return _unavailable("no C compiler (cc) on PATH")
    with tempfile.TemporaryDirectory() as tmp:
        source, obj, lib = Path(tmp, "k.c"), Path(tmp, "k.o"), Path(tmp, "k.so")
        source.write_text(SOURCE)
        # -ffast-math (reassociation, vector expf) only when compiling: linked with it,
        # gcc adds crtfastmath.o, which would flush denormals to zero for the whole process
        steps = [[compiler, "-c", "-O3", "-march=native", "-ffast-math", "-fPIC", f"-DDIM={dim}", f"-DLEN={length}",
                  str(source), "-o", str(obj)],
                 [compiler, "-shared", str(obj), "-o", str(lib), "-lm"]]
        try:
            for step in steps:
                subprocess.run(step, check=True, capture_output=True, text=True, timeout=120)
            kernel = ctypes.CDLL(str(lib))  # stays mapped after the directory is removed
        except (OSError, subprocess.SubprocessError) as err:
            detail = getattr(err, "stderr", None) or str(err)
            return _unavailable(f"compiling it failed: {detail.strip()[:200]}")
    kernel.forward.restype = kernel.backward.restype = None
    return kernel


_warned = False


def _unavailable(why: str) -> None:
    global _warned
    if not _warned:
        warnings.warn(f"the fused attention-mean kernel is unavailable ({why}); batched SAP runs eagerly (slower)",
                      stacklevel=3)
        _warned = True
    return None


def usable(qt: torch.Tensor, kt: torch.Tensor) -> ctypes.CDLL | None:
    """The kernel for these (B, d, N, L) queries and keys if they are contiguous float32 CPU
    tensors and it compiles; None otherwise."""
    if not all(t.device.type == "cpu" and t.dtype == torch.float32 and t.is_contiguous() for t in (qt, kt)):
        return None
    return load(qt.shape[1], qt.shape[3])


def _pointer(t: torch.Tensor) -> ctypes.c_void_p:
    return ctypes.c_void_p(t.data_ptr())


def forward(kernel: ctypes.CDLL, qt: torch.Tensor, kt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, d, N, L) queries and keys -> abar (B, N, L) and the rows' log-sum-exp (B, N, L)."""
    b, _, n, length = qt.shape
    abar, lse = qt.new_empty(b, n, length), qt.new_empty(b, n, length)
    kernel.forward(_pointer(qt), _pointer(kt), _pointer(abar), _pointer(lse), ctypes.c_int64(b), ctypes.c_int64(n))
    return abar, lse


def backward(kernel: ctypes.CDLL, qt: torch.Tensor, kt: torch.Tensor, lse: torch.Tensor,
             grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of queries and keys given d loss / d abar (B, N, L)."""
    b, _, n, length = qt.shape
    grad = (grad.float() / length).contiguous()
    dqt, dkt = torch.empty_like(qt), torch.empty_like(kt)
    kernel.backward(*map(_pointer, (qt, kt, grad, lse, dqt, dkt)), ctypes.c_int64(b), ctypes.c_int64(n))
    return dqt, dkt
