"""Notebook 05's analysis: pre/post-activation covariance spectra of every FFN, the NerVE metrics
(NerVE sec. 2: spectral entropy SE, participation ratio PR, early eigenvalue enrichment EEE, JS
divergence between the spectra) and the verdict on NerVE's finding that the nonlinearity raises SE
and PR and lowers EEE, layer by layer.

`plan` fixes the tokens, the route and the memory of one layer (`FFNPlan`); `measure` runs the
model once, block by block (`utils.engine.layerwise`), and reduces each layer to eigenvalues
before the next block (`FFNSpectra`: sink-free and all-token tables); `nerve_verdict` and `findings` turn the tables into
`FFNFindings` (fields the tests check, `.sentences()` for the report).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from utils.analyses.parameters import NotebookParameters, check_skip_first
from utils.cache_files import keyed_entry, read_cache, write_cache
from utils.engine.activations import default_ffn_budget
from utils.engine.corpus import TokenSample, sample_tokens
from utils.engine.layerwise import FFNStats, LayerwiseModel, ffn_layer_bytes, run_layerwise
from utils.machine import peak_rss_bytes
from utils.metrics.spectra import nerve_metrics, normalized
from utils.models.loading import LoadedModel, StreamedModel
from utils.models.shapes import SHAPES
from utils.reporting.plotting import save_figure, subplots
from utils.reporting.report import Report

COLUMNS = ["layer", "se_pre", "se_post", "pr_pre", "pr_post", "eee_pre", "eee_post", "js", "pr_gain", "se_up",
           "pr_up", "eee_down", "holds", "top1_pre", "top1_post", "rank_pre", "rank_post", "n_tokens", "d_ff"]
TRENDS = {"SE rises": "se_up", "PR rises": "pr_up", "EEE falls": "eee_down"}


@dataclass
class FFNParameters(NotebookParameters):
    """Notebook 05's parameters (see its parameters cell)."""

    corpus: str = "stdlib-docs"
    n_sequences: int = 64
    seq_len: int = 128
    seed: int = 0
    skip_first: int = 1
    batch_size: int = 8
    spectra_layers: list = field(default_factory=list)
    ffn_memory_mb: int = 0
    accumulator: str = "float32"
    eigen_solver: str = "float64"
    majority: float = 0.5
    rank_rtol: float = 1e-10
    dominant_share: float = 0.5
    cache: bool = True

    AT_LEAST = {"n_sequences": 1, "seq_len": 2, "batch_size": 1, "ffn_memory_mb": 0}
    INTERVALS = {"majority": "[0, 1)", "rank_rtol": "(0, 1)", "dominant_share": "(0, 1)"}
    CHOICES = {"accumulator": ("float32", "float64"), "eigen_solver": ("float64", "float32")}

    def check(self) -> None:
        check_skip_first(self.skip_first, self.seq_len)

    @property
    def n_tokens(self) -> int:
        """Tokens entering the main (sink-free) statistics."""
        return self.n_sequences * (self.seq_len - self.skip_first)

    @property
    def n_all_tokens(self) -> int:
        """NerVE's setting: every position."""
        return self.n_sequences * self.seq_len


