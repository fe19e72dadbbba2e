"""Layer-by-layer comparison of models of different depth (notebook 07).

Models are aligned by relative depth t = layer / (L - 1) in [0, 1] (the Prisma write-up compares
Prisma 357M with GPT-2 Medium layer by layer; with different L, relative depth is the common
axis). Effective ranks are compared relative to each matrix's maximum rank min(rows, cols), so
models of different width share one scale.

- `comparison_models(reference, compare_with) -> ModelSet`: the models available offline, the
  others skipped with the reason.
- `weight_tables(models, output_root, recompute, cache) -> WeightTables`: each model's weight
  spectra, from notebook 01's CSV when present, else from the spectra cache, else computed
  (`utils.metrics.weight_spectra.weight_spectra`) and cached.
- `compare_models(models, tables, heavy_tail_alpha, depth_bins) -> ModelComparison`: the stacked
  table, one summary row per model, depth profiles, per-type effective ranks and the findings.
- `activation_profiles(models, output_root) -> ActivationProfiles`: notebooks 04 and 05's CSVs
  on the relative-depth axis, where they exist.

Spectra cache: `cache_dir()/weight_spectra/<params>-<digest>.json`, the digest over the key of
`spectra_cache_key`: the checkpoint's content fingerprint (per safetensors file, config.json and
shard index: name, size, mtime and a SHA-256 over 17 evenly spaced 64 KiB blocks from the first,
which holds the safetensors header, to the last; for a random config its config, seed and the
torch and transformers versions that initialise it), the load settings (dtype, device) and the
source of the modules that compute the spectra (weight_spectra, spectra, adapters). The key is
stored and compared on load; an unreadable or mismatched entry is a miss (recomputed and
overwritten, with one line in `CachedSpectra.status`), a failed write a warning.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import transformers

from utils.atomic_io import write_text
from utils.cache_files import keyed_entry
from utils.metrics.spectra import weight_metrics
from utils.metrics.weight_spectra import weight_spectra
from utils.models.adapters import WeightAdapter
from utils.models.loading import load_weights, open_checkpoint
from utils.models.params import Params, load_params
from utils.models.sources import ModelUnavailableError, check_available
from utils.models.tensor_store import content_fingerprint
from utils.paths import output_dir
from utils.reporting.plotting import subplots
from utils.reporting.report import Report


def relative_depth(layer: np.ndarray | pd.Series, n_layers: int) -> np.ndarray:
    """t = layer / (L - 1) for block layers (0 for a one-layer model); NaN for layer -1 (outside the blocks)."""
    layer = np.asarray(layer, dtype=float)
    t = layer / max(n_layers - 1, 1)
    return np.where(layer >= 0, t, np.nan)


def weight_comparison(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Stack notebook 01 tables (one per model) with `model`, `rel_depth` and `rel_eff_rank` columns.

    Each table needs the columns layer, weight, rows, cols, eff_rank, stable_rank, alpha,
    mp_signal_ratio (as `utils.metrics.weight_spectra.weight_spectra` writes them)."""
    frames = []
    for name, df in tables.items():
        n_layers = int(df.layer.max()) + 1
        frame = df.assign(model=name, rel_depth=relative_depth(df.layer, n_layers),
                          rel_eff_rank=df.eff_rank / np.minimum(df.rows, df.cols))
        frames.append(frame)
    cols = ["model", "layer", "rel_depth", "weight", "rows", "cols", "eff_rank", "rel_eff_rank", "stable_rank",
            "alpha", "mp_signal_ratio"]
    return pd.concat(frames, ignore_index=True)[cols]


def model_summary(comparison: pd.DataFrame, heavy_tail_alpha: float = 2.0) -> pd.DataFrame:
    """One row per model over its block matrices: layers, mean relative effective rank, mean stable
    rank, median alpha, share of matrices with alpha < heavy_tail_alpha, mean MP signal ratio."""
    blocks = comparison[comparison.layer >= 0]
    rows = []
    for name, sub in blocks.groupby("model", sort=False):
        alpha = sub.alpha.dropna()
        rows.append({
            "model": name, "layers": int(sub.layer.max()) + 1, "matrices": len(sub),
            "rel_eff_rank": sub.rel_eff_rank.mean(), "stable_rank": sub.stable_rank.mean(),
            "alpha_median": alpha.median() if len(alpha) else float("nan"),
            "heavy_tailed": float((alpha < heavy_tail_alpha).mean()) if len(alpha) else float("nan"),
            "mp_signal_ratio": sub.mp_signal_ratio.mean(),
        })
    return pd.DataFrame(rows)


