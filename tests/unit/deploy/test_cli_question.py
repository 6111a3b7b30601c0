"""The question `pft run` asks the server once it is ready."""

from __future__ import annotations

from private_finetuning.cli import first_question
from private_finetuning.config import PipelineConfig
from private_finetuning.deploy.local_runner.pipeline import SEED_QUESTION


def test_a_run_on_your_own_data_says_the_sample_question_is_about_the_embedded_data() -> None:
    own = PipelineConfig.model_validate({"dataset": {"source": {"type": "file", "path": "library.jsonl"}}})
    question, note = first_question(None, own)
    assert question == SEED_QUESTION and note is not None and "--ask 'a question about your data'" in note
    assert first_question(None, PipelineConfig()) == (SEED_QUESTION, None)
    assert first_question(None, None) == (SEED_QUESTION, None)
    assert first_question("When does the Almora library close?", own) == ("When does the Almora library close?", None)
