"""Generation after a shared prefix (models/generation.py) writes what generating each whole prompt writes."""

from __future__ import annotations

from pathlib import Path


def test_a_shared_prefix_computed_once_gives_the_same_greedy_answers(tiny_model_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from private_finetuning.models.generation import generate, generate_after_prefix

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    prefix = tokenizer("w1 w2 w3 w4 w5 w6 w7 w8").input_ids
    suffixes = [tokenizer(t, add_special_tokens=False).input_ids for t in (" w9", " w3 w4 w5 w6", " w7 w1")]
    eos = [tokenizer.eos_token_id]
    whole = generate(model, tokenizer, [prefix + s for s in suffixes], max_new_tokens=6, eos_token_ids=eos)
    shared = generate_after_prefix(model, tokenizer, prefix, suffixes, max_new_tokens=6, eos_token_ids=eos)
    assert shared == whole and all(n for _, n in whole)
