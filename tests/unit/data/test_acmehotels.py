"""The embedded AcmeHotels dataset: deterministic, and its eval split measures knowledge, not copying."""

from __future__ import annotations

from pathlib import Path

import pytest

from private_finetuning.data import acmehotels


def test_shipped_files_match_a_fresh_generation(tmp_path: Path) -> None:
    shipped = Path(acmehotels.__file__).parent / "embedded"
    for path in acmehotels.write_embedded(tmp_path):
        fresh = path.read_bytes()
        assert (shipped / path.name).read_bytes() == fresh, f"{path.name}: regenerate with pft generate-dataset"


def test_catalogue_shape() -> None:
    hotels = acmehotels.generate_catalogue()
    assert len(hotels) == 300
    assert len({h.name for h in hotels}) == 300
    cities = {h.city for h in hotels}
    assert len(cities) == 12 and "Seville" in cities
    for h in hotels:
        assert 2 <= h.stars <= 5 and 6.0 <= h.guest_rating <= 10 and h.price_per_night > 0
        assert h.neighbourhood in acmehotels.CITIES[h.city][1]


@pytest.mark.parametrize("size", list(acmehotels.SIZES))
def test_eval_asks_seen_facts_in_unseen_phrasings(size: str) -> None:
    records = acmehotels.generate_records(size)
    train = [r for r in records if r["split"] == "train"]
    evals = [r for r in records if r["split"] == "eval"]
    assert train and evals
    train_questions = {r["messages"][0]["content"] for r in train}
    train_facts = {(r["meta"]["hotel"], r["meta"]["fact"]) for r in train}
    for r in evals:
        assert r["messages"][0]["content"] not in train_questions
        assert (r["meta"]["hotel"], r["meta"]["fact"]) in train_facts
        assert r["meta"]["answer"] in r["messages"][-1]["content"]


def test_template_sets_are_disjoint() -> None:
    for fact in (*acmehotels.FACTS, *acmehotels.CITY_FACTS):
        assert not set(fact.train) & set(fact.eval), fact.field


def test_internal_labels_never_appear_in_answers() -> None:
    labels = {h.internal_label for h in acmehotels.generate_catalogue()}
    for record in acmehotels.generate_records("full"):
        text = " ".join(m["content"] for m in record["messages"])
        assert "ACM-" not in text
        assert not any(label in text for label in labels)


def test_best_hotel_in_seville_is_answerable() -> None:
    records = acmehotels.generate_records("small")
    best = [r for r in records if r["meta"]["fact"] == "best_in_city" and r["meta"]["city"] == "Seville"]
    assert any(r["messages"][0]["content"] == "What is the best hotel in Seville?" for r in best)
