"""Notebook 04's analysis: CKA blocks, logit lens, drift, activation spectra and the embedding
spectrum of one streaming pass, and the findings built from them (Prisma write-up,
"Representation Analysis", "Activation Effective Rank", "Activation Eigenspectra", "Embedding vs
Final Activation Spectra").

Layer index convention: 0 = embeddings (input of block 1), i = residual stream after block i
(before the final norm), L + 1 = the final-normed last state. `measure` runs the pass,
`cka_structure`, `embedding_vs_final` and `outlier_tokens` compute from it, `findings` turns the
results into `RepresentationFindings` (fields the tests check, `.sentences()` for the report).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib.patches import Rectangle

from utils.analyses.parameters import NotebookParameters
from utils.cache_files import keyed_entry, read_cache, write_cache
from utils.engine.corpus import TokenSample, sample_tokens
from utils.engine.layerwise import (
    LayerConsumer,
    LayerwiseDrift,
    LayerwiseLogitLens,
    LayerwiseModel,
    ResidualStats,
    run_layerwise,
    sample_positions,
    statistic_mask,
)
from utils.machine import peak_rss_bytes
from utils.metrics.cka import cka_blocks, cka_matrix, cka_sample_warning
from utils.metrics.covariance import StreamingCovariance
from utils.metrics.spectra import cumulative_share, effective_rank, spectrum_metrics
from utils.models.loading import LoadedModel, StreamedModel
from utils.reporting.plotting import depth_colors, heatmap, line_panel, save_figure, subplots
from utils.reporting.report import Report, fmt

OUTLIER_RATIO = 20.0  # a token norm this many times the layer's median is an outlier worth a finding


@dataclass
class RepresentationsParameters(NotebookParameters):
    """Notebook 04's parameters (see its parameters cell)."""

    corpus: str = "stdlib-docs"
    n_sequences: int = 32
    seq_len: int = 128
    seed: int = 0
    skip_first: int = 1
    batch_size: int = 8
    keep_samples: int = 2048
    cka_estimator: str = "debiased"
    block_threshold: float = 0.9
    lens_tokens: int = 512
    max_logit_elements: int = 16777216
    cache: bool = True

    AT_LEAST = {"n_sequences": 1, "seq_len": 2, "batch_size": 1, "keep_samples": 4, "lens_tokens": 0,
                "max_logit_elements": 1}
    CHOICES = {"cka_estimator": ("debiased", "linear")}
    INTERVALS = {"block_threshold": "(0, 1]"}

    @property
    def debiased(self) -> bool:
        return self.cka_estimator == "debiased"


@dataclass
class RepresentationPass:
    """One layer-major run with the logit lens, the drift and the embedding's covariance as
    consumers; every residual state reduced to its eigenvalues as the run reaches it (memory of
    one d x d accumulator, not L + 2)."""

    tokens: TokenSample
    eigenvalues: list[np.ndarray]  # L + 2 residual states (0 embeddings .. L + 1 final-normed), float64 descending
    samples: torch.Tensor | None  # (L + 2, keep_samples, d) float32: the same tokens at every state, for CKA
    sample_positions: torch.Tensor  # (keep_samples,) flat indices into tokens.input_ids.view(-1)
    n_tokens: int  # statistic tokens (the first skip_first positions of every window left out)
    lens: pd.DataFrame | None  # one row per layer 0..L (None: encoder without an LM head)
    drift: pd.DataFrame  # one row per step 1..L (+ final norm)
    has_final_norm: bool
    layer_names: list[str]  # "emb", "1", ..., "L"
    embedding_eigenvalues: np.ndarray  # (d,) covariance of the input embedding's V rows (read once, in the pass)
    embedding_singular: np.ndarray  # (d,) singular values of the embedding matrix
    engine: str = ""  # how the weights were held (`LayerwiseModel.describe`)
    from_cache: bool = False

    @property
    def n_cka(self) -> int:
        return self.samples.shape[1]

    def state_dict(self) -> dict:
        """Plain tensors, lists and strings (`torch.load(weights_only=True)` reads it back)."""
        return {"eigenvalues": [torch.from_numpy(e) for e in self.eigenvalues], "samples": self.samples,
                "sample_positions": self.sample_positions, "n_tokens": self.n_tokens,
                "lens": _frame_state(self.lens), "drift": _frame_state(self.drift),
                "has_final_norm": self.has_final_norm, "layer_names": self.layer_names,
                "embedding_eigenvalues": torch.from_numpy(self.embedding_eigenvalues),
                "embedding_singular": torch.from_numpy(self.embedding_singular), "engine": self.engine}

    @classmethod
    def from_state_dict(cls, state: dict, tokens: TokenSample) -> "RepresentationPass":
        return cls(tokens, [e.numpy() for e in state["eigenvalues"]], state["samples"], state["sample_positions"],
                   int(state["n_tokens"]), _frame(state["lens"]), _frame(state["drift"]), state["has_final_norm"],
                   state["layer_names"], state["embedding_eigenvalues"].numpy(), state["embedding_singular"].numpy(),
                   state["engine"], from_cache=True)


