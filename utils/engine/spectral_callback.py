"""Spectra recorded while a model trains (notebook 06): `SpectralCallback` and its Trainer adapter.

`SpectralCallback` is a plain object, `callback(model, step, train_loss=...)`, usable in any
PyTorch loop; `SpectralTrainerCallback` wraps it for a `transformers.Trainer`. Every `every`
steps it records eval loss and
- NerVE metrics of every FFN (NerVE paper, sec. 2, eqs. 1-6): spectral entropy, participation
  ratio, early eigenvalue enrichment of the pre- and post-activation covariance spectra, and the
  Jensen-Shannon divergence between them, from the shared FFN hooks (`utils.engine.hooks`,
  float64 accumulators, padding rows dropped); eigenvalues come from eigvalsh one layer at a time
  and the accumulator is freed right after (NerVE appendix F, Algorithm 1). Record keys
  `<metric>_l<i>` (one row per record, the layout of notebook 06's training_log.csv; the
  analyses read them as the long (layer, metric, value) table, `per_layer_table`).
- the residual-stream activation covariance spectrum (Spectral Lens): effective rank, the
  power-law slope of the tail over a rank window [start, stop), and the share of variance in
  its head, the `start` leading modes before that window (`act_head_share`).
- the per-sample gradient spectrum (Spectral Lens): singular values of the (samples x
  parameters) matrix of per-sample gradients of one weight matrix (`per_sample_grads`); its
  effective rank, stable rank and the share of sum sigma^2 in the top `grad_top_k` singular
  values (`grad_topk_share`).
`head_gradient_movement(records)` summarises one run for Spectral Lens finding 3.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
from scipy import stats
from transformers import TrainerCallback

from utils.engine.hooks import ffn_covariances
from utils.engine.per_sample_gradients import per_sample_grads
from utils.metrics.covariance import StreamingCovariance
from utils.metrics.spectra import cumulative_share, effective_rank, nerve_metrics, power_law_slope, stable_rank
from utils.models.adapters import get_adapter

GRADIENT_COLUMNS = ("grad_eff_rank", "grad_stable_rank", "grad_topk_share")


class SpectralCallback:
    """Every `every` steps, record eval loss and the spectra of a model (see module doc).

    >>> cb = SpectralCallback(eval_ids, every=25)           # eval_ids: (n, S) long
    >>> for step in range(steps): ...; cb(model, step, train_loss=loss.item(), tokens=seen)
    >>> cb.records                                          # list of dicts, one per logged step

    eval_ids / eval_mask: fixed eval windows (mask 0 = padding; loss and statistics skip it).
    grad_param: parameter whose per-sample gradient spectrum is taken (default: the last
    layer's down_proj weight); grad_samples: rows of eval_ids used for it.
    residual_layer: index into `hidden_states` whose covariance gives the activation spectrum
    (-1: the final hidden state, after ln_f); tail_window: rank window [start, stop) for the
    power-law slope of that spectrum; its first `start` modes are the head (`act_head_share`).
    grad_top_k: singular values in the gradient spectrum's top-k energy share. Full spectra of
    the last two views are kept in `self.spectra[step]` ("act": covariance eigenvalues, "grad":
    singular values).
    """

    def __init__(self, eval_ids: torch.Tensor, every: int = 25, eval_mask: torch.Tensor | None = None,
                 batch_size: int = 16, grad_param: str | None = None, grad_samples: int = 16,
                 residual_layer: int = -1, tail_window: tuple[int, int] = (8, 64), grad_top_k: int = 4):
        if tail_window[0] < 1:
            raise ValueError(f"tail_window={tail_window} must start at rank 1 or later: the ranks before it are the head")
        if grad_top_k < 1:
            raise ValueError(f"grad_top_k={grad_top_k} must be at least 1 (it is clipped to the number of samples)")
        self.eval_ids = eval_ids
        self.eval_mask = torch.ones_like(eval_ids) if eval_mask is None else eval_mask
        self.every = every
        self.batch_size = batch_size
        self.grad_param = grad_param
        self.grad_samples = grad_samples
        self.residual_layer = residual_layer
        self.tail_window = tail_window
        self.grad_top_k = grad_top_k
        self.records: list[dict] = []
        self.spectra: dict[int, dict[str, np.ndarray]] = {}

    def on_step(self, model: nn.Module, step: int, train_loss: float | None = None,
                tokens: int | None = None, force: bool = False) -> dict | None:
        """Record if `step` is a multiple of `every` (or `force`); return the record or None."""
        if not force and step % self.every:
            return None
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        record = {"step": step, "tokens": tokens, "train_loss": train_loss}
        record.update(self._forward_statistics(model, device, step))
        record.update(self._gradient_statistics(model, device, step))
        model.train(was_training)
        self.records.append(record)
        return record

    __call__ = on_step

    def _eval_pass(self, model: nn.Module, device, record: dict) -> StreamingCovariance:
        """One pass over eval_ids: eval loss and NerVE metrics per layer into `record`; returns
        the residual-state accumulator (d, d)."""
        loss_sum, n_targets, act = 0.0, 0, None
        with torch.no_grad(), ffn_covariances(model, pre_from_input=True) as acc:  # pre: d wide (linear_image)
            for i in range(0, len(self.eval_ids), self.batch_size):
                ids = self.eval_ids[i: i + self.batch_size].to(device)  # (b, S)
                mask = self.eval_mask[i: i + self.batch_size].to(device)
                acc.set_batch(mask.reshape(-1).bool())
                labels = ids.masked_fill(mask == 0, -100)
                out = model(input_ids=ids, attention_mask=None if bool(mask.all()) else mask, labels=labels,
                            output_hidden_states=True)
                n = int((labels[:, 1:] != -100).sum())
                loss_sum += float(out.loss) * n
                n_targets += n
                h = out.hidden_states[self.residual_layer]  # (b, S, d)
                if act is None:
                    act = StreamingCovariance(h.shape[-1], device=h.device)
                act.update(h.reshape(-1, h.shape[-1])[mask.reshape(-1).bool()])
            record["eval_loss"] = loss_sum / n_targets
            for layer in acc.layers:  # one layer at a time; free each accumulator after
                eig_pre, eig_post = acc.spectrum("pre", layer), acc.spectrum("post", layer)
                record.update({f"{k}_l{layer}": v for k, v in nerve_metrics(eig_pre, eig_post).items()})
        return act

    def _forward_statistics(self, model: nn.Module, device, step: int) -> dict:
        """Eval loss, NerVE metrics per layer and residual-stream spectrum from one pass over eval_ids."""
        record: dict = {}
        eig_act = self._eval_pass(model, device, record).eigenvalues()
        self.spectra.setdefault(step, {})["act"] = eig_act.numpy()
        record["act_eff_rank"] = effective_rank(eig_act)
        record["act_tail_slope"] = power_law_slope(eig_act, *self.tail_window)
        head = min(self.tail_window[0], eig_act.numel())
        record["act_head_share"] = float(cumulative_share(eig_act)[head - 1])
        return record

    def _gradient_statistics(self, model: nn.Module, device, step: int) -> dict:
        """Effective rank, stable rank and top-k energy share sum_{i<=k} s_i^2 / sum s_i^2 of the
        per-sample gradient matrix's singular values s."""
        name = self.grad_param or _parameter_name(model, _last_ffn_out(model).weight)
        ids = self.eval_ids[: self.grad_samples].to(device)
        mask = self.eval_mask[: self.grad_samples].to(device)
        sv = torch.linalg.svdvals(per_sample_grads(model, name, ids, mask).double()).cpu()
        self.spectra.setdefault(step, {})["grad"] = sv.numpy()
        k = min(self.grad_top_k, sv.numel())
        return {"grad_eff_rank": effective_rank(sv), "grad_stable_rank": stable_rank(sv),
                "grad_topk_share": float(cumulative_share(sv**2)[k - 1])}


def _last_ffn_out(model: nn.Module) -> nn.Module:
    adapter = get_adapter(model)
    return adapter.ffn_post_module(adapter.dims.L - 1)


def _parameter_name(model: nn.Module, parameter: torch.Tensor) -> str:
    return next(name for name, p in model.named_parameters() if p is parameter)


class SpectralTrainerCallback(TrainerCallback):
    """`transformers.TrainerCallback` around a SpectralCallback: records at every `every`-th
    optimizer step (state.global_step) with the last logged training loss, if any. `tokens` is
    left None: the Trainer does not know the sequence length of its batches."""

    def __init__(self, spectral: SpectralCallback):
        self.spectral = spectral

    def on_step_end(self, args, state, control, model=None, **kwargs):
        losses = [h["loss"] for h in state.log_history if "loss" in h]
        self.spectral(model, state.global_step, train_loss=losses[-1] if losses else None)
        return control


def head_gradient_movement(records: pd.DataFrame, grad: str = "grad_stable_rank", last: int = 3) -> dict:
    """How one run's activation-spectrum head and gradient spectrum move over training.

    records: the run's `SpectralCallback.records` (ordered by step). Returns
    - rho: Spearman rank correlation between the record-to-record changes of `act_head_share`
      and of `grad` (NaN with fewer than 3 changes or a constant series): do the two views move
      together, beyond their common trend with training time?
    - final values (mean over the last `last` records) of act_head_share and each gradient column;
    - jitter: their peak-to-peak movement over the last `last` records, the yardstick against
      which differences between runs count as distinct (as in notebook 06's section 2).
    """
    frame = records.sort_values("step")
    d_head, d_grad = np.diff(frame["act_head_share"].to_numpy()), np.diff(frame[grad].to_numpy())
    testable = d_head.size >= 3 and np.ptp(d_head) > 0 and np.ptp(d_grad) > 0
    out = {"rho": float(stats.spearmanr(d_head, d_grad).statistic) if testable else float("nan")}
    tail = frame.tail(last)
    for col in ("act_head_share", *GRADIENT_COLUMNS):
        out[f"final_{col}"] = float(tail[col].mean())
        out[f"jitter_{col}"] = float(np.ptp(tail[col].to_numpy()))
    return out
