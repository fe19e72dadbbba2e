"""Attention kernels A_h = W_Q_h^T W_K_h in factored form: every quantity from d_head x d_head matrices.

For query head h with W_Q_h = Q (m x d) and its KV head's W_K_h = K (m x d), m = d_head, the
pre-softmax score of query token x_i and key token x_j is  scale * x_i^T A_h x_j  with
A_h = Q^T K (d x d, rank <= m). The d x d matrix is never formed. Writing A = X Y with X = Q^T
(d x m) and Y = K (m x d), as TransformerLens's `FactoredMatrix` does (Nanda & Bloom 2022):

- eigenvalues: XY and YX share their nonzero eigenvalues (Sylvester's determinant identity
  det(I - t XY) = det(I - t YX)), so the m eigenvalues of B = K Q^T (m x m) are those of A that
  can be nonzero; the other d - m are exactly zero.
- SVD: thin QR factors Q^T = U_Q R_Q and K^T = U_K R_K (U_* d x m orthonormal, R_* m x m) give
  A = U_Q (R_Q R_K^T) U_K^T; with the small SVD R_Q R_K^T = P diag(s) T^T,
      A = (U_Q P) diag(s) (U_K T)^T.
  Left singular vectors U_Q P lie in the row space of W_Q: the QUERY-side input subspace (what
  the attending token x_i is read along). Right singular vectors U_K T lie in the row space of
  W_K: the KEY-side input subspace (what the attended-to token x_j is read along; the seed `2.py`
  calls these "the subspace the head queries").
- Frobenius norm: ||A||_F^2 = tr(A^T A) = tr(K^T Q Q^T K) = tr((Q Q^T)(K K^T)) = sum_i s_i^2.
- asymmetry: <A, A^T>_F = tr(A A) = tr(Q^T K Q^T K) = tr((K Q^T)(K Q^T)) = tr(B^2) = sum_i lambda_i^2,
  so ||A - A^T||_F^2 = 2 ||A||_F^2 - 2 tr(B^2) and
      asymmetry = ||A - A^T||_F / ||A||_F = sqrt(2 (1 - tr(B^2) / ||A||_F^2)),
  in [0, 2] by Cauchy-Schwarz (|tr(A A)| <= ||A||_F ||A^T||_F): 0 for symmetric A, 2 for
  antisymmetric A, sqrt(2) when tr(A A) = 0; for independent Gaussian Q and K,
  E tr(A A) / E ||A||_F^2 = m d / (m d^2) = 1/d, so asymmetry ~ sqrt(2 (1 - 1/d)).
- spectral energy: the seed's cumulative energy uses |lambda|^2 of the eigenvalues; only the
  m eigenvalues of B contribute, so the top-d_head eigenvalues hold all of it (the rank bound).

Left out of the kernel (reports must say so): rotary position embeddings (RoPE rotates q and k by
a position-dependent angle, so the true score kernel is Q^T R_{j-i} K), Gemma's per-head q/k
RMSNorms, and the pre-attention norm gains. The score scale multiplies every eigenvalue and
singular value by one constant: it changes magnitudes only, never ranks, asymmetry, energy
fractions, complex fractions or singular subspaces.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from utils.metrics.spectra import effective_rank
from utils.models.adapters import AttentionWeights, WeightAdapter, get_adapter

COMPLEX_RTOL = 1e-6  # an eigenvalue is complex when |Im lambda| > COMPLEX_RTOL * max |lambda|


def _transpose(x: torch.Tensor) -> torch.Tensor:
    """x^T over the last two axes, contiguous (batched LAPACK QR is ~30x slower on the strided view)."""
    return x.transpose(-1, -2).contiguous()


@dataclass(frozen=True)
class HeadKernels:
    """A_h = q[h]^T k[h] for a batch of heads, kept as its factors (float64)."""

    q: torch.Tensor  # (h, m, d): W_Q_h
    k: torch.Tensor  # (h, m, d): W_K of the KV head each query head reads (repeated for GQA)

    @property
    def d(self) -> int:
        return self.q.shape[-1]

    @property
    def d_head(self) -> int:
        return self.q.shape[-2]

    def key_query_product(self) -> torch.Tensor:
        """B = W_K_h W_Q_h^T, (h, m, m): shares the nonzero eigenvalues of A_h."""
        return self.k @ self.q.transpose(-1, -2)

    def eigenvalues(self) -> torch.Tensor:
        """The m eigenvalues of A_h that can be nonzero, complex (h, m), by descending |lambda|."""
        lam = torch.linalg.eigvals(self.key_query_product())  # (h, m)
        order = lam.abs().argsort(dim=-1, descending=True)
        return lam.gather(-1, order)

    def svd(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A_h = U diag(S) V^T with U, V (h, d, m) orthonormal columns, S (h, m) descending.

        U (left) spans the query-side input subspace, V (right) the key-side one."""
        u_q, r_q = torch.linalg.qr(_transpose(self.q))  # (h, d, m), (h, m, m)
        u_k, r_k = torch.linalg.qr(_transpose(self.k))
        p, s, t_h = torch.linalg.svd(r_q @ r_k.transpose(-1, -2))  # (h, m, m), (h, m), (h, m, m)
        return u_q @ p, s, u_k @ t_h.transpose(-1, -2)

    def singular_values(self) -> torch.Tensor:
        """(h, m), descending; the other d - m singular values of A_h are zero."""
        r_q = torch.linalg.qr(_transpose(self.q), mode="r").R
        r_k = torch.linalg.qr(_transpose(self.k), mode="r").R
        return torch.linalg.svdvals(r_q @ r_k.transpose(-1, -2))

    def frobenius_sq(self) -> torch.Tensor:
        """||A_h||_F^2 = tr((Q Q^T)(K K^T)), (h,)."""
        qq = self.q @ self.q.transpose(-1, -2)  # (h, m, m)
        kk = self.k @ self.k.transpose(-1, -2)
        return (qq * kk).sum(dim=(-1, -2))  # tr(X Y) = sum(X * Y^T), both symmetric

    def trace_square(self) -> torch.Tensor:
        """<A_h, A_h^T>_F = tr(A_h A_h) = tr(B^2) = sum_ij B_ij B_ji, (h,)."""
        b = self.key_query_product()
        return (b * b.transpose(-1, -2)).sum(dim=(-1, -2))

    def asymmetry(self) -> torch.Tensor:
        """||A - A^T||_F / ||A||_F = sqrt(2 (1 - tr(A A) / ||A||_F^2)), in [0, 2], (h,)."""
        ratio = self.trace_square() / self.frobenius_sq()
        return torch.sqrt((2.0 * (1.0 - ratio)).clamp(min=0.0))


