"""Retrieval over the train split's records (BM25): the yardstick fine-tuning is judged against, and an
opt-in way of serving (docs/retrieval.md)."""
