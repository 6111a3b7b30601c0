"""TensorBoard output on the fine-tuned-model volume: scalars, text, and the embedding projector.

Everything is written with ``torch.utils.tensorboard`` and the ``tensorboard`` package: no
TensorFlow. ``tensorboard --logdir <fine-tuned-model volume>`` shows training, evaluation and the
projector of the token embeddings most used by the private data.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

RUNS = "runs"


def run_dir(volume: Path, run_id: str) -> Path:
    return volume / RUNS / f"train-{run_id[:12]}"


def recorded_run_dir(volume: Path, recorded: object) -> Path | None:
    """The training run folder an adapter's manifest names, rebuilt here from its shape, never taken as a path.

    A manifest is data from a volume: only ``runs/train-<12 hex>`` is accepted, and the folder must be a
    real folder of this volume (not a symlink), so nothing is ever written outside it.
    """
    if not isinstance(recorded, str) or not re.fullmatch(rf"{RUNS}/train-[0-9a-f]{{12}}", recorded):
        return None
    path = volume / RUNS / recorded.split("/", 1)[1]
    if path.is_symlink() or (volume / RUNS).is_symlink() or not path.is_dir():
        return None
    return path


def open_writer(path: Path, purge_step: int | None = None) -> Any:
    from torch.utils.tensorboard import SummaryWriter

    path.mkdir(parents=True, exist_ok=True)
    # purge_step drops events a killed run logged after its last checkpoint, so a resumed curve is clean.
    return SummaryWriter(log_dir=str(path), purge_step=purge_step or None)


def add_token_projector(writer: SummaryWriter, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                        token_lists: list[list[int]], top_k: int) -> int:
    """Project the input embeddings of the ``top_k`` tokens the training data uses most."""
    if top_k <= 0:
        return 0
    counts = Counter(t for ids in token_lists for t in ids)
    special = set(tokenizer.all_special_ids)
    chosen = [t for t, _ in counts.most_common() if t not in special][:top_k]
    if not chosen:
        return 0
    import torch

    with torch.no_grad():
        weights = model.get_input_embeddings().weight[torch.tensor(chosen)].float().cpu()
    labels = [tokenizer.convert_ids_to_tokens(t).replace("\t", " ").replace("\n", "\\n") or f"<{t}>" for t in chosen]
    writer.add_embedding(weights, metadata=labels, tag="token_embeddings")
    return len(chosen)