def depth_profile(comparison: pd.DataFrame, value: str, bins: int = 10) -> pd.DataFrame:
    """Mean of `value` over block matrices in `bins` equal relative-depth bins, per model
    (rows: bin centres, columns: models); a common grid for models of different depth."""
    blocks = comparison[comparison.layer >= 0]
    edges = np.linspace(0.0, 1.0, bins + 1)
    centres = (edges[:-1] + edges[1:]) / 2
    index = np.clip(np.digitize(blocks.rel_depth, edges[1:-1]), 0, bins - 1)
    profile = blocks.assign(bin=index).groupby(["bin", "model"], sort=False)[value].mean().unstack("model")
    profile = profile.reindex(range(bins))
    profile.index = centres[profile.index]
    profile.index.name = "rel_depth"
    return profile[list(dict.fromkeys(blocks.model))]


# --- which models -------------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelSet:
    """The reference and the compared models available offline (in order, without duplicates), and
    one line per model skipped because it is not available offline."""

    reference: Params
    models: list[Params]
    skipped: list[str]


def comparison_models(reference: Params, compare_with) -> ModelSet:
    """Unknown names fail here (`load_params`), before any load; unavailable models are skipped."""
    candidates = [reference] + [load_params(name) for name in compare_with]
    candidates = list({p.path: p for p in candidates}.values())  # the reference may be listed in compare_with too
    models, skipped = [], []
    for params in candidates:
        try:
            check_available(params, offline=True)
            models.append(params)
        except ModelUnavailableError as err:
            skipped.append(f"`{params.name}`: {err}")
    return ModelSet(reference, models, skipped)


def check_parameters(depth_bins: int, heavy_tail_alpha: float) -> None:
    """Notebook 07's parameters: clear errors naming the parameter and the valid range."""
    if depth_bins < 1:
        raise ValueError(f"parameter depth_bins={depth_bins} must be at least 1")
    if not heavy_tail_alpha > 0:
        raise ValueError(f"parameter heavy_tail_alpha={heavy_tail_alpha} must be positive")


# --- the spectra cache --------------------------------------------------------------------------

SPECTRA_CACHE_VERSION = 1
_CODE = (weight_spectra, weight_metrics, WeightAdapter)  # their modules' source: what the numbers depend on


def checkpoint_fingerprint(params: Params) -> str | None:
    """Identity of the weights a params file resolves to, without reading them (see module doc);
    None when there are no files to fingerprint (a hub model not in the local cache)."""
    h = hashlib.sha256(json.dumps(params.source, sort_keys=True, default=str).encode())
    if params.source["kind"] == "random":  # the config, the seed and the library versions fix the weights
        h.update(f"torch {torch.__version__}|transformers {transformers.__version__}".encode())
        return h.hexdigest()[:24]
    streamed = open_checkpoint(params)
    if streamed is None:
        return None
    h.update(content_fingerprint(streamed.adapter.store).encode())
    return h.hexdigest()[:24]


def _code_fingerprint() -> str:
    h = hashlib.sha256()
    for obj in _CODE:
        h.update(Path(inspect.getsourcefile(obj)).read_bytes())
    return h.hexdigest()[:16]


def spectra_cache_key(params: Params) -> dict | None:
    """Everything a model's weight spectra depend on (see module doc); None: not cacheable."""
    content = checkpoint_fingerprint(params)
    if content is None:
        return None
    device = "cuda" if params.device in ("cuda", "auto") and torch.cuda.is_available() else "cpu"
    return {"version": SPECTRA_CACHE_VERSION, "model": params.name, "content": content,
            "dtype": params.dtype, "device": device, "task": params.task, "code": _code_fingerprint(),
            "torch": torch.__version__, "numpy": np.__version__}


def spectra_cache_path(key: dict) -> Path:
    return keyed_entry("weight_spectra", key, ".json")


