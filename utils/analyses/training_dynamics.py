"""Notebook 06's analysis: small NanoGPT decoders trained from scratch with spectral records
(NerVE sec. 3; Spectral Lens findings 1-3), the sweeps, and the findings built from them.

`Runs` trains (or reuses) one run per configuration and holds its records (`TrainedRun`);
`loss_correlations`, `batch_size_summary`, `extra_sweep_table`, `head_gradient_table` compute
each section's table; `findings` turns them into `TrainingFindings` (fields the tests check,
`.sentences()` for the report). Per-layer metrics are read in the long layout
(`utils.analyses.layer_tables`).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from utils.analyses.layer_tables import layer_step_matrix, layer_table
from utils.analyses.parameters import NotebookParameters
from utils.engine.spectral_callback import SpectralCallback, head_gradient_movement
from utils.engine.training import TokenData, TrainConfig, run_config_dict, train
from utils.models.nanogpt import NanoGPTConfig, byte_tokenizer
from utils.reporting.plotting import depth_colors, heatmap, save_figure, subplots
from utils.reporting.report import Report

NERVE_METRICS = ["se_pre", "se_post", "pr_pre", "pr_post", "eee_pre", "eee_post", "js"]
HEAD_GRADIENT_COLUMNS = ("act_head_share", "grad_eff_rank", "grad_stable_rank", "grad_topk_share")
STRONG_R = 0.94  # |Pearson r| NerVE reports between its metrics and loss at 125M scale
CO_MOVING_RHO = 0.5  # |Spearman rho| of record-to-record changes that counts as moving together


@dataclass
class TrainingParameters(NotebookParameters):
    """Notebook 06's parameters (see its parameters cell)."""

    corpus: str = "stdlib-docs"
    hidden_size: int = 128
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    intermediate_size: int = 512
    norm_placement: str = "preln"
    position_embedding: str = "learned"
    steps: int = 240
    batch_size: int = 16
    seq_len: int = 64
    lr: float = 2e-3
    seed: int = 0
    log_every: int = 20
    eval_windows: int = 64
    grad_samples: int = 16
    tail_window: list = field(default_factory=lambda: [8, 64])
    activations: list = field(default_factory=lambda: ["gelu", "relu", "swiglu"])
    batch_sizes: list = field(default_factory=lambda: [8, 16, 32])
    forecast_fraction: float = 0.2
    extra_sweeps: dict = field(default_factory=dict)
    save_checkpoints: bool = True
    checkpoint_every: int = 20

    CHOICES = {"norm_placement": ("preln", "postln", "none"), "position_embedding": ("learned", "rope", "none")}

    def check(self) -> None:
        if self.checkpoint_every < 0 or (self.checkpoint_every and self.checkpoint_every % self.log_every):
            raise ValueError(f"checkpoint_every={self.checkpoint_every} must be 0 or a multiple of log_every="
                             f"{self.log_every} (each checkpoint's trainer_state.json then holds its eval loss)")
        if self.steps < 2 * self.log_every:
            raise ValueError(f"steps={self.steps} must be at least 2 * log_every={2 * self.log_every}")
        if any((self.steps * self.batch_size) % b for b in self.batch_sizes):
            raise ValueError(f"steps * batch_size = {self.steps * self.batch_size} must be divisible by every batch "
                             f"size in {self.batch_sizes}")

    @property
    def tokens_budget(self) -> int:
        return self.steps * self.batch_size * self.seq_len

    def base_architecture(self) -> dict:
        """NanoGPTConfig fields of the base run (GELU)."""
        return dict(hidden_size=self.hidden_size, num_hidden_layers=self.num_hidden_layers,
                    num_attention_heads=self.num_attention_heads, intermediate_size=self.intermediate_size,
                    hidden_act="gelu", norm_placement=self.norm_placement, position_embedding=self.position_embedding,
                    max_position_embeddings=self.seq_len)

    def train_config(self, bs: int) -> TrainConfig:
        """Equal token budget at batch size bs."""
        return TrainConfig(steps=self.steps * self.batch_size // bs, batch_size=bs, seq_len=self.seq_len, lr=self.lr,
                           seed=self.seed)


