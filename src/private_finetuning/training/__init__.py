"""LoRA fine-tuning: the recipe (``recipe.TrainingRun``: setup → fit → finish) and the parts it uses.

``lora`` (adapters), ``batching`` (epochs by fact, length-grouped batches, the weighted loss),
``shared_prefix`` (the system prompt computed once per batch), ``schedule`` (how many steps fit the
budget), ``checkpoints`` (resumable training state), ``distributed`` (torchrun / Kubeflow Trainer ranks, DDP or FSDP),
``forgetting`` (the optional KL term to the base model).
"""