def _read_cached(path: Path, key: dict) -> tuple[pd.DataFrame, str]:
    """(table, origin) of a cache entry; raises on anything unreadable or a key that differs."""
    data = json.loads(path.read_text(encoding="utf-8"))
    if data["key"] != key:
        raise ValueError("its key differs")
    if list(data["data"]) != data["columns"] or len({len(v) for v in data["data"].values()}) > 1:
        raise ValueError("its columns are incomplete")
    table = pd.DataFrame(data["data"], columns=data["columns"]).astype(data["dtypes"])
    return table, data["origin"]


def _write_cached(path: Path, key: dict, table: pd.DataFrame, origin: str) -> None:
    payload = {"key": key, "origin": origin, "columns": list(table.columns),
               "dtypes": {c: str(t) for c, t in table.dtypes.items()},
               "data": {c: table[c].tolist() for c in table.columns}}
    try:
        write_text(path, json.dumps(payload))
    except OSError as err:
        warnings.warn(f"could not write the weight spectra cache entry {path}: {err}", stacklevel=2)


@dataclass(frozen=True)
class CachedSpectra:
    """One model's weight spectra table, the origin of its weights, and where the numbers came from:
    status "cache" (read back), "computed", or "recomputed: <why the entry was unreadable>"."""

    table: pd.DataFrame
    origin: str
    status: str


def cached_weight_spectra(params: Params, cache: bool = True) -> CachedSpectra:
    """`weight_spectra` of a model, read from the spectra cache when an entry has this key."""
    key = spectra_cache_key(params) if cache else None
    key = json.loads(json.dumps(key, sort_keys=True)) if key is not None else None  # as stored
    path = spectra_cache_path(key) if key is not None else None
    status = "computed"
    if path is not None and path.exists():
        try:
            return CachedSpectra(*_read_cached(path, key), status="cache")
        except (OSError, ValueError, KeyError, TypeError) as err:  # JSONDecodeError is a ValueError
            status = f"recomputed: the cache entry {path.name} was unreadable ({type(err).__name__}: {err})"
    loaded = load_weights(params)
    table, _ = weight_spectra(loaded.adapter)
    if path is not None:
        _write_cached(path, key, table, loaded.origin)
    return CachedSpectra(table, loaded.origin, status)


# --- 1. weight spectra of every model ------------------------------------------------------------

@dataclass(frozen=True)
class WeightTables:
    """Per model name: its weight spectra table (rows of `weight_spectra`), where it came from
    (provenance, the summary's "weights from"), and one line on the spectra cache where it was used."""

    tables: dict[str, pd.DataFrame]
    provenance: dict[str, str]
    cache_lines: list[str]


def weight_tables(models: list[Params], output_root, recompute: bool = False, cache: bool = True) -> WeightTables:
    """Notebook 01's weight_spectra.csv of each model when it exists (and not `recompute`), else the
    cached or computed spectra (`cached_weight_spectra`)."""
    tables, provenance, lines = {}, {}, []
    for params in models:
        csv = output_dir(params, "01_weight_spectra", output_root) / "weight_spectra.csv"
        if csv.exists() and not recompute:
            tables[params.name], provenance[params.name] = pd.read_csv(csv), f"notebook 01 output `{csv.name}`"
            continue
        spectra = cached_weight_spectra(params, cache)
        tables[params.name], provenance[params.name] = spectra.table, f"computed here ({spectra.origin})"
        lines.append(f"`{params.name}`: weight spectra {'read from the cache' if spectra.status == 'cache' else spectra.status}")
    return WeightTables(tables, provenance, lines)


# --- 2-3. the comparison ------------------------------------------------------------------------

PROFILE_PANELS = (("rel_eff_rank", "effective rank / max rank"), ("stable_rank", "stable rank"),
                  ("alpha", "power-law alpha (WeightWatcher)"), ("mp_signal_ratio", "fraction above MP edge"))