@dataclass
class TrainedRun:
    config: dict  # run_config_dict of the run
    records: list[dict]  # the callback's records, one per logged step
    spectra: dict[int, dict[str, np.ndarray]]  # step -> "act" eigenvalues, "grad" singular values
    D: int  # FFN width

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.records)

    def layer_matrix(self, metric: str) -> np.ndarray:
        """(layers, logged steps) values of one per-layer metric."""
        return layer_step_matrix(layer_table(self.frame()), metric, dropna=False)[0]


class Runs:
    """The runs of one notebook 06 execution: each configuration trained once, with a spectral
    record every log_every * batch_size / bs steps (equal tokens between records)."""

    def __init__(self, p: TrainingParameters, out: Path):
        self.p, self.out = p, Path(out)
        self.data = TokenData.from_corpus(p.corpus, byte_tokenizer())
        self.eval_ids = self.data.eval_windows(p.eval_windows, p.seq_len)  # (eval_windows, seq_len)
        self.runs: dict[str, TrainedRun] = {}
        self._trained: dict[str, str] = {}  # json of the run's full description -> run name
        self._base_key = self._key(NanoGPTConfig(**p.base_architecture()), p.train_config(p.batch_size))

    @staticmethod
    def _key(model_config: NanoGPTConfig, train_config: TrainConfig) -> str:
        return json.dumps(run_config_dict(model_config, train_config), sort_keys=True)

    def __getitem__(self, name: str) -> TrainedRun:
        return self.runs[name]

    def run(self, name: str, bs: int | None = None, **overrides) -> str:
        """Train one run (or reuse an identical one); returns its name. The base run (GELU at
        batch_size) saves Trainer checkpoints every checkpoint_every steps for notebook 08."""
        p, bs = self.p, bs or self.p.batch_size
        model_config = NanoGPTConfig(**{**p.base_architecture(), **overrides})
        train_config = p.train_config(bs)
        key = self._key(model_config, train_config)
        if key in self._trained:
            return self._trained[key]
        callback = SpectralCallback(self.eval_ids, every=p.log_every * p.batch_size // bs, grad_samples=p.grad_samples,
                                    tail_window=tuple(p.tail_window))
        is_base = key == self._base_key and p.checkpoint_every > 0
        directory = self.out / "checkpoints" / name
        if is_base:  # a fresh series: no checkpoint of an earlier run with other settings stays beside it
            for stale in directory.glob("checkpoint-*"):
                shutil.rmtree(stale)
        result = train(model_config, self.data, train_config, callback=callback, desc=name,
                       checkpoint_every=p.checkpoint_every if is_base else 0, checkpoint_dir=directory)
        if p.save_checkpoints:
            result.model.save_pretrained(directory)
            byte_tokenizer().save_pretrained(directory)
        self.runs[name] = TrainedRun(run_config_dict(model_config, train_config), result.records, callback.spectra,
                                     model_config.intermediate_size)
        self._trained[key] = name
        return name

    def log(self) -> pd.DataFrame:
        """training_log.csv: every record of every run, run/step/tokens/losses first."""
        log = pd.concat([r.frame().assign(run=n) for n, r in self.runs.items()], ignore_index=True)
        first = ["run", "step", "tokens", "train_loss", "eval_loss"]
        return log[first + [c for c in log.columns if c not in first]]

    def table(self) -> pd.DataFrame:
        """runs.csv: one row per run, its configuration and final eval loss."""
        return pd.DataFrame([{"run": n, **r.config, "final_eval_loss": r.records[-1]["eval_loss"]}
                             for n, r in self.runs.items()])


# --- 1. activation sweep -----------------------------------------------------------------------------

def loss_correlations(runs: Runs, act_runs: dict[str, str]) -> pd.DataFrame:
    """(metric, activation) Pearson r of the layer-mean NerVE metric with eval loss over the records."""
    rows = []
    for act, name in act_runs.items():
        frame = runs[name].frame()
        for metric in NERVE_METRICS:
            layer_mean = runs[name].layer_matrix(metric).mean(0)  # (logged steps,)
            r = stats.pearsonr(layer_mean, frame["eval_loss"]).statistic if np.ptp(layer_mean) > 0 else np.nan
            rows.append({"activation": act, "metric": metric, "pearson_r": r})
    return pd.DataFrame(rows).pivot(index="metric", columns="activation", values="pearson_r")[list(act_runs)]


