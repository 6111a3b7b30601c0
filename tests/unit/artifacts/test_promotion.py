"""Promotion records which adapter version is served; promoted versions survive pruning; rollback."""

from __future__ import annotations

from pathlib import Path

import pytest

from private_finetuning.artifacts import promotion
from private_finetuning.artifacts.store import Artifact, ArtifactWriter
from private_finetuning.errors import ArtifactError


def publish_adapter(volume: Path, text: str, keep: int = 0) -> Artifact:
    with ArtifactWriter(volume, "adapter", kind="lora-adapter", stage="test", keep_versions=keep) as writer:
        assert writer.path is not None
        (writer.path / "adapter_model.safetensors").write_text(text)
        return writer.commit(name=text, source={"base_model": {"digest": "b" * 64}})


def versions(volume: Path) -> set[str]:
    return {p.name for p in (volume / "adapter").iterdir() if p.is_dir() and not p.is_symlink()}


def test_promoted_and_previously_promoted_versions_survive_pruning(tmp_path: Path) -> None:
    a = publish_adapter(tmp_path, "a")
    promotion.promote(tmp_path, a, report_digest=None, by="test", reason="a")
    b = publish_adapter(tmp_path, "b")
    c = publish_adapter(tmp_path, "c")
    assert versions(tmp_path) == {a.path.name, c.path.name}  # b was never promoted, keep_versions is 0
    promotion.promote(tmp_path, c, report_digest=None, by="test", reason="c")
    d = publish_adapter(tmp_path, "d")
    assert versions(tmp_path) == {a.path.name, c.path.name, d.path.name}  # promoted-previous, promoted, current
    assert b.path.name not in versions(tmp_path)


def test_rollback_promotes_the_previous_adapter_and_keeps_the_history(tmp_path: Path) -> None:
    a = publish_adapter(tmp_path, "a")
    first = promotion.promote(tmp_path, a, report_digest="r" * 64, by="test", reason="first")
    assert promotion.promote(tmp_path, a, report_digest="r" * 64, by="again", reason="no-op") == first
    b = publish_adapter(tmp_path, "b")
    promotion.promote(tmp_path, b, report_digest=None, by="test", reason="second")
    back = promotion.rollback(tmp_path, by="pft rollback")
    assert back.adapter_digest == a.manifest.digest and back.report_digest == "r" * 64
    assert promotion.adapter_of(tmp_path, back).manifest.digest == a.manifest.digest
    assert [p.reason for p in promotion.history(tmp_path)][:3] == [back.reason, "second", "first"]


def test_nothing_to_roll_back_is_said_plainly(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="nothing is promoted"):
        promotion.rollback(tmp_path, by="test")
    promotion.promote(tmp_path, publish_adapter(tmp_path, "a"), report_digest=None, by="test", reason="only")
    with pytest.raises(ArtifactError, match="no earlier promotion of another adapter"):
        promotion.rollback(tmp_path, by="test")


def test_a_promoted_version_whose_bytes_changed_is_refused(tmp_path: Path) -> None:
    a = publish_adapter(tmp_path, "a")
    promoted = promotion.promote(tmp_path, a, report_digest=None, by="test", reason="a")
    (a.path.resolve() / "adapter_model.safetensors").write_text("b")
    with pytest.raises(ArtifactError, match="sha256 does not match"):
        promotion.adapter_of(tmp_path, promoted)


def test_two_promotions_at_once_are_serialised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The evaluation and `pft rollback` (or two runs) promoting at the same moment: each gets its own sequence
    number, and the `promoted` link protects the very version the record in force names."""
    import threading
    import time

    a, b = (publish_adapter(tmp_path, x, keep=2) for x in "ab")
    read = promotion.current

    def slow_read(volume: Path) -> promotion.Promotion | None:
        found = read(volume)
        time.sleep(0.3)  # the other promotion runs meanwhile, unless it has to wait for this one
        return found

    monkeypatch.setattr(promotion, "current", slow_read)
    threads = [threading.Thread(target=promotion.promote, args=(tmp_path, x),
                                kwargs={"report_digest": None, "by": "test", "reason": x.manifest.name})
               for x in (a, b)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    monkeypatch.setattr(promotion, "current", read)
    in_force = promotion.current(tmp_path)
    assert sorted(p.sequence for p in promotion.history(tmp_path)) == [1, 2]
    assert (tmp_path / "adapter" / "promoted").resolve().name == in_force.adapter_version


def test_the_promotion_records_the_tokenizer_the_adapter_was_trained_with(tmp_path: Path) -> None:
    with ArtifactWriter(tmp_path, "adapter", kind="lora-adapter", stage="test") as writer:
        (writer.path / "adapter_model.safetensors").write_text("a")
        adapter = writer.commit(name="a", source={"base_model": {"digest": "b" * 64},
                                                  "base_tokenizer": {"digest": "t" * 64}})
    promoted = promotion.promote(tmp_path, adapter, report_digest=None, by="test", reason="a")
    assert promoted.base_tokenizer_digest == "t" * 64 == promotion.current(tmp_path).base_tokenizer_digest


def test_an_evaluation_promoting_during_a_rollback_is_never_overwritten(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """rollback once chose its target before taking the promotion lock: an evaluation promoting in between was
    overwritten by a rollback to an adapter chosen from an older state. Now the evaluation waits for the lock and
    its promotion is the one in force after both."""
    import threading

    a, b = publish_adapter(tmp_path, "a", keep=5), publish_adapter(tmp_path, "b", keep=5)
    promotion.promote(tmp_path, a, report_digest=None, by="test", reason="a")
    promotion.promote(tmp_path, b, report_digest=None, by="test", reason="b")
    c = publish_adapter(tmp_path, "c", keep=5)
    evaluation = threading.Thread(target=lambda: promotion.promote(tmp_path, c, report_digest=None, by="evaluation",
                                                                   reason="c passed its gates"))
    real_history = promotion.history

    def history_while_an_evaluation_promotes(volume: Path) -> list[promotion.Promotion]:
        seen = real_history(volume)  # the rollback's view, then the evaluation tries to promote c
        evaluation.start()
        evaluation.join(1.0)  # without the lock it would finish here, before the rollback records
        return seen

    monkeypatch.setattr(promotion, "history", history_while_an_evaluation_promotes)
    back = promotion.rollback(tmp_path, by="pft rollback")
    evaluation.join(10)
    assert back.adapter_digest == a.manifest.digest
    assert promotion.current(tmp_path).adapter_digest == c.manifest.digest  # the evaluation's, after the rollback
    monkeypatch.setattr(promotion, "history", real_history)
    assert [p.reason for p in promotion.history(tmp_path)][:2] == ["c passed its gates", back.reason]
