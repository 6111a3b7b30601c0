"""Private Fine-Tuning: LoRA fine-tuning of an LLM on private data, inside your own cluster."""

__version__ = "0.1.0"