def final_losses(runs: Runs, names: dict) -> dict:
    return {label: runs[name].records[-1]["eval_loss"] for label, name in names.items()}


# --- 2. batch size at equal loss, and the early tail as a forecast -------------------------------------

@dataclass
class BatchSizeSummary:
    """Spectral Lens findings 1 and 2 over the batch-size sweep (equal token budget)."""

    runs: dict[int, str]  # batch size -> run name
    target: float  # the highest of the runs' best eval losses: every run reaches it
    table: pd.DataFrame  # one row per batch size (batch_size_summary.csv)
    forecast_rho: float  # Spearman(early tail slope, tokens to target); NaN with fewer than 3 runs
    spread_at_target: float  # peak-to-peak of the tail slope at the target across batch sizes
    slowest: str  # run that needed the most tokens
    jitter: float  # peak-to-peak of its tail slope over its last 3 records: the yardstick

    @property
    def distinct(self) -> bool:
        return self.spread_at_target > self.jitter


def _batch_row(bs: int, name: str, frame: pd.DataFrame, target: float, early_tokens: float) -> dict:
    hit = frame[frame["eval_loss"] <= target].iloc[0]
    early = frame[frame["tokens"] >= early_tokens].iloc[0]
    return {"batch_size": bs, "run": name, "tokens_to_target": int(hit["tokens"]), "step_at_target": int(hit["step"]),
            "eval_loss_at_target": hit["eval_loss"], "act_eff_rank_at_target": hit["act_eff_rank"],
            "act_tail_slope_at_target": hit["act_tail_slope"], "grad_eff_rank_at_target": hit["grad_eff_rank"],
            "early_tokens": int(early["tokens"]), "early_act_tail_slope": early["act_tail_slope"],
            "early_act_eff_rank": early["act_eff_rank"], "final_eval_loss": frame["eval_loss"].iloc[-1]}


def batch_size_summary(runs: Runs, bs_runs: dict[int, str]) -> BatchSizeSummary:
    """The first record at or below the target loss per run, and the early record after
    forecast_fraction of the token budget."""
    p = runs.p
    target = max(min(r["eval_loss"] for r in runs[name].records) for name in bs_runs.values())
    table = pd.DataFrame([_batch_row(bs, name, runs[name].frame(), target, p.forecast_fraction * p.tokens_budget)
                          for bs, name in bs_runs.items()])
    rho = (stats.spearmanr(table["early_act_tail_slope"], table["tokens_to_target"]).statistic if len(table) >= 3
           else np.nan)
    slowest = table.sort_values("tokens_to_target").iloc[-1]["run"]
    jitter = np.ptp(runs[slowest].frame()["act_tail_slope"].to_numpy()[-3:])
    return BatchSizeSummary(bs_runs, target, table, rho, np.ptp(table["act_tail_slope_at_target"]), slowest, jitter)


# --- 3. further NerVE sweeps -------------------------------------------------------------------------

def extra_sweep_table(runs: Runs) -> pd.DataFrame:
    """Train every extra_sweeps value on the GELU base; final eval loss, PR_post / D and SE_post per layer."""
    rows, L = [], runs.p.num_hidden_layers
    for field_name, values in runs.p.extra_sweeps.items():
        for value in values:
            name = runs.run(f"{field_name}={value}", **{field_name: value})
            last, D = runs[name].records[-1], runs[name].D
            rows.append({"field": field_name, "value": value, "run": name, "final_eval_loss": last["eval_loss"],
                         **{f"pr_post_over_D_l{i}": last[f"pr_post_l{i}"] / D for i in range(L)},
                         **{f"se_post_l{i}": last[f"se_post_l{i}"] for i in range(L)}})
    return pd.DataFrame(rows)


# --- 4. gradient spectra and the head of the activation spectrum ---------------------------------------

