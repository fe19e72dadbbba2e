"""Per-batch consumers of the activation engine for notebook 04: logit lens, drift, activation spectra.

Layer index convention (from `utils.engine.activations`): 0 = embeddings, i = after block i (before the
final norm), L + 1 = final-normed last state.

Logit lens (nostalgebraist 2020): each residual state through the final norm and the unembedding,
logits_j = logits(final_norm(h_j)); the final layer uses the final-normed state the LM head reads,
so its logits are the model's own.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import torch

from utils.engine.activations import ActivationStats, BatchActivations
from utils.metrics.spectra import spectrum_metrics

# --- streaming consumers ------------------------------------------------------------------------

class LogitLens:
    """Consumer of `collect_activations`: logit-lens statistics of every residual state 0..L.

    Metrics per layer over the chosen positions (each with a next token in its window):
    entropy H(p_j), top-1 probability, rank of the correct next token (1 = top), agreement of
    argmax p_j with the model's argmax p_L, KL(p_L || p_j), cross-entropy -log p_j(next token).
    Logits are computed `chunk` tokens at a time with chunk = max(1, max_logit_elements // V),
    so at most a few chunk x V float32 arrays exist at once.
    """

    def __init__(self, adapter, tokens_shape: tuple[int, int], n_positions: int = 0, seed: int = 0,
                 mask: torch.Tensor | None = None, max_logit_elements: int = 1 << 23):
        if not adapter.is_causal_lm:
            raise ValueError(f"{adapter.name} models have no LM head: the logit lens does not apply")
        self.adapter = adapter
        n_seq, seq_len = tokens_shape
        self.seq_len = seq_len
        valid = torch.zeros(n_seq, seq_len, dtype=torch.bool)
        valid[:, :-1] = True  # a next token exists in the window
        if mask is not None:
            valid &= mask.bool() & torch.roll(mask.bool(), -1, dims=1)
        flat = valid.reshape(-1).nonzero().squeeze(1)
        if n_positions:
            g = torch.Generator().manual_seed(seed)
            flat = flat[torch.randperm(flat.numel(), generator=g)[:n_positions]].sort().values
        self.positions = flat  # flat indices into (n_seq * seq_len)
        self.chunk = max(1, max_logit_elements // adapter.dims.V)
        n_layers = adapter.dims.L + 1
        self.sums = torch.zeros(5, n_layers, dtype=torch.float64)  # entropy, top1, agree, kl, ce
        self.ranks: list[torch.Tensor] = []  # (n_layers, chunk) per chunk
        self.count = 0

    def _logits(self, h: torch.Tensor, normed: bool) -> torch.Tensor:
        return self.adapter.logits(h if normed else self.adapter.apply_final_norm(h)).float()

    def __call__(self, batch: BatchActivations) -> None:
        B, S = batch.input_ids.shape
        lo = batch.offset * S
        pos = self.positions[(self.positions >= lo) & (self.positions < lo + B * S)] - lo
        pos = pos.to(batch.input_ids.device)
        targets = batch.input_ids.reshape(-1)[pos + 1]  # next token, same window (pos % S < S - 1)
        L, d = self.adapter.dims.L, batch.residual[0].shape[-1]
        for rows, tgt in zip(pos.split(self.chunk), targets.split(self.chunk)):
            final = self._logits(batch.residual[L + 1].reshape(-1, d)[rows], True)  # (c, V)
            p_f, top_f, neg_entropy_f = final_lens_terms(final)
            ranks = torch.empty(L + 1, rows.numel(), dtype=torch.long)
            for j in range(L + 1):
                # With lse = log sum exp z: H = lse - sum p z, top-1 = exp(max z - lse),
                # KL(p_f || p) = sum p_f log p_f - sum p_f z + lse, CE = lse - z_target.
                z = final if j == L else self._logits(batch.residual[j].reshape(-1, d)[rows], False)
                ranks[j] = add_lens_terms(self.sums[:, j], z, p_f, top_f, neg_entropy_f, tgt)
            self.ranks.append(ranks)
            self.count += rows.numel()

    def result(self) -> pd.DataFrame:
        """One row per layer 0..L: layer, entropy, top1_prob, median_rank, agreement, kl_to_final, cross_entropy."""
        if self.count == 0:
            raise ValueError("the logit lens saw no positions")
        return lens_frame(self.sums, self.ranks, self.count)


def final_lens_terms(final: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What every layer's lens terms compare with, from the final logits (c, V): p_final, its
    argmax, and sum p_final log p_final = sum p_final z_final - log sum exp z_final."""
    p_f = final.softmax(-1)
    return p_f, final.argmax(-1), torch.linalg.vecdot(p_f, final) - torch.logsumexp(final, -1)


def add_lens_terms(sums: torch.Tensor, z: torch.Tensor, p_final: torch.Tensor, top_final: torch.Tensor,
                   neg_entropy_final: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Add one layer's logit-lens sums over c positions to `sums` (5,) and return the ranks (c,) of
    the correct tokens. With z (c, V) the layer's logits and lse = log sum exp z: entropy
    H = lse - sum p z, top-1 probability exp(max z - lse), agreement [argmax z = argmax z_final],
    KL(p_final || p) = sum p_f log p_f - sum p_f z + lse, cross-entropy CE = lse - z_target."""
    lse = torch.logsumexp(z, -1)
    z_max, top = z.max(-1)
    z_t = z.gather(1, target[:, None])  # (c, 1)
    sums[0] += float((lse - torch.linalg.vecdot(z.softmax(-1), z)).sum())
    sums[1] += float(torch.exp(z_max - lse).sum())
    sums[2] += float((top == top_final).sum())
    sums[3] += float((neg_entropy_final - torch.linalg.vecdot(p_final, z) + lse).clamp_min(0).sum())
    sums[4] += float((lse - z_t[:, 0]).sum())
    return ((z > z_t).sum(-1) + 1).cpu()


def lens_frame(sums: torch.Tensor, ranks: list[torch.Tensor], count: int) -> pd.DataFrame:
    """One row per layer 0..L: layer, entropy, top1_prob, median_rank, agreement, kl_to_final,
    cross_entropy, n_tokens, from the sums (5, L + 1) and rank chunks (L + 1, c) of `count` positions."""
    means = (sums / count).numpy()
    ranks = torch.cat(ranks, dim=1).numpy()  # (L + 1, n_tokens)
    return pd.DataFrame({
        "layer": np.arange(means.shape[1]),
        "entropy": means[0], "top1_prob": means[1],
        "median_rank": np.median(ranks, axis=1),
        "agreement": means[2], "kl_to_final": means[3], "cross_entropy": means[4],
        "n_tokens": count,
    })


class Drift:
    """Consumer: mean over real tokens of cos(h_{j-1}, h_j) and ||h_j - h_{j-1}||_2 for j = 1..L + 1
    (j = L + 1 is the final-norm step; it is identical to state L, and omitted, without a final norm)."""

    def __init__(self, has_final_norm: bool):
        self.has_final_norm = has_final_norm
        self.sums: torch.Tensor | None = None  # (2, steps) float64
        self.count = 0

    def __call__(self, batch: BatchActivations) -> None:
        keep = batch.mask.reshape(-1)
        states = batch.residual if self.has_final_norm else batch.residual[:-1]
        flat = [h.reshape(-1, h.shape[-1])[keep].double() for h in states]
        rows = []
        for a, b in zip(flat[:-1], flat[1:]):
            rows.append([torch.nn.functional.cosine_similarity(a, b, dim=-1).sum(), (b - a).norm(dim=-1).sum()])
        sums = torch.tensor([[float(c) for c, _ in rows], [float(d) for _, d in rows]], dtype=torch.float64)
        self.sums = sums if self.sums is None else self.sums + sums
        self.count += int(keep.sum())

    def result(self) -> pd.DataFrame:
        """layer j = 1..L: block j's change; j = L + 1 (step 'final_norm'): the final norm's change."""
        means = (self.sums / self.count).numpy()
        n_blocks = means.shape[1] - int(self.has_final_norm)
        return pd.DataFrame({
            "layer": np.arange(1, means.shape[1] + 1),
            "step": [f"block {j}" for j in range(1, n_blocks + 1)] + (["final_norm"] if self.has_final_norm else []),
            "cosine": means[0], "l2": means[1],
        })


# --- activation spectra -------------------------------------------------------------------------

def residual_eigenvalues(stats: ActivationStats) -> list[np.ndarray]:
    """The L + 2 residual states' covariance eigenvalues of `collect_activations`'s statistics."""
    return [acc.eigenvalues().numpy() for acc in stats.residual]


def activation_spectra(eigenvalues: Sequence[np.ndarray]) -> tuple[pd.DataFrame, list[np.ndarray]]:
    """Per residual state 0..L (of the L + 2 states' covariance eigenvalues): metrics, and the eigenvalues."""
    eigs = list(eigenvalues[:-1])
    rows = [{"layer": j, **spectrum_metrics(e)} for j, e in enumerate(eigs)]
    return pd.DataFrame(rows), eigs
