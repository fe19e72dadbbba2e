"""Training a small decoder from scratch on CPU while recording its spectra (notebook 06).

- Data: `TokenData` cuts a held-out tail off a corpus token stream; training batches are random
  contiguous windows drawn from a seeded generator, eval batches are fixed windows of the tail.
- `train`: AdamW with linear warmup and cosine decay, deterministic for a fixed seed.
- `SpectralCallback`: a plain object, `callback(model, step, train_loss=...)`, usable in any
  PyTorch loop; `SpectralTrainerCallback` wraps it for a `transformers.Trainer`. Every `every`
  steps it records eval loss and
    * NerVE metrics of every FFN (NerVE paper, sec. 2, eqs. 1-6): spectral
      entropy, participation ratio, early eigenvalue enrichment of the pre- and post-activation
      covariance spectra, and the Jensen-Shannon divergence between them. Pre = gate_proj output
      (gated FFN) or up_proj output, collected by a forward hook; post = the input of down_proj,
      collected by a forward pre-hook (NerVE appendix A). Padding rows are dropped, covariances
      stream into float64 accumulators, eigenvalues come from eigvalsh one layer at a time and
      the accumulator is freed right after (NerVE appendix F, Algorithm 1).
    * the residual-stream activation covariance spectrum (Spectral Lens): effective rank, the
      power-law slope of the tail over a rank window [start, stop), and the share of variance in
      its head, the `start` leading modes before that window (`act_head_share`).
    * the per-sample gradient spectrum (Spectral Lens): singular values of the (samples x
      parameters) matrix of per-sample gradients of one weight matrix, computed with
      torch.func (functional_call + vmap(grad)); its effective rank, stable rank and the share
      of sum sigma^2 in the top `grad_top_k` singular values (`grad_topk_share`).

The model classes and `byte_tokenizer` live in `utils.models.nanogpt` and are re-exported here;
importing this module registers model_type "spectra_nanogpt" with the Auto classes.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
from scipy import stats
from torch.func import functional_call, grad, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import TrainerCallback, TrainerState

from utils.atomic_io import atomic_directory
from utils.engine.corpus import DEFAULT_CORPUS, load_corpus
from utils.metrics.covariance import StreamingCovariance
from utils.metrics.spectra import cumulative_share, effective_rank, nerve_metrics, power_law_slope, stable_rank
from utils.models.adapters import get_adapter
from utils.models.nanogpt import NanoGPTConfig, NanoGPTForCausalLM, byte_tokenizer

__all__ = [
    "NanoGPTConfig", "NanoGPTForCausalLM", "byte_tokenizer", "TokenData", "TrainConfig", "TrainResult",
    "train", "ffn_covariances", "nerve_metrics", "per_sample_grads", "SpectralCallback",
    "SpectralTrainerCallback", "run_config_dict", "save_trainer_checkpoint", "head_gradient_movement",
]


# --- data ------------------------------------------------------------------------------------

@dataclass
class TokenData:
    """A corpus token stream split into a training head and a held-out eval tail (1-D long tensors)."""

    train_ids: torch.Tensor
    eval_ids: torch.Tensor

    @classmethod
    def from_corpus(cls, corpus: str = DEFAULT_CORPUS, tokenizer=None, eval_fraction: float = 0.05,
                    max_chars: int = 4_000_000) -> "TokenData":
        """Tokenise the corpus once (default: `byte_tokenizer`) and hold out its last `eval_fraction`."""
        tokenizer = tokenizer or byte_tokenizer()
        text = load_corpus(corpus, max_chars=max_chars)
        ids = torch.as_tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)
        n_eval = int(len(ids) * eval_fraction)
        return cls(train_ids=ids[:-n_eval], eval_ids=ids[-n_eval:])

    def train_batch(self, generator: torch.Generator, batch_size: int, seq_len: int) -> torch.Tensor:
        """(batch, seq) random contiguous windows of the training stream."""
        starts = torch.randint(0, len(self.train_ids) - seq_len, (batch_size,), generator=generator)
        return torch.stack([self.train_ids[s: s + seq_len] for s in starts.tolist()])

    def eval_windows(self, n: int, seq_len: int) -> torch.Tensor:
        """(n, seq) the first n non-overlapping windows of the eval tail (the same every call)."""
        if n * seq_len > len(self.eval_ids):
            raise ValueError(f"eval tail holds {len(self.eval_ids)} tokens < {n} x {seq_len}")
        return self.eval_ids[: n * seq_len].view(n, seq_len).clone()


# --- NerVE FFN hooks -------------------------------------------------------------------------

@contextlib.contextmanager
def ffn_covariances(model: nn.Module, attention_mask: torch.Tensor | None = None):
    """Context manager that streams pre/post-activation rows of every FFN into float64 accumulators.

    Works on any model the adapters support (NanoGPT, Llama, GPT-2, ...), so the callback runs in
    a user's own training loop too. Yields {"pre": [StreamingCovariance per layer], "post": [...],
    "mask": [attention_mask]}; set `state["mask"][0]` before each forward when batches change.
    Pre = output of the gate (gated) or up projection, via a forward hook; post = input of the
    down projection, via a forward pre-hook (NerVE appendix A). Rows of padded positions
    (mask == 0) are dropped. Hooks are removed on exit, also on error.
    """
    adapter = get_adapter(model)
    n_layers = adapter.dims.L
    state = {"pre": [None] * n_layers, "post": [None] * n_layers, "mask": [attention_mask]}

    def keep(x: torch.Tensor) -> torch.Tensor:  # (B, S, D) -> (n_real_tokens, D)
        mask = state["mask"][0]
        rows = x.detach().reshape(-1, x.shape[-1])
        return rows if mask is None else rows[mask.reshape(-1).bool()]

    def add(kind: str, i: int, x: torch.Tensor) -> None:
        if state[kind][i] is None:
            state[kind][i] = StreamingCovariance(x.shape[-1], device=x.device)
        state[kind][i].update(keep(x))

    handles = []
    for i in range(n_layers):
        handles.append(adapter.ffn_pre_module(i).register_forward_hook(
            lambda mod, inp, out, i=i: add("pre", i, out)))
        handles.append(adapter.ffn_post_module(i).register_forward_pre_hook(
            lambda mod, inp, i=i: add("post", i, inp[0])))
    try:
        yield state
    finally:
        for h in handles:
            h.remove()


# --- per-sample gradients --------------------------------------------------------------------

def per_sample_grads(model: nn.Module, param_name: str, input_ids: torch.Tensor,
                     attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """(n, numel) per-sample gradients of one parameter, one row per sequence.

    Row i = d L_i / d W flattened, L_i the mean next-token loss of sequence i alone. Computed as
    vmap(grad(L)) over the batch with torch.func.functional_call, differentiating only W (the
    other parameters enter as constants). Attention runs on the math SDPA kernel, which vmap
    batches natively (the fused CPU kernel has no batching rule).
    """
    weight = dict(model.named_parameters())[param_name].detach()
    padded = attention_mask is not None and not bool(attention_mask.all())
    mask = attention_mask if padded else torch.ones_like(input_ids)

    def loss_one(w: torch.Tensor, ids: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        ids, m = ids[None], m[None]  # (1, seq)
        labels = ids.masked_fill(m == 0, -100)
        kwargs = {"attention_mask": m if padded else None, "labels": labels}
        return functional_call(model, {param_name: w}, (ids,), kwargs).loss

    with sdpa_kernel(SDPBackend.MATH):
        grads = vmap(grad(loss_one), in_dims=(None, 0, 0))(weight, input_ids, mask)  # (n, *W.shape)
    return grads.detach().reshape(len(input_ids), -1)


# --- the spectral callback -------------------------------------------------------------------

class SpectralCallback:
    """Every `every` steps, record eval loss and the spectra of a model (see module doc).

    >>> cb = SpectralCallback(eval_ids, every=25)           # eval_ids: (n, seq) long
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

    def _forward_statistics(self, model: nn.Module, device, step: int) -> dict:
        """Eval loss, NerVE metrics per layer and residual-stream spectrum from one pass over eval_ids."""
        loss_sum, n_targets = 0.0, 0
        act = None
        with torch.no_grad(), ffn_covariances(model) as acc:
            for i in range(0, len(self.eval_ids), self.batch_size):
                ids = self.eval_ids[i: i + self.batch_size].to(device)  # (b, seq)
                mask = self.eval_mask[i: i + self.batch_size].to(device)
                acc["mask"][0] = mask
                labels = ids.masked_fill(mask == 0, -100)
                out = model(input_ids=ids, attention_mask=None if bool(mask.all()) else mask, labels=labels,
                            output_hidden_states=True)
                n = int((labels[:, 1:] != -100).sum())
                loss_sum += float(out.loss) * n
                n_targets += n
                h = out.hidden_states[self.residual_layer]  # (b, seq, d)
                if act is None:
                    act = StreamingCovariance(h.shape[-1], device=h.device)
                act.update(h.reshape(-1, h.shape[-1])[mask.reshape(-1).bool()])
            record = {"eval_loss": loss_sum / n_targets}
            for layer in range(len(acc["pre"])):  # one layer at a time; free each accumulator after
                eig_pre = acc["pre"][layer].eigenvalues()
                eig_post = acc["post"][layer].eigenvalues()
                acc["pre"][layer] = acc["post"][layer] = None
                record.update({f"{k}_l{layer}": v for k, v in nerve_metrics(eig_pre, eig_post).items()})
        eig_act = act.eigenvalues()
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