@dataclass
class HeadGradient:
    """Spectral Lens finding 3 on the activation sweep."""

    movement: pd.DataFrame  # one row per activation: rho, final_*, jitter_* (head_gradient_movement.csv)
    separation: dict[str, tuple[float, float]]  # column -> (spread of final values across runs, largest jitter)

    @property
    def distinct(self) -> dict[str, bool]:
        return {col: spread > yardstick for col, (spread, yardstick) in self.separation.items()}

    @property
    def grad_distinct(self) -> list[str]:
        return [col for col in HEAD_GRADIENT_COLUMNS[1:] if self.distinct[col]]

    @property
    def rhos(self) -> pd.Series:
        return self.movement["rho"].dropna()

    @property
    def co_moving(self) -> int:
        return int((self.rhos.abs() >= CO_MOVING_RHO).sum())

    @property
    def verdict(self) -> str:
        head = self.distinct["act_head_share"]
        if head and self.grad_distinct and self.co_moving > len(self.rhos) / 2:
            return "reproduced"
        return "not reproduced" if not (head or self.grad_distinct or self.co_moving) else "partly reproduced"


def head_gradient_table(runs: Runs, act_runs: dict[str, str]) -> HeadGradient:
    movement = pd.DataFrame([{"activation": act, "run": name, **head_gradient_movement(runs[name].frame())}
                             for act, name in act_runs.items()])
    separation = {col: (np.ptp(movement[f"final_{col}"]), movement[f"jitter_{col}"].max())
                  for col in HEAD_GRADIENT_COLUMNS}
    return HeadGradient(movement, separation)


# --- findings ----------------------------------------------------------------------------------------

@dataclass
class TrainingFindings:
    """What notebook 06's findings state, as numbers; `sentences()` writes them."""

    tokens_budget: int
    final: dict[str, float]  # activation -> final eval loss
    corr: pd.DataFrame  # (metric, activation) Pearson r with eval loss
    batch: BatchSizeSummary
    head: HeadGradient
    forecast_fraction: float

    @property
    def best_activation(self) -> str:
        return min(self.final, key=self.final.get)

    @property
    def n_strong(self) -> int:
        """(metric, activation) correlations with |r| >= STRONG_R."""
        return int((self.corr.abs() >= STRONG_R).sum().sum())

    def _head_sentence(self) -> str:
        h, sep = self.head, self.head.separation
        return (
            f"Spectral Lens finding 3 (head of the activation spectrum alongside gradient spectra) is {h.verdict} "
            f"on the activation sweep: across {', '.join(self.final)} the late head share spans "
            f"{sep['act_head_share'][0]:.3f} ({'more' if h.distinct['act_head_share'] else 'not more'} than the "
            f"{sep['act_head_share'][1]:.3f} one run moves over its last 3 records) and the gradient stable rank "
            f"{sep['grad_stable_rank'][0]:.2f} (yardstick {sep['grad_stable_rank'][1]:.2f}); gradient "
            f"statistics that separate the activations: {', '.join(h.grad_distinct) if h.grad_distinct else 'none'}. "
            f"Record-to-record changes of head share and gradient stable rank correlate with |Spearman ρ| ≥ 0.5 in "
            f"{h.co_moving} of {len(h.rhos)} runs (ρ = " + ", ".join(f"{r:+.2f}" for r in h.movement["rho"]) + "). "
            "The execution-side half of the claim is not tested (no run changes only the execution).")

    def _batch_sentences(self) -> list[str]:
        b, t = self.batch, self.batch.table
        return [
            f"Batch sizes {list(b.runs)} reach eval loss {b.target:.3f} after " + ", ".join(
                f"{int(x):,}" for x in t["tokens_to_target"]) + " tokens; the residual tail slope there is "
            + ", ".join(f"{s:.2f}" for s in t["act_tail_slope_at_target"]) + f" (spread {b.spread_at_target:.2f}, "
            + ("larger" if b.distinct else "not larger") + f" than the {b.jitter:.2f} a single run moves over its last three records), "
            + "so at this scale the spectra at equal loss " + ("do" if b.distinct else "do not") + " look distinct.",
            (f"Early tail slope (first record after {self.forecast_fraction:.0%} of the budget) vs tokens to target: "
             f"Spearman ρ = {b.forecast_rho:+.2f} over {len(t)} runs; with this few runs and one seed this is an "
             "anecdote, not a forecast test."
             if np.isfinite(b.forecast_rho) else "Fewer than 3 batch sizes: no forecast correlation computed."),
        ]

    def sentences(self) -> list[str]:
        return [
            f"Final eval loss after {self.tokens_budget:,} tokens: " + ", ".join(f"{a} {v:.3f}" for a, v in self.final.items())
            + f" (nats per byte); {self.best_activation} is lowest.",
            f"{self.n_strong} of {self.corr.size} (metric, activation) Pearson correlations with eval loss reach |r| ≥ 0.94, "
            f"the level NerVE reports at 125M scale; SE_post gives r = "
            + ", ".join(f"{a} {v:+.2f}" for a, v in self.corr.loc["se_post"].items()) + ".",
            *self._batch_sentences(),
            self._head_sentence(),
            "Caveat of scale: byte-level models of ~1M parameters trained for minutes on one seed; NerVE and "
            "Spectral Lens report 70M-1.5B models trained on billions of tokens. Treat agreements as consistency checks.",
        ]


