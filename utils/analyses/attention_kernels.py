"""Notebook 02's analyses: the attention kernels A_h = W_Q_h^T W_K_h of one head, of every layer x
head, and the W_down SVD of one layer (the attention-kernel sections of seed `1.py`).

The kernel maths (factored eigenvalues, SVD, asymmetry) lives in `utils.metrics.kernels`; this
module turns it into the notebook's results, each a dataclass whose fields the findings sentences
and the tests read:

- `head_spectrum(attn, layer, head, rtol) -> HeadSpectrum`: the d_head eigenvalues of A_h that can
  be nonzero (those of B = W_K_h W_Q_h^T, h x d_head x d_head), its singular values, asymmetry
  ||A - A^T||_F / ||A||_F, cumulative |lambda|^2 energy and effective ranks.
- `kernel_survey(adapter, rtol) -> KernelSurvey`: `kernel_table` over all L x h heads, (L, h)
  grids, per-head and per-layer summaries; heads are "low-rank" when their mean effective rank
  over layers is <= the 25th percentile of those means, "high-rank" when >= the 75th.
- `down_projection(adapter, layer) -> DownProjectionSpectrum`: the singular values s of W_down
  (d x D_ff), variance shares s_i^2 / sum s^2 and the fewest directions holding 99% of it.

Reference point for the asymmetry: for independent Gaussian W_Q, W_K, E tr(A A) / E ||A||_F^2 =
1/d, so asymmetry ~ sqrt(2 (1 - 1/d)) (`random_asymmetry`; derivation in `utils.metrics.kernels`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from utils.metrics.kernels import complex_mask, components_for_energy, cumulative_energy, head_kernels, kernel_table
from utils.metrics.spectra import components_for_variance, cumulative_share, effective_rank, singular_values
from utils.models.adapters import AttentionWeights, ModelDims, WeightAdapter
from utils.reporting.plotting import heatmap, subplots
from utils.reporting.report import Report

ENERGY_MILESTONES = (0.5, 0.75, 0.9, 0.95, 0.99)  # shares of the spectral energy / variance tabulated
RANK_QUANTILES = (25, 75)  # percentiles of the per-head mean effective rank: low-rank <= first, high-rank >= second


def random_asymmetry(d: int) -> float:
    """sqrt(2 (1 - 1/d)): the asymmetry of A = Q^T K for independent Gaussian Q, K (d x d kernel)."""
    return float(np.sqrt(2 * (1 - 1 / d)))


def check_parameters(name: str, dims: ModelDims, layer: int, head: int, complex_rtol: float) -> int:
    """Checks notebook 02's parameters against the model (clear errors naming the parameter and its
    range) and returns the deep-dive layer, -1 resolved to the middle layer L // 2."""
    L = dims.L
    if layer == -1:
        layer = L // 2
    if not 0 <= layer < L:
        raise ValueError(f"parameter layer={layer} is out of range: {name} has layers 0..{L - 1} "
                         "(or -1 for the middle layer)")
    if not 0 <= head < dims.h:
        raise ValueError(f"parameter head={head} is out of range: {name} has query heads 0..{dims.h - 1}")
    if not 0 < complex_rtol < 1:
        raise ValueError(f"parameter complex_rtol={complex_rtol} must lie in (0, 1)")
    return layer