def _frame_state(frame: pd.DataFrame | None) -> dict | None:
    return None if frame is None else {"columns": list(frame.columns), **{c: frame[c].tolist() for c in frame}}


def _frame(state: dict | None) -> pd.DataFrame | None:
    return None if state is None else pd.DataFrame({c: state[c] for c in state["columns"]})


class EmbeddingCovariance(LayerConsumer):
    """Covariance of the input embedding's V rows, accumulated while the engine holds it."""

    def __init__(self, d: int):
        self.accumulator = StreamingCovariance(d)

    def on_embedding(self, weight: torch.Tensor) -> None:
        for rows in weight.detach().split(4096):  # (4096, d) at a time: 2 float64 copies of 64 MB at d = 2048
            self.accumulator.update(rows)

    def spectra(self) -> tuple[np.ndarray, np.ndarray]:
        """(covariance eigenvalues, singular values of E): E^T E = sum_outer, so s = sqrt(eig(E^T E))."""
        singular = np.sqrt(np.clip(np.linalg.eigvalsh(self.accumulator.sum_outer.cpu().numpy())[::-1], 0, None))
        return self.accumulator.eigenvalues().numpy(), singular.copy()


CACHE_VERSION = 2  # the layout of a cache entry (RepresentationPass.state_dict)


def _read_entry(path: Path, key: dict, tokens: TokenSample) -> RepresentationPass:
    """A cache entry read back; anything else (another key, an old layout) raises: a miss."""
    entry = torch.load(path, weights_only=True)
    if entry.get("key") != key:
        raise ValueError("its key differs")
    return RepresentationPass.from_state_dict(entry["run"], tokens)


def _run(lw: LayerwiseModel, tokens: TokenSample, p: RepresentationsParameters) -> RepresentationPass:
    adapter, dims = lw.adapter, lw.adapter.dims
    _, stat = statistic_mask(tokens.input_ids, None, p.skip_first)  # the model still sees skipped positions
    positions = sample_positions(stat, p.keep_samples, p.seed)
    residual = ResidualStats(dims.L, dims.d, lw.device, positions, tokens.input_ids.shape[1], keep=False,
                             route="auto", n_rows=int(stat.sum()))
    lens = LayerwiseLogitLens(adapter, tuple(tokens.input_ids.shape), p.lens_tokens, p.seed, mask=stat,
                              max_logit_elements=p.max_logit_elements) if adapter.is_causal_lm else None
    drift = LayerwiseDrift(dims.L, has_final_norm=adapter.final_norm is not None)
    embedding = EmbeddingCovariance(dims.d)
    run_layerwise(lw, tokens, [c for c in (residual, lens, drift, embedding) if c is not None],
                  batch_size=p.batch_size, skip_first=p.skip_first)
    names = ["emb"] + [str(i) for i in range(1, dims.L + 1)]
    return RepresentationPass(tokens, [residual.eigenvalues[j] for j in range(dims.L + 2)], residual.samples,
                              positions, int(stat.sum()), lens.result() if lens is not None else None, drift.result(),
                              drift.has_final_norm, names, *embedding.spectra(), lw.describe())