def findings(runs: Runs, act_runs: dict[str, str], corr: pd.DataFrame, batch: BatchSizeSummary,
             head: HeadGradient) -> TrainingFindings:
    return TrainingFindings(runs.p.tokens_budget, final_losses(runs, act_runs), corr, batch, head,
                            runs.p.forecast_fraction)


# --- figures ---------------------------------------------------------------------------------------

def nerve_heatmaps_figure(runs: Runs, act_runs: dict[str, str], path: Path,
                          shown: tuple = ("se_post", "pr_post", "eee_post", "js")):
    """Layers x logged steps of NerVE metrics, one row per activation."""
    fig, axes = subplots(len(act_runs), len(shown), width=4.2, height=2.8)
    for row, (act, name) in enumerate(act_runs.items()):
        steps = runs[name].frame()["step"].to_numpy()
        for col, metric in enumerate(shown):
            ax = axes[row, col]
            heatmap(ax, runs[name].layer_matrix(metric), f"{act}: {metric}", "logged step", "layer")
            ticks = np.linspace(0, len(steps) - 1, min(5, len(steps))).astype(int)
            ax.set_xticks(ticks, steps[ticks])
    fig.tight_layout()
    save_figure(fig, path)
    return fig


def activation_curves_figure(runs: Runs, act_runs: dict[str, str], path: Path):
    fig, axes = subplots(1, 3, width=4.5, height=3.2)
    for act, name in act_runs.items():
        frame = runs[name].frame()
        axes[0, 0].plot(frame["tokens"], frame["eval_loss"], marker=".", label=act)
        axes[0, 1].plot(frame["tokens"], runs[name].layer_matrix("pr_post").mean(0) / runs[name].D, marker=".", label=act)
        axes[0, 2].plot(frame["tokens"], frame["act_eff_rank"], marker=".", label=act)
    for ax, title in zip(axes[0], ["eval loss", "PR_post / D (layer mean)", "residual-stream effective rank"]):
        ax.set_title(title)
        ax.set_xlabel("tokens")
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    return fig