# --- one head ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class HeadSpectrum:
    """The kernel A_h = scale * W_Q_h^T W_K_h of one head (d x d, rank <= d_head), from its factors.

    Only the d_head eigenvalues of B = W_K_h W_Q_h^T can be nonzero (Sylvester); an eigenvalue is
    complex when |Im lambda| > complex_rtol * max |lambda|. energy[n - 1] = sum of the n largest
    |lambda|^2 / sum |lambda|^2; n99 = fewest eigenvalues holding 99% of it. Effective rank is
    exp of the entropy of the normalised singular values (or eigenvalue magnitudes), in [1, d_head]."""

    layer: int
    head: int
    kv_head: int
    d: int
    d_head: int
    complex_rtol: float
    eigenvalues: np.ndarray  # (d_head,) complex, by descending |lambda|
    singular_values: np.ndarray  # (d_head,) descending
    is_complex: np.ndarray  # (d_head,) bool
    asymmetry: float  # ||A - A^T||_F / ||A||_F in [0, 2]
    n_complex: int
    n_nonzero: int  # |lambda| > complex_rtol * max |lambda|
    energy: np.ndarray  # (d_head,) cumulative |lambda|^2 share
    n99: int
    top_energy: float  # energy of the top d_head eigenvalues: 1 by the rank bound
    eff_rank_sv: float
    eff_rank_eig: float

    @property
    def magnitudes(self) -> np.ndarray:
        return np.abs(self.eigenvalues)

    def milestones(self) -> pd.DataFrame:
        """Fewest eigenvalues holding each share of ENERGY_MILESTONES, and as a share of d."""
        table = pd.DataFrame({"energy": list(ENERGY_MILESTONES)})
        table["components"] = [components_for_energy(self.eigenvalues, m) for m in table.energy]
        table["share of d"] = table.components / self.d
        return table

    def top_eigenvalues(self, n: int = 20) -> pd.DataFrame:
        lam = self.eigenvalues
        return pd.DataFrame({"rank": np.arange(min(n, lam.size)), "real": lam.real[:n], "imag": lam.imag[:n],
                             "abs": self.magnitudes[:n]})

    def summary(self) -> dict:
        """The report's table of this head."""
        d, d_head, rtol = self.d, self.d_head, self.complex_rtol
        return {
            "kernel shape": f"{d} x {d} (rank <= {d_head})",
            "asymmetry ||A - A^T|| / ||A||": self.asymmetry,
            "complex eigenvalues": f"{self.n_complex}/{d_head} ({self.n_complex / d_head:.1%})",
            f"numerically nonzero eigenvalues (|lambda| > {rtol:g} max)": f"{self.n_nonzero}/{d}",
            f"top-{d_head} eigenvalue energy": self.top_energy,
            "effective rank (singular values)": self.eff_rank_sv,
            "effective rank (eigenvalue magnitudes)": self.eff_rank_eig,
            "99% spectral energy at": f"{self.n99}/{d} components",
            "largest |lambda|": self.magnitudes[0],
            "largest singular value": self.singular_values[0],
        }

    def sentences(self) -> list[str]:
        rand = random_asymmetry(self.d)
        return [
            f"Layer {self.layer}, head {self.head}: asymmetry {self.asymmetry:.3f} (0 = symmetric, {rand:.3f} = "
            f"independent random W_Q and W_K, 2 = antisymmetric); {self.n_complex} of its {self.d_head} possibly-nonzero "
            f"eigenvalues are complex (|Im| > {self.complex_rtol:g} of the largest |lambda|); 99% of the |lambda|^2 "
            f"energy lies in {self.n99} of {self.d} components; effective rank {self.eff_rank_sv:.1f} of at most "
            f"{self.d_head}.",
        ]


def head_spectrum(attn: AttentionWeights, layer: int, head: int, complex_rtol: float) -> HeadSpectrum:
    """`HeadSpectrum` of query head `head` of one block's attention weights (score scale included)."""
    kern = head_kernels(attn, scaled=True)
    lam = kern.eigenvalues()[head].cpu().numpy()  # (d_head,) complex, by descending |lambda|
    sv = kern.singular_values()[head].cpu().numpy()  # (d_head,)
    mag = np.abs(lam)
    is_complex = complex_mask(torch.from_numpy(lam)[None], complex_rtol)[0].numpy()
    energy = cumulative_energy(lam)
    return HeadSpectrum(
        layer=layer, head=head, kv_head=int(attn.kv_head_of[head]), d=kern.d, d_head=kern.d_head,
        complex_rtol=complex_rtol, eigenvalues=lam, singular_values=sv, is_complex=is_complex,
        asymmetry=float(kern.asymmetry()[head]), n_complex=int(is_complex.sum()),
        n_nonzero=int((mag > complex_rtol * mag[0]).sum()), energy=energy, n99=components_for_energy(lam, 0.99),
        top_energy=float(energy[min(kern.d_head, energy.size) - 1]), eff_rank_sv=effective_rank(sv),
        eff_rank_eig=effective_rank(mag),
    )


