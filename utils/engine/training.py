"""Training a small decoder from scratch on CPU while recording its spectra (notebook 06).

- Data: `TokenData` cuts a held-out tail off a corpus token stream; training batches are random
  contiguous windows drawn from a seeded generator, eval batches are fixed windows of the tail.
- `train`: AdamW with linear warmup and cosine decay, deterministic for a fixed seed; a
  `SpectralCallback` (utils.engine.spectral_callback) records spectra during the run, and
  checkpoints go out in Trainer's layout (utils.models.trainer_checkpoint).

The model classes and `byte_tokenizer` live in `utils.models.nanogpt`; they, the callback, the
FFN hooks and the per-sample gradients are re-exported here (importing this module registers
model_type "spectra_nanogpt" with the Auto classes).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from utils.engine.corpus import DEFAULT_CORPUS, load_corpus
from utils.engine.hooks import ffn_covariances
from utils.engine.per_sample_gradients import per_sample_grads
from utils.engine.spectral_callback import GRADIENT_COLUMNS, SpectralCallback, SpectralTrainerCallback, head_gradient_movement
from utils.metrics.spectra import nerve_metrics
from utils.models.nanogpt import NanoGPTConfig, NanoGPTForCausalLM, byte_tokenizer
from utils.models.trainer_checkpoint import save_trainer_checkpoint

__all__ = [
    "NanoGPTConfig", "NanoGPTForCausalLM", "byte_tokenizer", "TokenData", "TrainConfig", "TrainResult",
    "train", "ffn_covariances", "nerve_metrics", "per_sample_grads", "SpectralCallback",
    "SpectralTrainerCallback", "run_config_dict", "save_trainer_checkpoint", "head_gradient_movement",
    "GRADIENT_COLUMNS",
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


def _optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on the matrices only."""
    decay = [p for n, p in model.named_parameters() if p.ndim == 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=config.lr, betas=(0.9, 0.95))


@dataclass
class _CheckpointLog:
    """Trainer's log history of a run, and its checkpoints (see `train`)."""

    model: torch.nn.Module
    config: TrainConfig
    train_losses: list[float]
    has_callback: bool
    every: int = 0
    directory: str | Path | None = None
    history: list[dict] = field(default_factory=list)
    logged: int = 0  # train losses already averaged into the history

    def log(self, step: int, record: dict | None) -> None:
        if step > self.logged and (record is not None or not self.has_callback):
            window = self.train_losses[self.logged:step]
            self.history.append({"loss": float(np.mean(window)), "learning_rate": self.config.lr_at(step - 1),
                                 "step": step})
            self.logged = step
        if record is not None:
            self.history.append({"eval_loss": float(record["eval_loss"]), "step": step})
        if self.every and step % self.every == 0:
            save_trainer_checkpoint(self.model, Path(self.directory) / f"checkpoint-{step}", step, self.config.steps,
                                    self.history, tokenizer=byte_tokenizer(), save_steps=self.every)


def _step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, ids: torch.Tensor, config: TrainConfig,
          step: int) -> float:
    """One optimizer step on ids (batch, S); returns the training loss."""
    for group in optimizer.param_groups:
        group["lr"] = config.lr_at(step)
    loss = model(input_ids=ids, labels=ids).loss
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
    optimizer.step()
    return loss.item()


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
    config = config or TrainConfig()
    torch.manual_seed(config.seed)
    model = NanoGPTForCausalLM(model_config)
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = _optimizer(model, config)
    result = TrainResult(model=model)
    tokens_per_step = config.batch_size * config.seq_len
    log = _CheckpointLog(model, config, result.train_losses, callback is not None, checkpoint_every, checkpoint_dir)
    if callback is not None or checkpoint_every:
        log.log(0, callback(model, 0, train_loss=None, tokens=0) if callback is not None else None)
    model.train()
    bar = tqdm(range(config.steps), desc=desc, disable=not progress)
    for step in bar:
        ids = data.train_batch(generator, config.batch_size, config.seq_len)  # (batch, S)
        result.train_losses.append(_step(model, optimizer, ids, config, step))
        record = None
        if callback is not None:
            record = callback(model, step + 1, train_loss=result.train_losses[-1], tokens=(step + 1) * tokens_per_step)
            if record is not None:
                bar.set_postfix(eval_loss=f"{record['eval_loss']:.3f}")
        if record is not None or (checkpoint_every and (step + 1) % checkpoint_every == 0):
            log.log(step + 1, record)
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