# --- training --------------------------------------------------------------------------------

@dataclass
class TrainConfig:
    """Optimisation settings of one run (AdamW, linear warmup then cosine decay to lr * min_lr_ratio)."""

    steps: int = 300
    batch_size: int = 16
    seq_len: int = 64
    lr: float = 2e-3
    warmup: int = 20
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0

    def lr_at(self, step: int) -> float:
        """lr * step/warmup while warming up, then lr * (r + (1 - r) (1 + cos(pi t)) / 2), t in [0, 1]."""
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        t = (step - self.warmup) / max(1, self.steps - self.warmup)
        return self.lr * (self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


@dataclass
class TrainResult:
    model: NanoGPTForCausalLM
    train_losses: list[float] = field(default_factory=list)  # one per step
    records: list[dict] = field(default_factory=list)  # the callback's records


def save_trainer_checkpoint(model: nn.Module, directory: str | Path, step: int, max_steps: int,
                            log_history: list[dict], tokenizer=None, save_steps: int = 0) -> Path:
    """Write `directory` in `transformers.Trainer`'s checkpoint layout (weights and state only):
    model.safetensors + config.json (save_pretrained), the tokenizer files, and
    trainer_state.json (`TrainerState.save_to_json`) holding `global_step` = step and the
    `log_history` (dicts with "step" and "loss" or "eval_loss", Trainer's keys). Written to a
    temporary directory and renamed, so a checkpoint directory is complete or absent."""
    directory = Path(directory)
    with atomic_directory(directory) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        state = TrainerState(global_step=step, max_steps=max_steps, save_steps=save_steps,
                             log_history=[dict(h) for h in log_history])
        state.save_to_json(str(tmp / "trainer_state.json"))
    return directory


def train(model_config: NanoGPTConfig, data: TokenData, config: TrainConfig | None = None,
          callback: SpectralCallback | None = None, progress: bool = True, desc: str = "train",
          checkpoint_every: int = 0, checkpoint_dir: str | Path | None = None) -> TrainResult:
    """Train a fresh NanoGPTForCausalLM; deterministic for a fixed `config.seed`.

    The seed fixes the initial weights (torch.manual_seed before construction) and the data
    order (a separate torch.Generator for the windows). With a callback, it is called after
    every optimizer step with the 1-based step count and once at step 0, before training.

    checkpoint_every > 0: save `checkpoint_dir/checkpoint-<step>/` (Trainer layout, see
    `save_trainer_checkpoint`, with the byte tokenizer) at step 0 (the initialisation) and every
    `checkpoint_every` steps. Its log history holds, per callback record, the mean training loss
    since the previous record ("loss") and the record's "eval_loss"; without a callback, the
    mean training loss at each checkpoint.
    """
    if checkpoint_every and checkpoint_dir is None:
        raise ValueError("checkpoint_every > 0 needs a checkpoint_dir")
    from tqdm.auto import tqdm

    config = config or TrainConfig()
    torch.manual_seed(config.seed)
    model = NanoGPTForCausalLM(model_config)
    generator = torch.Generator().manual_seed(config.seed)
    decay = [p for n, p in model.named_parameters() if p.ndim == 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=config.lr, betas=(0.9, 0.95))
    result = TrainResult(model=model)
    tokens_per_step = config.batch_size * config.seq_len
    log_history: list[dict] = []
    logged = 0  # train losses already averaged into the log history

    def log(step: int, record: dict | None) -> None:
        nonlocal logged
        if step > logged and (record is not None or callback is None):
            window = result.train_losses[logged:step]
            log_history.append({"loss": float(np.mean(window)), "learning_rate": config.lr_at(step - 1), "step": step})
            logged = step
        if record is not None:
            log_history.append({"eval_loss": float(record["eval_loss"]), "step": step})
        if checkpoint_every and step % checkpoint_every == 0:
            save_trainer_checkpoint(model, Path(checkpoint_dir) / f"checkpoint-{step}", step, config.steps,
                                    log_history, tokenizer=byte_tokenizer(), save_steps=checkpoint_every)

    if callback is not None or checkpoint_every:
        log(0, callback(model, 0, train_loss=None, tokens=0) if callback is not None else None)
    model.train()
    bar = tqdm(range(config.steps), desc=desc, disable=not progress)
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = config.lr_at(step)
        ids = data.train_batch(generator, config.batch_size, config.seq_len)  # (batch, seq)
        loss = model(input_ids=ids, labels=ids).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        result.train_losses.append(loss.item())
        record = None
        if callback is not None:
            record = callback(model, step + 1, train_loss=result.train_losses[-1], tokens=(step + 1) * tokens_per_step)
            if record is not None:
                bar.set_postfix(eval_loss=f"{record['eval_loss']:.3f}")
        if record is not None or (checkpoint_every and (step + 1) % checkpoint_every == 0):
            log(step + 1, record)
    model.eval()
    if callback is not None:
        result.records = list(callback.records)
    return result


def run_config_dict(model_config: NanoGPTConfig, config: TrainConfig) -> dict:
    """Flat description of a run for logs: the architecture fields that the sweeps vary plus TrainConfig."""
    arch = {k: getattr(model_config, k) for k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                                  "intermediate_size", "hidden_act", "norm_placement",
                                                  "position_embedding")}
    return {**arch, **asdict(config)}


# --- Spectral Lens finding 3: head of the activation spectrum alongside gradient spectra --------

GRADIENT_COLUMNS = ("grad_eff_rank", "grad_stable_rank", "grad_topk_share")


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