def plot_head_spectrum(spec: HeadSpectrum):
    """|lambda| by index (log), the eigenvalues in the complex plane, and the cumulative energy."""
    mag, lam, c = spec.magnitudes, spec.eigenvalues, spec.is_complex
    fig, axes = subplots(1, 3, width=5.5, height=4.2)
    axes[0, 0].semilogy(np.arange(1, mag.size + 1), np.maximum(mag, mag[0] * 1e-16), marker=".", markersize=3)
    axes[0, 0].set(title=f"|lambda| (the other {spec.d - spec.d_head} are 0)", xlabel="index", ylabel="|lambda|")
    axes[0, 1].scatter(lam.real[~c], lam.imag[~c], s=8, label="real")
    axes[0, 1].scatter(lam.real[c], lam.imag[c], s=8, label="complex")
    axes[0, 1].axhline(0, color="gray", linewidth=0.5)
    axes[0, 1].axvline(0, color="gray", linewidth=0.5)
    axes[0, 1].set(title=f"Eigenvalues ({spec.n_complex} complex, asymmetry {spec.asymmetry:.3f})", xlabel="real",
                   ylabel="imaginary")
    axes[0, 1].set_aspect("equal", adjustable="datalim")
    axes[0, 1].legend(fontsize=8)
    axes[0, 2].plot(np.arange(1, spec.energy.size + 1), spec.energy)
    axes[0, 2].axhline(0.99, color="r", linestyle="--", label="99%")
    axes[0, 2].axvline(spec.n99, color="gray", linestyle=":", label=f"n = {spec.n99}")
    axes[0, 2].set(title=f"Cumulative |lambda|^2 energy (99% at {spec.n99}/{spec.d})", xlabel="component",
                   ylabel="share")
    axes[0, 2].legend(fontsize=8)
    fig.suptitle(f"Attention kernel W_Q^T W_K — layer {spec.layer}, head {spec.head} (KV head {spec.kv_head})")
    fig.tight_layout()
    return fig


# --- every layer x head --------------------------------------------------------------------------

@dataclass(frozen=True)
class KernelSurvey:
    """`kernel_table` of every layer and query head (L * h rows) and its summaries.

    eff_rank, asymmetry, frac_complex: (L, h) grids. per_head: mean over layers per head, with
    category low-rank (mean <= low_threshold, the 25th percentile of the per-head means), high-rank
    (>= high_threshold, the 75th) or mid; per_layer: mean over heads per layer."""

    table: pd.DataFrame
    eff_rank: np.ndarray  # (L, h)
    asymmetry: np.ndarray  # (L, h)
    frac_complex: np.ndarray  # (L, h)
    per_head: pd.DataFrame
    per_layer: pd.DataFrame
    low_threshold: float
    high_threshold: float
    d: int
    d_head: int

    @property
    def global_stats(self) -> dict:
        eff = self.eff_rank
        return {"min": eff.min(), "max": eff.max(), "mean": eff.mean(), "std": eff.std()}

    @property
    def above_random(self) -> float:
        """Share of heads with asymmetry above `random_asymmetry(d)`, i.e. tr(A^2) < ||A||_F^2 / d."""
        return float((self.table.asymmetry > random_asymmetry(self.d)).mean())

    def heads_in(self, category: str) -> list[int]:
        return self.per_head[self.per_head.category == category]["head"].tolist()

    def sentences(self) -> list[str]:
        t, eff, per_layer, rand = self.table, self.eff_rank, self.per_layer, random_asymmetry(self.d)
        L, h = eff.shape
        lowest, highest = int(per_layer.loc[per_layer["mean"].idxmin(), "layer"]), int(per_layer.loc[per_layer["mean"].idxmax(), "layer"])
        rot = t.loc[t.frac_complex.idxmax()]
        return [
            f"Over all {L} x {h} heads the kernel effective rank is {eff.mean():.1f} on average "
            f"({eff.mean() / self.d_head:.0%} of d_head = {self.d_head}; range {eff.min():.1f}-{eff.max():.1f}); layer {lowest} "
            f"has the lowest mean ({per_layer['mean'].min():.1f}) and layer {highest} the highest ({per_layer['mean'].max():.1f}).",
            f"Mean asymmetry is {t.asymmetry.mean():.3f} (range {t.asymmetry.min():.3f}-{t.asymmetry.max():.3f}); "
            f"{self.above_random:.0%} of heads are more asymmetric than independent random weights ({rand:.3f}), "
            f"i.e. have tr(A^2) < ||A||_F^2 / d.",
            f"On average {t.frac_complex.mean():.1%} of a head's possibly-nonzero eigenvalues are complex "
            f"(rotation-like pairs); the most rotational head is layer {int(rot['layer'])}, "
            f"head {int(rot['head'])} ({t.frac_complex.max():.1%}).",
            f"Low-rank heads (per-head mean effective rank <= 25th percentile {self.low_threshold:.1f}): "
            f"{self.heads_in('low-rank')}; high-rank heads (>= 75th percentile {self.high_threshold:.1f}): "
            f"{self.heads_in('high-rank')}.",
        ]