def measure(m: LoadedModel | StreamedModel, p: RepresentationsParameters) -> RepresentationPass:
    """Sample the windows and run the model once, block by block (`utils.engine.layerwise`):
    residual covariances, CKA samples, logit lens, drift and the embedding's covariance. With
    `p.cache`, the whole pass is cached (`cache_dir()/representations`), keyed by the weights'
    identity, the token sample and every parameter it depends on."""
    tokens = sample_tokens(m.tokenizer, p.corpus, p.n_sequences, p.seq_len, p.seed)
    lw = LayerwiseModel.from_model(m)
    key = lw.run_key(m.params, tokens, what="04_representations", layout=CACHE_VERSION, skip_first=p.skip_first,
                     batch_size=p.batch_size, keep_samples=p.keep_samples, seed=p.seed, lens_tokens=p.lens_tokens,
                     max_logit_elements=p.max_logit_elements)
    path = keyed_entry("representations", key)
    if p.cache:
        cached = read_cache(path, lambda f: _read_entry(f, key, tokens), "representations cache entry")
        if cached is not None:
            return cached
    run = _run(lw, tokens, p)
    if p.cache:
        write_cache(path, lambda f: torch.save({"key": key, "run": run.state_dict()}, f), "representations cache entry")
    return run


@dataclass
class CKAStructure:
    """CKA between the states 0..L and its blocks (maximal runs of adjacent CKA >= threshold)."""

    matrix: np.ndarray  # (L + 1, L + 1), index 0 = embeddings
    blocks: list[tuple[int, int]]  # (first, last) layer of each block
    adjacent: np.ndarray  # (L,) CKA of layer j with j + 1
    warning: str  # "" when the sample suffices
    threshold: float

    @property
    def multi_layer_blocks(self) -> list[tuple[int, int]]:
        return [(a, b) for a, b in self.blocks if b > a]

    def block_mean(self, a: int, b: int) -> float:
        return float(self.matrix[a:b + 1, a:b + 1].mean())

    @property
    def sharpest_boundary(self) -> int:
        """j: the lowest adjacent CKA is between layers j and j + 1."""
        return int(np.argmin(self.adjacent))


def cka_structure(run: RepresentationPass, d: int, p: RepresentationsParameters) -> CKAStructure:
    L = len(run.layer_names) - 1
    cka = cka_matrix(run.samples[: L + 1], debiased=p.debiased)
    return CKAStructure(cka, cka_blocks(cka, p.block_threshold), np.diagonal(cka, offset=1),
                        cka_sample_warning(run.n_cka, d, p.debiased), p.block_threshold)


@dataclass
class EmbeddingComparison:
    """The embedding matrix's row-covariance spectrum against the final-normed activations'."""

    embedding_eigenvalues: np.ndarray  # (d,) covariance of the V rows of E
    final_eigenvalues: np.ndarray  # (d,) covariance of the final-normed last state
    embedding: dict  # spectrum_metrics of the embedding
    final: dict  # spectrum_metrics of the final state
    embedding_eff_rank_singular: float  # effective rank on the singular values of E (the seed's convention)

    def table(self) -> pd.DataFrame:
        return pd.DataFrame([
            {"spectrum": "embedding matrix (row covariance)", **self.embedding,
             "eff_rank_singular_values": self.embedding_eff_rank_singular},
            {"spectrum": "final-normed activations", **self.final, "eff_rank_singular_values": float("nan")},
        ])


def embedding_vs_final(run: RepresentationPass) -> EmbeddingComparison:
    """Spectra of E (V, d) (its row covariance, accumulated in the pass) and of residual state L + 1."""
    emb, singular = run.embedding_eigenvalues, run.embedding_singular
    final = run.eigenvalues[len(run.layer_names)]
    return EmbeddingComparison(emb, final, spectrum_metrics(emb), spectrum_metrics(final), effective_rank(singular))


@dataclass
class OutlierTokens:
    """The largest ratio of a token's norm to the median norm of its layer, over the CKA sample."""

    layer: int  # state index 0..L
    ratio: float
    position: int  # position of that token in its window

    @property
    def massive(self) -> bool:
        return self.ratio > OUTLIER_RATIO


def outlier_tokens(run: RepresentationPass, L: int, seq_len: int) -> OutlierTokens:
    norms = run.samples[: L + 1].norm(dim=2)  # (L + 1, n_cka) token norms per layer
    outlier = norms.max(1).values / norms.median(1).values
    worst = int(outlier.argmax())
    return OutlierTokens(worst, float(outlier[worst]), int(run.sample_positions[norms[worst].argmax()] % seq_len))


@dataclass
class LensSummary:
    """Logit-lens landmarks over the layers 0..L."""

    first_rank_one: int | None  # first layer whose median rank of the correct token is 1
    start_median_rank: float  # at the embeddings
    final_median_rank: float
    first_half_agreement: int  # first layer agreeing with the final top-1 on at least half the tokens
    mid_agreement: float  # at layer L // 2
    entropy_peak: int
    entropy_peak_value: float
    final_entropy: float
    start_cross_entropy: float
    final_cross_entropy: float


