"""Checkpoints in `transformers.Trainer`'s layout (notebook 06 writes them, notebook 08 reads them)."""

from __future__ import annotations

from pathlib import Path

import torch.nn as nn
from transformers import TrainerState

from utils.atomic_io import atomic_directory


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
