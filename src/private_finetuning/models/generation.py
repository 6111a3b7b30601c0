"""Batched greedy generation: one implementation for training samples, evaluation and serving."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from private_finetuning.data.chat import encode_prompt, with_system

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from private_finetuning.data.record import Record


def generate(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[list[int]], *,
             max_new_tokens: int, eos_token_ids: list[int], device: str = "cpu", do_sample: bool = False,
             temperature: float = 1.0, top_p: float = 1.0, streamer: Any = None,
             max_time: float | None = None, stopping_criteria: list[Any] | None = None) -> list[tuple[str, int]]:
    """Answer each prompt (token ids); returns (text, number of generated tokens) per prompt.

    Prompts are left-padded into one batch so every answer starts at the same position.
    ``streamer`` receives each step's tokens (transformers' streamer protocol); ``max_time`` bounds
    the generation in seconds; ``stopping_criteria`` (callables of the ids and scores) may end it early.
    """
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class _AllRows(StoppingCriteria):
        """A callable of (ids, scores) that ends every row at once, as a transformers stopping criterion."""

        def __init__(self, check: Any):
            self.check = check

        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            return torch.full((input_ids.shape[0],), bool(self.check(input_ids, scores)), dtype=torch.bool)

    pad_id = _pad_id(tokenizer, eos_token_ids)
    ids, mask = _left_padded(prompts, pad_id)
    with torch.inference_mode():
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new_tokens,
                             eos_token_id=eos_token_ids, pad_token_id=pad_id, streamer=streamer, max_time=max_time,
                             stopping_criteria=StoppingCriteriaList([_AllRows(c) for c in stopping_criteria or []]),
                             synced_gpus=False,  # one process generates alone, also for an FSDP-trained model
                             **_sampling(do_sample, temperature, top_p))
    return _decoded(tokenizer, out[:, ids.shape[1]:].tolist(), eos_token_ids)


def _pad_id(tokenizer: PreTrainedTokenizerBase, eos_token_ids: list[int]) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_token_ids[0]


def _left_padded(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask of ``rows`` left-padded into one batch, so every row ends at the same column."""
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row):] = torch.tensor(row)
        mask[i, width - len(row):] = 1
    return ids, mask


def _sampling(do_sample: bool, temperature: float, top_p: float) -> dict[str, Any]:
    """``model.generate``'s sampling arguments: sampled, or greedy with the model's own defaults cleared."""
    if do_sample:
        return {"do_sample": True, "temperature": temperature, "top_p": top_p}
    return {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}


def _decoded(tokenizer: PreTrainedTokenizerBase, rows: list[list[int]],
             eos_token_ids: list[int]) -> list[tuple[str, int]]:
    """Each row of generated ids as (text up to its first end token, that many tokens)."""
    stop = set(eos_token_ids)
    results = []
    for row in rows:
        n = next((i for i, t in enumerate(row) if t in stop), len(row))
        results.append((tokenizer.decode(row[:n], skip_special_tokens=True).strip(), n))
    return results



def generate_after_prefix(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prefix: list[int],
                          suffixes: list[list[int]], *, max_new_tokens: int, eos_token_ids: list[int],
                          device: str = "cpu", do_sample: bool = False, temperature: float = 1.0,
                          top_p: float = 1.0) -> list[tuple[str, int]]:
    """:func:`generate` for prompts that all start with ``prefix`` (a few-shot prompt): the prefix is run once, its
    key/value cache repeated for every row, and only each row's own tokens are computed on top of it.

    Rows are ``prefix + padding + suffix``: the padding is masked, and positions come from the mask, so each
    suffix continues the prefix exactly as if it were written right after it. On a 210-token prompt with a
    45-token suffix this is most of the work saved (the prompt's forward dominates short completions)."""
    import copy

    import torch

    pad_id = _pad_id(tokenizer, eos_token_ids)
    with torch.inference_mode():
        cache = model(input_ids=torch.tensor([prefix], device=device), use_cache=True).past_key_values
    own_ids, own_mask = _left_padded(suffixes, pad_id)
    ids = torch.cat([torch.tensor([prefix]).expand(len(suffixes), -1), own_ids], dim=1)
    mask = torch.cat([torch.ones((len(suffixes), len(prefix)), dtype=torch.long), own_mask], dim=1)
    rows = copy.deepcopy(cache)
    rows.batch_repeat_interleave(len(suffixes))
    with torch.inference_mode():
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), cache=rows,
                             max_new_tokens=max_new_tokens, eos_token_id=eos_token_ids, pad_token_id=pad_id,
                             **_sampling(do_sample, temperature, top_p))
    return _decoded(tokenizer, out[:, ids.shape[1]:].tolist(), eos_token_ids)


def answer_questions(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, questions: list[Record], *,
                     system_prompt: str,
                     eos_token_ids: list[int], batch_size: int, max_new_tokens: int, device: str = "cpu",
                     on_batch: Any = None) -> tuple[list[str], int]:
    """Greedy answers to chat records' last user question (their last message is the expected answer),
    asked with the system prompt, in batches; also the number of tokens generated.
    ``on_batch(done, total)`` is called after each batch, for progress logs."""
    prompts = [encode_prompt(tokenizer, with_system(q.messages[:-1], system_prompt)) for q in questions]
    # Batches of prompts of similar length: less padding to compute; answers are put back in question order.
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    answers: list[str] = [""] * len(prompts)
    generated = 0
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        for i, (text, n) in zip(rows, generate(model, tokenizer, [prompts[i] for i in rows],
                                               max_new_tokens=max_new_tokens, eos_token_ids=eos_token_ids,
                                               device=device), strict=True):
            answers[i] = text
            generated += n
        if on_batch is not None:
            on_batch(min(start + batch_size, len(order)), len(prompts))
    return answers, generated