def batch_size_figure(runs: Runs, batch: BatchSizeSummary, path: Path):
    p = runs.p
    fig, axes = subplots(1, 2, width=5.5, height=3.8)
    for bs, name in batch.runs.items():
        step = int(batch.table.set_index("batch_size").loc[bs, "step_at_target"])
        eig = runs[name].spectra[step]["act"]
        axes[0, 0].loglog(np.arange(1, eig.size + 1), eig / eig.sum(), label=f"batch {bs} (step {step})")
        frame = runs[name].frame()
        axes[0, 1].plot(frame["tokens"], frame["act_tail_slope"], marker=".", label=f"batch {bs}")
    axes[0, 0].axvspan(p.tail_window[0] + 1, p.tail_window[1], alpha=0.1, color="gray")
    axes[0, 0].set(title=f"residual covariance spectrum at eval loss ≤ {batch.target:.3f}", xlabel="rank k",
                   ylabel="λ_k / Σλ")
    axes[0, 1].axvline(p.forecast_fraction * p.tokens_budget, ls="--", color="gray")
    axes[0, 1].set(title=f"tail slope over ranks [{p.tail_window[0]}, {p.tail_window[1]})", xlabel="tokens", ylabel="slope")
    for ax in axes[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    return fig


def gradient_curves_figure(runs: Runs, act_runs: dict[str, str], path: Path):
    fig, axes = subplots(1, 4, width=4.0, height=3.0)
    for act, name in act_runs.items():
        frame = runs[name].frame()
        for ax, col in zip(axes[0], HEAD_GRADIENT_COLUMNS):
            ax.plot(frame["tokens"], frame[col], marker=".", label=act)
    titles = [f"activation head share (top {runs.p.tail_window[0]} modes)", "gradient effective rank",
              "gradient stable rank", "gradient top-4 energy share"]
    for ax, title in zip(axes[0], titles):
        ax.set(title=title, xlabel="tokens")
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    return fig


def gradient_spectra_figure(runs: Runs, act_runs: dict[str, str], path: Path):
    fig, axes = subplots(len(act_runs), 2, width=4.5, height=3.0)
    for row, (act, name) in enumerate(act_runs.items()):
        spectra = runs[name].spectra
        for color, step in zip(depth_colors(len(spectra)), sorted(spectra)):
            eig, sv = spectra[step]["act"], spectra[step]["grad"]
            axes[row, 0].loglog(np.arange(1, eig.size + 1), eig / eig.sum(), color=color, linewidth=0.8)
            axes[row, 1].semilogy(np.arange(1, sv.size + 1), sv**2 / (sv**2).sum(), color=color, linewidth=0.8,
                                  marker=".")
        axes[row, 0].axvline(runs.p.tail_window[0] + 0.5, color="gray", linestyle=":")
        axes[row, 0].set(title=f"{act}: residual covariance spectrum", xlabel="rank k", ylabel="λ_k / Σλ")
        axes[row, 1].set(title=f"{act}: per-sample gradient spectrum", xlabel="rank k", ylabel="σ_k² / Σσ²")
    fig.suptitle("Spectra at every logged step (blue: first, red: last); dotted: end of the head")
    fig.tight_layout()
    save_figure(fig, path)
    return fig


# --- report ------------------------------------------------------------------------------------------

def _setup_table(p: TrainingParameters) -> dict:
    return {"corpus": p.corpus, "layers": p.num_hidden_layers, "width": p.hidden_size,
            "FFN width": p.intermediate_size, "norm": p.norm_placement, "positions": p.position_embedding,
            "steps (batch 16 equiv.)": p.steps, "seq_len": p.seq_len, "lr": p.lr, "seed": p.seed,
            "tokens per run": p.tokens_budget,
            "tokens in the spectra": f"all {p.eval_windows} x {p.seq_len} positions of the held-out "
            "windows, position 0 included (NerVE's setting; notebook 05 also reports sink-free)"}


def write_report(model: str, p: TrainingParameters, found: TrainingFindings, sweeps: pd.DataFrame, out: Path) -> Path:
    report = Report.for_notebook("06_training_dynamics", model,
                                 note="Small models trained here (below); the params name only names the output folder.")
    report.model_section(None, **_setup_table(p))
    report.heading("Findings").bullets(found.sentences())
    report.heading("Activation sweep: Pearson r of layer-mean metric with eval loss").table(found.corr.reset_index(),
                                                                                             digits=3)
    report.figure(out / "nerve_heatmaps_activation.png", "NerVE metrics, layers × logged steps, per activation")
    report.figure(out / "activation_curves.png", "eval loss, width-normalised PR_post and residual effective rank")
    report.heading("Batch size at equal loss").table(found.batch.table, digits=4)
    report.figure(out / "batch_size_spectra.png", "residual covariance spectra at equal loss, and tail slope over training")
    report.heading("Gradient spectra and the head of the activation spectrum")
    report.paragraph(f"Per record in `training_log.csv`: `act_head_share` (share of residual variance in the first "
                     f"{p.tail_window[0]} modes), `grad_eff_rank`, `grad_stable_rank`, `grad_topk_share` (top-4 share of "
                     f"sum sigma^2) of the per-sample gradient matrix ({p.grad_samples} sequences x the last FFN's output "
                     "projection). `rho`: Spearman correlation of record-to-record changes of head share and gradient "
                     "stable rank; `final_*`: mean of the last 3 records; `jitter_*`: their peak-to-peak range.")
    report.table(found.head.movement, digits=3)
    report.figure(out / "gradient_curves.png", "activation head share and gradient spectrum statistics over training")
    report.figure(out / "gradient_spectra.png", "activation and per-sample gradient spectra at every logged step")
    if len(sweeps):
        report.heading("Further sweeps").table(sweeps, digits=4)
    return report.write(out / "report.md")