@dataclass(frozen=True)
class ModelComparison:
    """table: `weight_comparison` of every model; summary: `model_summary` with quantization and
    provenance; profiles: `depth_profile` of each PROFILE_PANELS value in `bins` relative-depth bins
    (at most the shallowest model's layer count); shared: weight types every model has; by_type:
    mean relative effective rank per shared type and model; quantized: names of quantized models."""

    table: pd.DataFrame
    summary: pd.DataFrame
    bins: int
    profiles: dict[str, pd.DataFrame]
    shared: list[str]
    by_type: pd.DataFrame
    heavy_tail_alpha: float
    quantized: list[str]

    def profile_correlation(self, value: str = "rel_eff_rank") -> tuple[float, float, int] | None:
        """(min, max) Pearson r between models' depth profiles of `value` over the bins every model
        fills, and their number; None with fewer than 3 such bins."""
        prof = self.profiles[value].dropna()
        if len(prof) < 3:
            return None
        corr = prof.corr().to_numpy()[np.triu_indices(prof.shape[1], 1)]
        return corr.min(), corr.max(), len(prof)

    def sentences(self) -> list[str]:
        s, findings = self.summary, []
        if len(s) > 1:
            hi, lo = s.loc[s.rel_eff_rank.idxmax()], s.loc[s.rel_eff_rank.idxmin()]
            findings.append(f"`{hi.model}` uses the most of its weights' available rank (mean effective rank "
                            f"{hi.rel_eff_rank:.1%} of the maximum), `{lo.model}` the least ({lo.rel_eff_rank:.1%}).")
            ta, tb = s.loc[s.alpha_median.idxmin()], s.loc[s.alpha_median.idxmax()]
            findings.append(f"Heaviest-tailed spectra: `{ta.model}` (median WeightWatcher alpha {ta.alpha_median:.2f}, "
                            f"{ta.heavy_tailed:.0%} of matrices below {self.heavy_tail_alpha:g}); lightest: `{tb.model}` "
                            f"(median alpha {tb.alpha_median:.2f}).")
            sa = s.loc[s.mp_signal_ratio.idxmax()]
            findings.append(f"Most singular values above the Marchenko-Pastur edge: `{sa.model}` "
                            f"({sa.mp_signal_ratio:.1%} on average).")
            corr = self.profile_correlation("rel_eff_rank")
            if corr is not None:
                findings.append(f"Depth profiles of relative effective rank across models correlate with Pearson r between "
                                f"{corr[0]:+.2f} and {corr[1]:+.2f} (over {corr[2]} depth bins).")
        else:
            findings.append("Only one model was available offline, so there is nothing to compare it with: "
                            "add params names to `compare_with`.")
        if self.quantized and len(self.quantized) < len(s):
            findings.append("Caution: " + ", ".join(f"`{n}`" for n in self.quantized) + " come from quantized weights and "
                            "the others do not; quantization noise raises effective ranks and flattens spectral tails.")
        return findings


def compare_models(models: list[Params], weights: WeightTables, heavy_tail_alpha: float = 2.0,
                   depth_bins: int = 10) -> ModelComparison:
    """`ModelComparison` of the models' weight tables (in the order of `models`)."""
    comparison = weight_comparison(weights.tables)
    summary = model_summary(comparison, heavy_tail_alpha)
    summary.insert(1, "quantization", [p.quantization for p in models])
    summary["weights from"] = [weights.provenance[p.name] for p in models]
    bins = max(1, min(depth_bins, int(summary.layers.min())))  # no empty bins for the shallowest model
    profiles = {value: depth_profile(comparison, value, bins) for value, _ in PROFILE_PANELS}
    shared = [w for w in comparison[comparison.layer >= 0].weight.unique()
              if comparison[comparison.weight == w].model.nunique() == len(models)]
    by_type = comparison[comparison.weight.isin(shared)].pivot_table(index="weight", columns="model",
                                                                     values="rel_eff_rank", sort=False)
    return ModelComparison(comparison, summary, bins, profiles, shared, by_type, heavy_tail_alpha,
                           [p.name for p in models if p.quantized])


def plot_depth_profiles(cmp: ModelComparison):
    """The PROFILE_PANELS depth profiles, one line per model (alpha: the heavy-tail threshold dashed)."""
    fig, axes = subplots(2, 2, width=6.0, height=3.6)
    for ax, (value, label) in zip(axes.flat, PROFILE_PANELS):
        for name in cmp.profiles[value].columns:
            ax.plot(cmp.profiles[value].index, cmp.profiles[value][name], marker=".", label=name)
        if value == "alpha":
            ax.axhline(cmp.heavy_tail_alpha, color="gray", linestyle="--", linewidth=1)
        ax.set(title=label, xlabel="relative depth")
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_eff_rank_by_type(cmp: ModelComparison):
    """Relative effective rank against relative depth, one panel per shared weight type."""
    fig, axes = subplots(1, max(len(cmp.shared), 1), width=3.3, height=3.0, sharey=True)
    for ax, weight in zip(axes.flat, cmp.shared):
        sub = cmp.table[cmp.table.weight == weight]
        for name, rows in sub.groupby("model", sort=False):
            ax.plot(rows.rel_depth, rows.rel_eff_rank, marker=".", markersize=3, label=name)
        ax.set(title=weight, xlabel="relative depth")
    axes[0, 0].set_ylabel("effective rank / max rank")
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    return fig