def spectra_layers(adapter, requested: list) -> list[int]:
    """The layers whose spectra are plotted: `requested` (negative counts from the end), or first, middle, last."""
    L = adapter.dims.L
    requested = requested or sorted({0, L // 2, L - 1})
    for i in requested:
        try:
            adapter.check_layer(i)
        except IndexError as err:
            raise ValueError(f"parameter spectra_layers: {err}") from None
    return sorted({i % L for i in requested})


QWEN_3B = SHAPES["qwen2.5-3b"]  # the report's memory projection at a 3B shape


@dataclass
class FFNPlan:
    """Tokens, memory and route of one notebook 05 run (one layer-major pass)."""

    tokens: TokenSample
    spectra_layers: list[int]
    max_rank: int  # rank of a covariance of n_tokens rows: min(D_ff, n_tokens - 1)
    rank_deficient: bool  # n_tokens - 1 < D_ff
    rank_floor: float  # eigenvalues above this fraction of the largest count in the numerical rank
    device: torch.device
    budget: int  # bytes one layer's FFN statistics may take
    route: str  # post-activation: "Gram" (N < D_ff: the N x N centred Gram, exact) or "covariance"
    pre_width: int  # width of the pre-activation problem: d when d < D_ff (through the projection's input), else D_ff
    layer_bytes: int  # one layer's FFN statistics, the only ones alive at a time
    layer_bytes_3b: int  # the same at a Qwen2.5-3B shape (D_ff = 11008) and this token count
    layerwise: LayerwiseModel  # the model, run block by block
    engine: str  # how the weights are held (`LayerwiseModel.describe`)

    def describe(self) -> str:
        d_ff = self.layerwise.adapter.dims.d_ff
        pre = (f"pre-activations as the image of the projection's input, a {self.pre_width}-wide problem with "
               f"{d_ff - self.pre_width} exact zeros (utils.metrics.linear_image)" if self.pre_width < d_ff
               else "pre-activations D_ff wide")
        return (f"one layer-major pass over the text; each layer's FFN statistics ({self.route} route for the "
                f"post-activations, {pre}; {self.layer_bytes / 2**20:.0f} MiB) reduced to eigenvalues before the next "
                f"block runs; weights {self.engine}")


def plan(m: LoadedModel | StreamedModel, p: FFNParameters) -> FFNPlan:
    """Each batch folds into the accumulator with one rounding (relative eps of its storage), so
    eigenvalues below n_batches x eps of the largest are rounding noise (float32, 64 windows in
    batches of 8: 9.5e-7; SmolLM2's measured float32 noise floor is 1.9e-8) and are not counted
    in the numerical rank. One layer's statistics must fit `ffn_memory_mb` (0: half the free
    memory): checked here, before the pass."""
    lw = LayerwiseModel.from_model(m)
    d_ff = lw.adapter.dims.d_ff
    shown = spectra_layers(lw.adapter, p.spectra_layers)
    tokens = sample_tokens(m.tokenizer, p.corpus, p.n_sequences, p.seq_len, p.seed)
    n = p.n_tokens
    if n - 1 < d_ff:
        warnings.warn(f"{n} tokens < D_ff + 1 = {d_ff + 1}: the covariances have rank <= {n - 1}, which caps "
                      f"SE at ln({n - 1}) and PR at {n - 1}; raise n_sequences or seq_len")
    rank_floor = max(p.rank_rtol, math.ceil(p.n_sequences / p.batch_size) * torch.finfo(getattr(torch, p.accumulator)).eps)
    budget = (p.ffn_memory_mb << 20) or default_ffn_budget(lw.device)
    # The Gram route pays only when every problem of the layer is narrower than D_ff: with the
    # skipped rows merged (all tokens), the largest has n_all_tokens rows.
    pre_width = min(lw.adapter.dims.d, d_ff)  # FFNStats(pre_from_input=True): d wide when d < D_ff
    n_rows = p.n_all_tokens if p.skip_first else n
    route, need = ffn_layer_bytes(n_rows, d_ff, p.accumulator, pre_width)
    if need > budget:
        raise MemoryError(f"one layer's FFN statistics need {need / 2**20:.0f} MiB ({route} route, D_ff = {d_ff}, "
                          f"{n} tokens) but ffn_memory_mb allows {budget / 2**20:.0f} MiB: raise ffn_memory_mb, or "
                          "lower n_sequences / seq_len")
    return FFNPlan(tokens, shown, min(d_ff, n - 1), n - 1 < d_ff, rank_floor, lw.device, budget, route, pre_width,
                   need, ffn_layer_bytes(n_rows, QWEN_3B["intermediate_size"], p.accumulator, QWEN_3B["hidden_size"])[1], lw,
                   lw.describe())


def layer_row(i: int, pre: np.ndarray, post: np.ndarray, rank_floor: float) -> dict:
    """NerVE metrics of one layer's descending eigenvalues, top-eigenvalue shares, numerical ranks."""
    return {"layer": i, **nerve_metrics(pre, post), "top1_pre": pre[0] / pre.sum(), "top1_post": post[0] / post.sum(),
            "rank_pre": int((pre > rank_floor * pre[0]).sum()), "rank_post": int((post > rank_floor * post[0]).sum())}


def metrics_table(rows: list[dict], tokens_used: int, d_ff: int) -> pd.DataFrame:
    """One row per layer (COLUMNS): the metrics, PR gain post/pre and the three NerVE trends."""
    t = pd.DataFrame(rows)
    t["pr_gain"] = t.pr_post / t.pr_pre
    t["se_up"] = t.se_post > t.se_pre
    t["pr_up"] = t.pr_post > t.pr_pre
    t["eee_down"] = t.eee_post < t.eee_pre
    t["holds"] = t.se_up & t.pr_up & t.eee_down
    t["n_tokens"], t["d_ff"] = tokens_used, d_ff
    return t[COLUMNS]


@dataclass
class FFNSpectra:
    """Eigenvalues and metrics of every FFN, sink-free (main) and over all tokens (NerVE's setting)."""

    eig_pre: np.ndarray  # (L, D_ff) descending, sink-free
    eig_post: np.ndarray  # (L, D_ff)
    table: pd.DataFrame  # sink-free metrics, one row per layer
    table_all: pd.DataFrame  # every position
    from_cache: bool = False  # eigenvalues read from the cache (no pass this run)


def _eigenvalues(fp: FFNPlan, p: FFNParameters) -> dict[str, torch.Tensor]:
    """(L, D_ff) eigenvalues of every FFN, sink-free ("pre", "post") and over every position
    ("pre_all", "post_all"), from one layer-major pass; one layer's statistics alive at a time."""
    lw = fp.layerwise
    L, d_ff = lw.adapter.dims.L, lw.adapter.dims.d_ff
    stats = FFNStats(range(L), d_ff, lw.device, p.accumulator, keep=False, keep_skipped=p.skip_first > 0,
                     route="auto", n_rows=p.n_all_tokens if p.skip_first else p.n_tokens, solver=p.eigen_solver,
                     pre_from_input=True)
    run_layerwise(lw, fp.tokens, [stats], batch_size=p.batch_size, skip_first=p.skip_first)
    kinds = ("pre", "post", "pre_all", "post_all") if p.skip_first else ("pre", "post")
    eig = {k: torch.from_numpy(np.stack([stats.eigenvalues[i][k] for i in range(L)])) for k in kinds}
    if not p.skip_first:  # every position is in the main statistics
        eig["pre_all"], eig["post_all"] = eig["pre"], eig["post"]
    return eig


def measure(m: LoadedModel | StreamedModel, fp: FFNPlan, p: FFNParameters) -> FFNSpectra:
    """Every FFN's spectra from one layer-major pass (`utils.engine.layerwise.FFNStats`, Gram route
    when N < D_ff); with `p.cache` the eigenvalues are cached (`cache_dir()/ffn_spectra`)."""
    key = fp.layerwise.run_key(m.params, fp.tokens, what="05_ffn_eigenspectrum", skip_first=p.skip_first,
                               batch_size=p.batch_size, accumulator=p.accumulator, route=fp.route,
                               pre_width=fp.pre_width, eigen_solver=p.eigen_solver)
    path = keyed_entry("ffn_spectra", key)
    cached = read_cache(path, lambda f: torch.load(f, weights_only=True), "FFN spectra cache entry") if p.cache else None
    from_cache = cached is not None and cached.get("key") == key
    if from_cache:
        eig = cached["eigenvalues"]
    else:
        eig = _eigenvalues(fp, p)
        if p.cache:
            write_cache(path, lambda f: torch.save({"key": key, "eigenvalues": eig}, f), "FFN spectra cache entry")
    e = {k: v.numpy() for k, v in eig.items()}
    L, d_ff = e["pre"].shape
    rows = [layer_row(i, e["pre"][i], e["post"][i], fp.rank_floor) for i in range(L)]
    rows_all = [layer_row(i, e["pre_all"][i], e["post_all"][i], fp.rank_floor) for i in range(L)]
    return FFNSpectra(e["pre"], e["post"], metrics_table(rows, p.n_tokens, d_ff),
                      metrics_table(rows_all, p.n_all_tokens, d_ff), from_cache)


@dataclass
class NerveVerdict:
    """NerVE's finding on one table: HOLDS when each trend holds in more than `majority` of the
    layers, HOLDS PARTLY when some trend does, else DOES NOT HOLD."""

    label: str
    counts: dict[str, int]  # trend -> layers where it holds
    overall: dict[str, bool]  # trend -> holds in a majority of layers
    layers_all_three: int  # layers where all three trends hold


def nerve_verdict(table: pd.DataFrame, majority: float) -> NerveVerdict:
    L = len(table)
    counts = {name: int(table[column].sum()) for name, column in TRENDS.items()}
    overall = {name: k > majority * L for name, k in counts.items()}
    label = "HOLDS" if all(overall.values()) else "HOLDS PARTLY" if any(overall.values()) else "DOES NOT HOLD"
    return NerveVerdict(label, counts, overall, int(table.holds.sum()))


@dataclass
class FFNFindings:
    """What notebook 05's findings state, as numbers; `sentences()` writes them."""

    model_name: str
    d: int
    d_ff: int
    skip_first: int
    n_tokens: int
    n_all_tokens: int
    verdict: NerveVerdict  # sink-free
    verdict_all: NerveVerdict  # every position
    failing: list[int]  # layers where at least one trend fails (sink-free)
    flipped: list[int]  # layers whose outcome changes with the sink positions
    dominated: list[int]  # layers whose top post-activation eigenvalue holds more than dominant_share
    dominant_share: float
    max_rank: int
    rank_floor: float
    rank_deficient: bool
    table: pd.DataFrame
    table_all: pd.DataFrame
    from_cache: bool = False  # the eigenvalues came from the cache

    @property
    def L(self) -> int:
        return len(self.table)

    def _verdict_sentences(self) -> list[str]:
        df, df_all, L, v, va = self.table, self.table_all, self.L, self.verdict, self.verdict_all
        return [
            f"Verdict: NerVE's finding (the nonlinearity raises SE and PR and lowers EEE) {v.label} on "
            f"{self.model_name}: all three trends together hold in {v.layers_all_three} of {L} layers "
            f"(sink-free: the first {self.skip_first} position(s) of every window left out, {self.n_tokens} tokens).",
            f"Verdict on all {self.n_all_tokens} tokens (NerVE's setting, sink positions included, same forward pass): "
            f"{va.label}; all three trends hold in {va.layers_all_three} of {L} layers ("
            + "; ".join(f"{name} in {c}/{L}" for name, c in va.counts.items()) + "). "
            + ("The sink positions do not change the verdict" if va.label == v.label else
               f"The sink positions change the verdict ({v.label} without them, {va.label} with them)")
            + (f"; the per-layer outcome differs in layer(s) {', '.join(map(str, self.flipped))}." if self.flipped
               else "; no layer's outcome changes.")
            + f" Median PR gain {df_all.pr_gain.median():.2f}x with them, {df.pr_gain.median():.2f}x without; largest "
              f"post-activation top-eigenvalue share {df_all.top1_post.max():.1%} with them, {df.top1_post.max():.1%} without.",
            "Per trend: " + "; ".join(f"{name} in {c}/{L} layers ({'majority' if v.overall[name] else 'not a majority'})"
                                      for name, c in v.counts.items()) + ".",
            (f"Layers where at least one trend fails: {', '.join(map(str, self.failing))}." if self.failing
             else "No layer breaks any of the three trends."),
        ]

    def _metric_sentences(self) -> list[str]:
        df = self.table
        js_max = df.loc[df.js.idxmax()]
        return [
            f"PR gain post/pre: median {float(df.pr_gain.median()):.2f}x (range {df.pr_gain.min():.2f}x at layer "
            f"{int(df.layer[df.pr_gain.idxmin()])} to {df.pr_gain.max():.2f}x at layer {int(df.layer[df.pr_gain.idxmax()])}); "
            f"PR pre averages {df.pr_pre.mean():.1f} and post {df.pr_post.mean():.1f} of D_ff = {self.d_ff}.",
            f"SE averages {df.se_pre.mean():.3f} pre and {df.se_post.mean():.3f} post (max ln D_ff = {math.log(self.d_ff):.3f}); "
            f"EEE averages {df.eee_pre.mean():.3f} pre and {df.eee_post.mean():.3f} post.",
            f"The largest spectral shift (JS) is at layer {int(js_max.layer)} ({js_max.js:.4f} of at most ln 2 = "
            f"{math.log(2):.4f}); median JS over layers {df.js.median():.4f}.",
        ]

    def _rank_sentences(self) -> list[str]:
        df, d, d_ff = self.table, self.d, self.d_ff
        if self.dominated:
            overlap = sorted(set(self.dominated) & set(self.failing))
            out = [f"In {len(self.dominated)} layer(s) ({', '.join(map(str, self.dominated))}) one direction holds more than "
                   f"{self.dominant_share:.0%} of the post-activation variance (up to {df.top1_post.max():.1%}, layer "
                   f"{int(df.layer[df.top1_post.idxmax()])}); {len(overlap)} of them are among the layers where a trend fails. "
                   f"A single dominant post-activation direction (e.g. a few outlier tokens with very large activations) "
                   f"collapses SE and PR there, whatever happens to the rest of the spectrum."]
        else:
            out = [f"No post-activation spectrum is dominated by one direction (largest top-eigenvalue share "
                   f"{df.top1_post.max():.1%})."]
        out.append(
            f"The pre-activation is a linear map of the d = {d} dimensional FFN input, so its covariance has rank <= "
            f"min(d, D_ff) = {min(d, d_ff)} (numerical rank measured: at most {int(df.rank_pre.max())}), capping SE_pre at "
            f"ln {min(d, d_ff)} = {math.log(min(d, d_ff)):.3f} and PR_pre at {min(d, d_ff)}; the post-activation reaches "
            f"numerical rank {int(df.rank_post.min())}-{int(df.rank_post.max())} of {self.max_rank} (eigenvalues above "
            f"{self.rank_floor:.1e} of the largest). Part of any SE/PR rise is the "
            f"nonlinearity lifting this linear rank cap, as in NerVE's setting.")
        if self.rank_deficient:
            out.append(f"Caution: {self.n_tokens} tokens < D_ff + 1, so every covariance has rank <= {self.n_tokens - 1}; "
                       f"SE and PR are capped and the comparison is biased toward the cap.")
        return out

    def sentences(self) -> list[str]:
        return self._verdict_sentences() + self._metric_sentences() + self._rank_sentences()


def findings(loaded: LoadedModel | StreamedModel, spectra: FFNSpectra, fp: FFNPlan, p: FFNParameters) -> FFNFindings:
    df, df_all = spectra.table, spectra.table_all
    return FFNFindings(
        loaded.params.name, loaded.dims.d, loaded.dims.d_ff, p.skip_first, p.n_tokens, p.n_all_tokens,
        nerve_verdict(df, p.majority), nerve_verdict(df_all, p.majority), df.layer[~df.holds].tolist(),
        df.layer[df.holds != df_all.holds].tolist(), df.layer[df.top1_post > p.dominant_share].tolist(),
        p.dominant_share, fp.max_rank, fp.rank_floor, fp.rank_deficient, df, df_all, spectra.from_cache)


# --- figures ---------------------------------------------------------------------------------------

def metrics_by_depth_figure(df: pd.DataFrame, max_rank: int, title: str, path: Path):
    """SE (bound ln max_rank, dotted), PR, EEE pre vs post, and the PR gain, by layer."""
    panels = [("se", "spectral entropy SE", math.log(max_rank)), ("pr", "participation ratio PR", None),
              ("eee", "early eigenvalue enrichment EEE", None)]  # SE's bound: ln of the largest numerical rank
    fig, axes = subplots(1, 4, width=3.6, height=3.2)
    for ax, (key, name, bound) in zip(axes.flat, panels):
        ax.plot(df.layer, df[f"{key}_pre"], marker=".", label="pre")
        ax.plot(df.layer, df[f"{key}_post"], marker=".", label="post")
        if bound is not None:
            ax.axhline(bound, color="gray", linestyle=":", linewidth=1, label=f"maximum ln {max_rank}")
        ax.set_title(name, fontsize=10)
        ax.set(xlabel="layer", ylabel=key.upper())
    axes.flat[0].legend(fontsize=8)  # pre, post and the bound
    ax = axes.flat[3]
    ax.plot(df.layer, df.pr_gain, marker=".", color="C2")
    ax.axhline(1.0, color="gray", linestyle="--", linewidth=1, label="no gain")
    ax.set_yscale("log")
    ax.set_title("PR gain post / pre", fontsize=10)
    ax.set(xlabel="layer", ylabel="PR post / PR pre")
    ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)
    return fig


def js_figure(df: pd.DataFrame, model_name: str, path: Path):
    fig, axes = subplots(1, 1, width=6.0, height=3.2)
    ax = axes.flat[0]
    ax.plot(df.layer, df.js, marker="o", markersize=4, color="C3")
    ax.set_ylim(0, max(df.js.max() * 1.15, 1e-3))
    ax.set_xlabel("layer")
    ax.set_ylabel("JS(pre || post)  [0, ln 2]")
    ax.set_title(f"Spectral shift caused by the nonlinearity — {model_name}")
    fig.tight_layout()
    save_figure(fig, path)
    return fig


def selected_spectra_figure(spectra: FFNSpectra, layers: list[int], path: Path):
    """Normalised eigenvalues lambda_k / sum lambda against rank k, log-log, pre and post."""
    fig, axes = subplots(1, len(layers), width=3.6, height=3.2)
    k = np.arange(1, spectra.eig_pre.shape[1] + 1)
    for ax, i in zip(axes.flat, layers):
        for eigs, label in ((spectra.eig_pre[i], "pre"), (spectra.eig_post[i], "post")):
            share = normalized(eigs)
            keep = share > 0
            ax.loglog(k[keep], share[keep], label=label, linewidth=1)
        r = spectra.table.iloc[i]
        ax.set_title(f"layer {i}: PR {r.pr_pre:.0f} -> {r.pr_post:.0f}, JS {r.js:.3f}", fontsize=9)
        ax.set_xlabel("rank k")
    axes.flat[0].set_ylabel("lambda_k / sum lambda")
    axes.flat[0].legend(fontsize=8)  # pre, post and the bound
    fig.tight_layout()
    save_figure(fig, path)
    return fig


# --- report ------------------------------------------------------------------------------------------

def _data_paragraph(loaded: LoadedModel | StreamedModel, p: FFNParameters) -> str:
    d_ff = loaded.dims.d_ff
    return (
        f"Corpus `{p.corpus}`: {p.n_sequences} windows x {p.seq_len} tokens, the first {p.skip_first} position(s) of each "
        f"left out of the main statistics (attention sinks) = {p.n_tokens} tokens (seed {p.seed}), "
        f"{p.n_tokens / d_ff:.1f} tokens per FFN dimension (D_ff = {d_ff}); the all-token metrics (NerVE's setting, "
        f"{p.n_all_tokens} tokens, `ffn_spectra_all_tokens.csv`) merge the left-out rows into the same accumulators. "
        f"Pre-activation: "
        f"{'gate projection output (gated FFN)' if loaded.adapter.ffn(0).w_gate is not None else 'input projection output'}; "
        f"post-activation: input of the output projection. Covariances accumulated in {p.accumulator} with per-batch "
        f"centring merged exactly (Chan et al. 1979); "
        + (f"the pre-activation's as the d x d covariance (float64) of the projection's input rows X R^T (W = QR: "
           f"the same nonzero eigenvalues, the other D_ff - d = {d_ff - loaded.dims.d} exactly zero; "
           f"`utils.metrics.linear_image`); " if loaded.dims.d < d_ff else "")
        + f"eigenvalues by {p.eigen_solver} eigvalsh; natural logarithms; JS "
        f"rank-matched (NerVE eqs. 4-6); EEE divided by D/2 as "
        f"NerVE eq. (3) writes it (a rank-one spectrum gives (D-1)/D).")


def write_report(loaded: LoadedModel | StreamedModel, fp: FFNPlan, found: FFNFindings, p: FFNParameters, out: Path) -> Path:
    report = Report.for_notebook("05_ffn_eigenspectrum", loaded)
    report.model_section(loaded)
    report.heading("Data").paragraph(_data_paragraph(loaded, p))
    report.heading("Pass and memory").paragraph(
        f"On {fp.device}: {fp.describe()}. A Qwen2.5-3B shape (L = 36, D_ff = 11008) at the same token count would "
        f"hold {fp.layer_bytes_3b / 2**20:.0f} MiB per layer. Peak memory of the kernel (RSS) after the pass: "
        f"{peak_rss_bytes() / 2**30:.2f} GiB."
        + (" This run read the eigenvalues from the cache (`cache_dir()/ffn_spectra`): no pass was made." if found.from_cache else ""))
    report.heading("Findings").bullets(found.sentences())
    report.heading("Per layer").table(found.table[["layer", "se_pre", "se_post", "pr_pre", "pr_post", "eee_pre",
                                                   "eee_post", "js", "pr_gain", "top1_post", "rank_pre", "rank_post",
                                                   "holds"]], digits=4)
    report.heading("Per layer, all tokens (NerVE's setting)").table(
        found.table_all[["layer", "se_pre", "se_post", "pr_pre", "pr_post", "eee_pre", "eee_post", "js", "pr_gain",
                         "top1_post", "holds"]], digits=4)
    report.figure(out / "metrics_by_depth.png", "SE, PR, EEE pre vs post, and PR gain, by layer")
    report.figure(out / "js_profile.png", "JS divergence between pre and post spectra by layer")
    report.figure(out / "spectra_selected_layers.png",
                  f"Normalised eigenvalue spectra of layers {', '.join(map(str, fp.spectra_layers))} (log-log)")
    return report.write(out / "report.md")