def head_kernels(attn: AttentionWeights, scaled: bool = False) -> HeadKernels:
    """The kernels of every query head of one block; `scaled` folds in the score scale."""
    q = attn.q.detach().to(torch.float64)
    if scaled:
        q = q * attn.scale
    return HeadKernels(q=q, k=attn.k.detach().to(torch.float64)[attn.kv_head_of])


def cumulative_energy(eigenvalues) -> np.ndarray:
    """Cumulative share of sum |lambda|^2 held by the top-n eigenvalues (by |lambda|), n = 1..len."""
    mag2 = np.sort(np.abs(np.asarray(eigenvalues)) ** 2)[::-1]
    return np.cumsum(mag2) / mag2.sum()


def components_for_energy(eigenvalues, fraction: float = 0.99) -> int:
    """Fewest eigenvalues whose |lambda|^2 hold `fraction` of the spectral energy (seed: n99)."""
    return int((cumulative_energy(eigenvalues) < fraction - 1e-12).sum()) + 1


def complex_mask(eigenvalues: torch.Tensor, rtol: float = COMPLEX_RTOL) -> torch.Tensor:
    """|Im lambda| > rtol * max |lambda| per head (last axis). Relative, unlike the seed's absolute
    1e-6, which counted the numerical noise of the d - m zero eigenvalues as complex."""
    top = eigenvalues.abs().amax(dim=-1, keepdim=True)
    return eigenvalues.imag.abs() > rtol * top


def layer_metrics(attn: AttentionWeights, scaled: bool = True, rtol: float = COMPLEX_RTOL) -> pd.DataFrame:
    """One row per query head: head, kv_head, eff_rank, asymmetry, frac_complex, top_eig_abs,
    n_complex, top_sv, fro_norm, n99_energy.

    eff_rank is the seed's exp-entropy of the singular values (zeros add nothing), in [1, d_head];
    frac_complex is the share of the d_head possibly-nonzero eigenvalues that are complex;
    magnitudes include the score scale when `scaled`."""
    kern = head_kernels(attn, scaled=scaled)  # on the weights' device
    lam = kern.eigenvalues().cpu()  # (h, m)
    s = kern.singular_values().cpu()  # (h, m)
    n_complex = complex_mask(lam, rtol).sum(dim=-1)
    return pd.DataFrame({
        "head": np.arange(lam.shape[0]),
        "kv_head": attn.kv_head_of.cpu().numpy(),
        "eff_rank": [effective_rank(row) for row in s],
        "asymmetry": kern.asymmetry().cpu().numpy(),
        "frac_complex": (n_complex / kern.d_head).numpy(),
        "top_eig_abs": lam[:, 0].abs().numpy(),
        "n_complex": n_complex.numpy(),
        "top_sv": s[:, 0].numpy(),
        "fro_norm": kern.frobenius_sq().sqrt().cpu().numpy(),
        "n99_energy": [components_for_energy(row.numpy()) for row in lam],
    })


def kernel_table(model_or_adapter, scaled: bool = True, rtol: float = COMPLEX_RTOL,
                 progress: bool = True) -> pd.DataFrame:
    """`layer_metrics` for every layer, with a `layer` column first: L * h rows."""
    adapter = model_or_adapter if isinstance(model_or_adapter, WeightAdapter) else get_adapter(model_or_adapter)
    frames = []
    for layer in tqdm(range(adapter.dims.L), desc="attention kernels", disable=not progress):
        df = layer_metrics(adapter.attention(layer), scaled=scaled, rtol=rtol)
        frames.append(df.assign(layer=layer))
    table = pd.concat(frames, ignore_index=True)
    return table[["layer"] + [c for c in table.columns if c != "layer"]]