# --- 4. activations and FFN spectra --------------------------------------------------------------

@dataclass(frozen=True)
class ActivationProfiles:
    """Notebook 04's activation spectra (rows after block 0..L-1) and notebook 05's FFN spectra of
    each model where present, with `model` and `rel_depth` columns; one line per missing output."""

    activations: list[pd.DataFrame]
    ffn: list[pd.DataFrame]
    missing: list[str]


def activation_profiles(models: list[Params], output_root) -> ActivationProfiles:
    activations, ffn, missing = [], [], []
    for params in models:
        base = output_dir(params, "01_weight_spectra", output_root).parent
        acts, ffn_csv = base / "04_representations" / "activation_spectra.csv", base / "05_ffn_eigenspectrum" / "ffn_spectra.csv"
        if acts.exists():
            a = pd.read_csv(acts)
            a = a[a.layer >= 1]  # row i = after block i - 1
            activations.append(a.assign(model=params.name, rel_depth=relative_depth(a.layer - 1, len(a))))
        else:
            missing.append(f"`{params.name}` has no notebook 04 output (run `make MODEL={params.name}`)")
        if ffn_csv.exists():
            f = pd.read_csv(ffn_csv)
            ffn.append(f.assign(model=params.name, rel_depth=relative_depth(f.layer, len(f))))
        else:
            missing.append(f"`{params.name}` has no notebook 05 output (run `make MODEL={params.name}`)")
    return ActivationProfiles(activations, ffn, missing)


def plot_activation_profiles(profiles: ActivationProfiles):
    """Activation effective rank / its maximum, and NerVE's FFN PR gain post / pre, by relative depth."""
    fig, axes = subplots(1, 2, width=6.0, height=3.6)
    for frame in profiles.activations:
        axes[0, 0].plot(frame.rel_depth, frame.eff_rank / frame.eff_rank.max(), marker=".", label=frame.model.iloc[0])
    for frame in profiles.ffn:
        axes[0, 1].plot(frame.rel_depth, frame.pr_post / frame.pr_pre, marker=".", label=frame.model.iloc[0])
    axes[0, 0].set(title="activation effective rank / its maximum", xlabel="relative depth")
    axes[0, 1].set(title="FFN PR gain post / pre (NerVE)", xlabel="relative depth")
    axes[0, 1].axhline(1.0, color="gray", linestyle="--", linewidth=1)
    for ax in axes.flat:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


# --- the report ----------------------------------------------------------------------------------

def comparison_report(model_set: ModelSet, cmp: ModelComparison, profiles: ActivationProfiles, findings: list[str],
                      out: Path) -> Report:
    """Notebook 07's report.md (figures in `out`)."""
    report = Report.for_notebook("07_model_comparison", model_set.reference).model_section(model_set.reference)
    report.heading("Models compared").table(cmp.summary)
    if model_set.skipped:
        report.paragraph("Not available offline, skipped:").bullets(model_set.skipped)
    report.heading("Findings").bullets(findings)
    report.heading("Weight metrics by relative depth")
    report.paragraph("Relative depth = layer / (L - 1); each point is the mean over a model's block matrices in one of "
                     f"{cmp.bins} depth bins. Effective rank is divided by each matrix's maximum rank min(rows, cols).")
    report.figure(out / "weight_depth_profiles.png",
                  "Relative effective rank, stable rank, alpha and MP signal ratio by relative depth")
    report.table(cmp.by_type.reset_index())
    report.figure(out / "eff_rank_by_weight_type.png", "Relative effective rank per weight type")
    report.heading("Activations and FFN spectra")
    if profiles.missing:
        report.bullets(profiles.missing)
    report.figure(out / "activation_depth_profiles.png", "Activation effective rank and NerVE PR gain by relative depth")
    return report