def _per_head(table: pd.DataFrame, grids: dict) -> tuple[pd.DataFrame, float, float]:
    eff = grids["eff_rank"]
    head_means = eff.mean(axis=0)
    low, high = (np.percentile(head_means, q) for q in RANK_QUANTILES)
    category = np.where(head_means <= low, "low-rank", np.where(head_means >= high, "high-rank", "mid"))
    per_head = pd.DataFrame({"head": np.arange(eff.shape[1]), "kv_head": table.loc[table.layer == 0, "kv_head"].to_numpy(),
                             "mean": head_means, "std": eff.std(axis=0), "min": eff.min(axis=0), "max": eff.max(axis=0),
                             "asymmetry": grids["asymmetry"].mean(axis=0), "frac_complex": grids["frac_complex"].mean(axis=0),
                             "category": category})
    return per_head, low, high


def kernel_survey(adapter: WeightAdapter, complex_rtol: float) -> KernelSurvey:
    """`KernelSurvey` of every layer x head (score scale included)."""
    table = kernel_table(adapter, scaled=True, rtol=complex_rtol)
    grids = {col: table.pivot(index="layer", columns="head", values=col).to_numpy()
             for col in ("eff_rank", "asymmetry", "frac_complex")}
    per_head, low, high = _per_head(table, grids)
    per_layer = (table.groupby("layer")
                 .agg(mean=("eff_rank", "mean"), std=("eff_rank", "std"), min=("eff_rank", "min"), max=("eff_rank", "max"),
                      asymmetry=("asymmetry", "mean"), frac_complex=("frac_complex", "mean"))
                 .reset_index())
    return KernelSurvey(table=table, per_head=per_head, per_layer=per_layer, low_threshold=low, high_threshold=high,
                        d=adapter.dims.d, d_head=adapter.dims.d_head, **grids)


def plot_kernel_survey(survey: KernelSurvey):
    """(L, h) heatmaps of effective rank, asymmetry and the fraction of complex eigenvalues."""
    L = survey.eff_rank.shape[0]
    fig, axes = subplots(1, 3, width=5.0, height=max(3.0, 0.16 * L + 1.5))
    heatmap(axes[0, 0], survey.eff_rank, "Kernel effective rank", "head", "layer", f"effective rank (max {survey.d_head})",
            vmin=1)
    heatmap(axes[0, 1], survey.asymmetry, "Asymmetry ||A - A^T|| / ||A||", "head", "layer", "asymmetry", vmin=0)
    heatmap(axes[0, 2], survey.frac_complex, "Fraction of complex eigenvalues", "head", "layer", "fraction", vmin=0, vmax=1)
    fig.tight_layout()
    return fig


# --- W_down --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DownProjectionSpectrum:
    """Singular values s of one layer's W_down (d x D_ff), variance shares s_i^2 / sum s^2, their
    cumulative sums, n99 = fewest directions holding 99% of sum s^2, condition number s_1 / s_min."""

    layer: int
    shape: tuple[int, int]  # (d, D_ff)
    singular_values: np.ndarray  # (min(d, D_ff),) descending, float64
    variance: np.ndarray
    cumulative: np.ndarray
    n99: int
    condition: float

    def milestones(self) -> pd.DataFrame:
        table = pd.DataFrame({"variance": list(ENERGY_MILESTONES)})
        table["components"] = [int((self.cumulative < m - 1e-12).sum()) + 1 for m in table.variance]
        return table

    def summary(self) -> dict:
        s = self.singular_values
        return {"shape": f"{self.shape[0]} x {self.shape[1]}", "99% variance at": f"{self.n99}/{s.size}",
                "largest singular value": s[0], "smallest singular value": s[-1], "condition number": self.condition}

    def sentences(self) -> list[str]:
        return [f"W_down of layer {self.layer} needs {self.n99} of {self.singular_values.size} singular directions for "
                f"99% of its variance (condition number {self.condition:.3g})."]