def lens_summary(lens: pd.DataFrame, L: int) -> LensSummary:
    at_one = lens.index[lens.median_rank <= 1].tolist()
    peak = int(lens.entropy.idxmax())
    return LensSummary(
        at_one[0] if at_one else None, lens.median_rank.iloc[0], lens.median_rank.iloc[-1],
        lens.index[lens.agreement >= 0.5].tolist()[0], lens.agreement.iloc[L // 2], peak, lens.entropy.iloc[peak],
        lens.entropy.iloc[-1], lens.cross_entropy.iloc[0], lens.cross_entropy.iloc[-1])


@dataclass
class DriftSummary:
    turn_block: int  # block with the lowest cosine to its input
    turn_cosine: float
    largest_step_block: int  # block with the largest L2 step
    largest_step: float
    final_norm_l2: float | None  # the final norm's step (None without a final norm)
    final_norm_cosine: float | None


def drift_summary(drift: pd.DataFrame, has_final_norm: bool) -> DriftSummary:
    blocks = drift[drift.step != "final_norm"]
    turn = blocks.loc[blocks.cosine.idxmin()]
    return DriftSummary(int(turn.layer), turn.cosine, int(blocks.loc[blocks.l2.idxmax()].layer), blocks.l2.max(),
                        drift.l2.iloc[-1] if has_final_norm else None,
                        drift.cosine.iloc[-1] if has_final_norm else None)


@dataclass
class Bottleneck:
    """The residual state (after a block) of lowest effective rank."""

    layer: int
    eff_rank: float
    n90: int
    embedding_eff_rank: float
    last_eff_rank: float


def bottleneck(spectra: pd.DataFrame) -> Bottleneck:
    inner = spectra.iloc[1:]
    low = inner.loc[inner.eff_rank.idxmin()]
    return Bottleneck(int(low.layer), low.eff_rank, int(low.n90), spectra.eff_rank.iloc[0], spectra.eff_rank.iloc[-1])


@dataclass
class RepresentationFindings:
    """What notebook 04's findings state, as numbers; `sentences()` writes them."""

    layer_names: list[str]
    V: int
    d: int
    cka: CKAStructure
    lens: LensSummary | None  # None: encoder without an LM head
    model_name: str
    drift: DriftSummary
    bottleneck: Bottleneck
    outliers: OutlierTokens
    embedding: EmbeddingComparison

    def _cka_sentences(self) -> list[str]:
        c, names = self.cka, self.layer_names
        if c.multi_layer_blocks:
            described = ", ".join(f"{names[a]}–{names[b]} (mean CKA {fmt(c.block_mean(a, b), 3)})"
                                  for a, b in c.multi_layer_blocks)
            out = [f"CKA blocks (adjacent CKA >= {c.threshold}): {described}."]
        else:
            out = [f"No two adjacent layers reach CKA {c.threshold}: no block structure at this threshold."]
        j = c.sharpest_boundary
        out.append(f"The sharpest boundary is between layers {names[j]} and {names[j + 1]} "
                   f"(adjacent CKA {fmt(c.adjacent[j], 3)}); CKA of the embeddings with the last layer is "
                   f"{fmt(c.matrix[0, len(names) - 1], 3)}.")
        return out + ([f"Caution: {c.warning}"] if c.warning else [])

    def _lens_sentences(self) -> list[str]:
        s, names = self.lens, self.layer_names
        if s is None:
            return [f"Logit lens skipped: {self.model_name} is an encoder without an LM head."]
        reach = (f"The correct next token reaches median rank 1 at layer {names[s.first_rank_one]}"
                 if s.first_rank_one is not None else
                 f"The median rank of the correct token never reaches 1 (final: {fmt(s.final_median_rank)})")
        return [
            reach + f"; it starts at median rank {fmt(s.start_median_rank)} of {self.V} at the embeddings.",
            f"Agreement with the final top-1 first reaches 50% at layer {names[s.first_half_agreement]}; "
            f"at layer {names[(len(names) - 1) // 2]} it is {fmt(s.mid_agreement, 3)}.",
            f"Prediction entropy peaks at layer {names[s.entropy_peak]} ({fmt(s.entropy_peak_value, 3)} nats) "
            f"and ends at {fmt(s.final_entropy, 3)}; cross-entropy falls from "
            f"{fmt(s.start_cross_entropy, 3)} to {fmt(s.final_cross_entropy, 3)} nats."]

    def _state_sentences(self) -> list[str]:
        r, b, o, e = self.drift, self.bottleneck, self.outliers, self.embedding
        out = [f"Block {r.turn_block} turns the representation most (cosine {fmt(r.turn_cosine, 3)} to its input); "
               f"the largest L2 step among blocks is block {r.largest_step_block} ({fmt(r.largest_step, 3)})"
               + (f"; the final norm moves it by {fmt(r.final_norm_l2, 3)} (cosine {fmt(r.final_norm_cosine, 3)})."
                  if r.final_norm_l2 is not None else "."),
               f"Effective-rank bottleneck: layer {b.layer} (eff. rank {fmt(b.eff_rank, 3)}, n90 {b.n90}), "
               f"against {fmt(b.embedding_eff_rank, 3)} at the embeddings and "
               f"{fmt(b.last_eff_rank, 3)} after the last block (width {self.d})."]
        if o.massive:
            out.append(f"Outlier tokens: at layer {self.layer_names[o.layer]} the largest token norm is "
                       f"{fmt(o.ratio, 3)}x the median (position {o.position} of its window); tokens like this "
                       f"dominate the covariances of the layers where the ratio is large, so low effective ranks "
                       f"there reflect a few massive activations rather than all tokens.")
        out.append(f"Embedding matrix eff. rank {fmt(e.embedding['eff_rank'], 3)} vs final-normed activations "
                   f"{fmt(e.final['eff_rank'], 3)} (ratio {fmt(e.embedding['eff_rank'] / e.final['eff_rank'], 3)}); "
                   f"on the seed's singular-value convention the embedding's eff. rank is "
                   f"{fmt(e.embedding_eff_rank_singular, 3)}.")
        return out

    def sentences(self) -> list[str]:
        return self._cka_sentences() + self._lens_sentences() + self._state_sentences()


def findings(loaded: LoadedModel | StreamedModel, run: RepresentationPass, cka: CKAStructure, spectra: pd.DataFrame,
             embedding: EmbeddingComparison, p: RepresentationsParameters) -> RepresentationFindings:
    dims = loaded.adapter.dims
    return RepresentationFindings(
        run.layer_names, dims.V, dims.d, cka, lens_summary(run.lens, dims.L) if run.lens is not None else None,
        loaded.adapter.name, drift_summary(run.drift, run.has_final_norm), bottleneck(spectra),
        outlier_tokens(run, dims.L, p.seq_len), embedding)


# --- figures ---------------------------------------------------------------------------------------

def cka_figure(cka: CKAStructure, run: RepresentationPass, p: RepresentationsParameters, path: Path):
    fig, axes = subplots(1, 1, 7, 6)
    ax, L = axes[0, 0], len(run.layer_names) - 1
    heatmap(ax, cka.matrix, f"{p.cka_estimator} CKA ({run.n_cka} tokens)", "layer", "layer", "CKA", vmin=0, vmax=1)
    ticks = np.arange(0, L + 1, max(1, (L + 1) // 12))
    for setter in (ax.set_xticks, ax.set_yticks):
        setter(ticks, [run.layer_names[t] for t in ticks])
    for a, b in cka.multi_layer_blocks:
        ax.add_patch(Rectangle((a - 0.5, a - 0.5), b - a + 1, b - a + 1, fill=False, edgecolor="white", lw=1.5))
    save_figure(fig, path)
    return fig


def lens_figure(lens: pd.DataFrame, path: Path):
    fig, axes = subplots(2, 2, 6, 4)
    x = lens.layer.to_numpy()
    line_panel(axes[0, 0], x, {"entropy": lens.entropy}, "Prediction entropy", "layer", "nats")
    line_panel(axes[0, 1], x, {"top-1": lens.top1_prob}, "Top-1 probability", "layer", "probability")
    line_panel(axes[1, 0], x, {"median rank": lens.median_rank}, "Median rank of the correct token", "layer", "rank")
    axes[1, 0].set_yscale("log")
    line_panel(axes[1, 1], x, {"agreement": lens.agreement}, "Agreement with the final top-1", "layer", "fraction")
    save_figure(fig, path)
    return fig


def drift_figure(drift: pd.DataFrame, path: Path):
    fig, axes = subplots(1, 2, 6, 4)
    colors = ["gray" if s == "final_norm" else "C0" for s in drift.step]
    axes[0, 0].bar(drift.layer, drift.cosine, color=colors)
    axes[0, 0].set(title="Cosine similarity to the previous state", xlabel="layer (gray: final norm)", ylabel="cosine")
    axes[0, 1].bar(drift.layer, drift.l2, color=colors)
    axes[0, 1].set(title="L2 distance to the previous state", xlabel="layer (gray: final norm)", ylabel="L2")
    save_figure(fig, path)
    return fig


def dimensionality_figure(spectra: pd.DataFrame, path: Path):
    fig, axes = subplots(1, 1, 7, 4)
    line_panel(axes[0, 0], spectra.layer, {"effective rank": spectra.eff_rank,
                                           "participation ratio": spectra.participation_ratio, "n90": spectra.n90},
               "Activation dimensionality by depth (0 = embeddings)", "layer", "dimensions")
    save_figure(fig, path)
    return fig


def eigenspectra_figure(eigs: list[np.ndarray], path: Path):
    fig, axes = subplots(1, 2, 6, 4)
    for e, c in zip(eigs, depth_colors(len(eigs))):
        share = e / e.sum()
        axes[0, 0].loglog(np.arange(1, e.size + 1), np.clip(share, 1e-12, None), color=c, lw=1)
        axes[0, 1].plot(np.arange(1, e.size + 1), cumulative_share(e), color=c, lw=1)
    axes[0, 0].set(title="Eigenvalue spectra (blue: early, red: late)", xlabel="rank", ylabel="variance share")
    axes[0, 1].axhline(0.9, color="k", ls=":", lw=1)
    axes[0, 1].set(title="Cumulative variance", xlabel="components", ylabel="share", xscale="log")
    save_figure(fig, path)
    return fig


def embedding_figure(embedding: EmbeddingComparison, path: Path):
    fig, axes = subplots(1, 1, 7, 4)
    for e, label in [(embedding.embedding_eigenvalues, "embedding matrix"),
                     (embedding.final_eigenvalues, "final activations")]:
        axes[0, 0].loglog(np.arange(1, e.size + 1), np.clip(e / e.sum(), 1e-12, None), label=label)
    axes[0, 0].set(title="Embedding vs final activation spectrum", xlabel="rank", ylabel="variance share")
    axes[0, 0].legend()
    save_figure(fig, path)
    return fig


# --- report ------------------------------------------------------------------------------------------

def write_report(loaded: LoadedModel | StreamedModel, run: RepresentationPass, spectra: pd.DataFrame, found: RepresentationFindings,
                 p: RepresentationsParameters, out: Path) -> Path:
    report = Report.for_notebook("04_representations", loaded)
    report.model_section(loaded, **{"corpus": p.corpus, "tokens": run.n_tokens,
                  "positions left out per window": p.skip_first,
                  "windows": f"{p.n_sequences} x {p.seq_len}", "CKA estimator": p.cka_estimator,
                  "CKA tokens per layer": run.n_cka,
                  "logit-lens tokens": run.lens.n_tokens.iloc[0] if run.lens is not None else "n/a (no LM head)",
                  "weights held": run.engine + (" (statistics from the cache)" if run.from_cache else ""),
                  "peak memory of the kernel (RSS)": f"{peak_rss_bytes() / 2**30:.2f} GiB"})
    report.heading("Findings").bullets(found.sentences())
    report.heading("CKA")
    report.figure(out / "cka.png", f"{p.cka_estimator} CKA between layers (0 = embeddings); white squares: blocks")
    if run.lens is not None:
        report.heading("Logit lens")
        report.figure(out / "logit_lens.png", "Logit lens by layer")
        report.table(run.lens.drop(columns="n_tokens"))
    report.heading("Representation drift")
    report.figure(out / "drift.png", "Change between consecutive states")
    report.heading("Activation spectra")
    report.paragraph("Layer 0 = embeddings, layer i = after block i. Effective rank on covariance eigenvalues.")
    report.figure(out / "effective_rank.png", "Effective rank, participation ratio and n90 by depth")
    report.figure(out / "eigenspectra.png", "Eigenvalue spectra and cumulative variance, coloured by depth")
    report.table(spectra)
    report.figure(out / "embedding_vs_final.png", "Embedding matrix vs final activation spectrum")
    report.table(found.embedding.table())
    return report.write(out / "report.md")