def down_projection(adapter: WeightAdapter, layer: int) -> DownProjectionSpectrum:
    """`DownProjectionSpectrum` of W_down of `layer` (singular values via the small Gram matrix)."""
    w_down = adapter.ffn(layer).w_out  # (d, D_ff)
    s = singular_values(w_down).numpy()
    return DownProjectionSpectrum(
        layer=layer, shape=tuple(int(n) for n in w_down.shape), singular_values=s, variance=s**2 / (s**2).sum(),
        cumulative=cumulative_share(s**2), n99=components_for_variance(s**2, 0.99),
        condition=s[0] / s[-1] if s[-1] > 0 else float("inf"),
    )


def plot_down_projection(down: DownProjectionSpectrum):
    fig, axes = subplots(1, 2, width=5.5, height=3.8)
    axes[0, 0].plot(down.variance)
    axes[0, 0].set(title="Variance explained per component", xlabel="component", ylabel="share")
    axes[0, 1].plot(down.cumulative)
    axes[0, 1].axhline(0.99, color="r", linestyle="--", label="99%")
    axes[0, 1].axvline(down.n99, color="gray", linestyle=":", label=f"n = {down.n99}")
    axes[0, 1].set(title=f"Cumulative variance (99% at {down.n99}/{down.singular_values.size})", xlabel="component")
    axes[0, 1].legend(fontsize=8)
    fig.suptitle(f"W_down {down.shape} — layer {down.layer}")
    fig.tight_layout()
    return fig


# --- the report ----------------------------------------------------------------------------------

def kernel_caveats(d_head: int, h: int, h_kv: int, scale: float) -> list[str]:
    """What the kernel is and what it leaves out (the report's bullets)."""
    return [
        f"A_h = W_Q_h^T W_K_h (d x d, rank <= d_head = {d_head}), never formed: its nonzero eigenvalues are those of "
        "the d_head x d_head matrix W_K_h W_Q_h^T, its SVD comes from thin QR factors of W_Q_h^T and W_K_h^T, and "
        "||A||_F^2 = tr((W_Q W_Q^T)(W_K W_K^T)), tr(A A) = tr((W_K W_Q^T)^2) give the asymmetry "
        "sqrt(2 (1 - tr(A A) / ||A||_F^2)) (see `utils/metrics/kernels.py`).",
        f"GQA: query head h reads KV head `kv_head_of[h]` ({h} query heads on {h_kv} KV heads).",
        f"Magnitudes include the score scale {scale:.4g}; it does not change ranks, asymmetry, energy shares, "
        "complex fractions or subspaces.",
        "Left out: rotary position embeddings (the true kernel between positions i and j is W_Q^T R_(j-i) W_K), "
        "Gemma's per-head q/k RMSNorms, and the gains of the pre-attention norm.",
    ]


def kernels_report(loaded, attn: AttentionWeights, spec: HeadSpectrum, survey: KernelSurvey,
                   down: DownProjectionSpectrum, findings: list[str], out) -> Report:
    """Notebook 02's report.md: findings, caveats, the head, all heads, W_down (figures in `out`)."""
    report = Report.for_notebook("02_attention_kernels", loaded)
    report.model_section(loaded)
    report.heading("Findings").bullets(findings)
    report.heading("What the kernel is, and what it leaves out")
    report.bullets(kernel_caveats(spec.d_head, survey.eff_rank.shape[1], int(attn.k.shape[0]), attn.scale))
    report.heading(f"Layer {spec.layer}, head {spec.head} (KV head {spec.kv_head})").table(spec.summary())
    report.figure(out / "head_kernel_spectrum.png", "Eigenvalue magnitudes, complex plane and cumulative energy")
    report.heading("Cumulative spectral energy", level=3).table(spec.milestones())
    report.heading("Top 20 eigenvalues", level=3).table(spec.top_eigenvalues(20), digits=6)
    report.heading("All layers x heads")
    report.paragraph("Per-head metrics are in `attn_kernel_heads.csv` (one row per layer and query head).")
    report.table(survey.global_stats)
    report.figure(out / "heads_heatmaps.png", "Effective rank, asymmetry and complex fraction per layer and head")
    report.heading("Per head (mean over layers)", level=3).table(survey.per_head)
    report.heading("Per layer (mean over heads)", level=3).table(survey.per_layer)
    report.heading(f"W_down SVD, layer {down.layer}")
    report.table(down.summary())
    report.table(down.milestones())
    report.figure(out / "w_down_svd.png", "W_down variance per component and cumulative")
    return report
