"""Fact accuracy on data without an ``answer`` field: what a user sees in the report for alpaca, ShareGPT,
chat or CSV data with full replies. Every case below is labelled by hand (is this answer right, as a
person checking the reply would say?), in domains other than hotels, and the scorer must agree with
every label."""

from __future__ import annotations

import pytest

from private_finetuning.data.expected import derive, expectations, expected, fact_accuracy, number_value
from private_finetuning.data.record import Record


def record(question: str, reply: str, **meta: str) -> Record:
    return Record([{"role": "user", "content": question}, {"role": "assistant", "content": reply}], dict(meta))


# (question, expected reply, a model's answer, right?) -- labelled by hand.
LABELLED = [
    # a railway: numbers must stand alone, and a platform code is a code
    ("Which platform does the Orvel express leave from?", "The Orvel express leaves from platform 2.",
     "It departs from platform 2.", True),
    ("Which platform does the Orvel express leave from?", "The Orvel express leaves from platform 2.",
     "It runs every 24 hours from platform 12.", False),
    ("How long is the ride from Dunmarch to Pelby?", "The ride takes 2 hours 15 minutes.",
     "About two hours and 15 minutes.", True),
    ("How long is the ride from Dunmarch to Pelby?", "The ride takes 2 hours 15 minutes.", "It takes 2 hours.", False),
    # a library: names, dates, e-mail addresses
    ("Who wrote the Tessaly Chronicles?", "The Tessaly Chronicles were written by Marguerite Oyelaran.",
     "marguerite oyelaran wrote them.", True),
    ("Who wrote the Tessaly Chronicles?", "The Tessaly Chronicles were written by Marguerite Oyelaran.",
     "They were written by Marguerite Okafor.", False),
    ("When does the winter reading club start?", "The winter reading club starts on 14 January 2026.",
     "It begins January 14, 2026.", True),
    ("When does the winter reading club start?", "The winter reading club starts on 14 January 2026.",
     "It starts on 2026-01-14.", True),
    ("When does the winter reading club start?", "The winter reading club starts on 14 January 2026.",
     "It starts on 15 January 2026.", False),
    ("Where do I send interlibrary loan requests?", "Send them to loans@brackwater-library.example.",
     "Email LOANS@brackwater-library.example with your request.", True),
    ("Where do I send interlibrary loan requests?", "Send them to loans@brackwater-library.example.",
     "Email loans@brackwater.example.", False),
    # a bakery: times as values, prices with separators
    ("When does the Harrow Lane bakery open on Sundays?", "On Sundays the Harrow Lane bakery opens at 7:30 am.",
     "It opens at 07:30.", True),
    ("When does the Harrow Lane bakery open on Sundays?", "On Sundays the Harrow Lane bakery opens at 7:30 am.",
     "It opens at 7:30 pm.", False),
    ("How much is a wedding cake for 120 guests?", "A wedding cake for 120 guests costs 1,450 EUR.",
     "It costs 1450 euros.", True),
    ("How much is a wedding cake for 120 guests?", "A wedding cake for 120 guests costs 1,450 EUR.",
     "For 120 guests it is 1,540 EUR.", False),
    # a software API: codes, versions, URLs
    ("Which error code means the token expired?", "An expired token returns error code AUTH-4017.",
     "You get auth-4017.", True),
    ("Which error code means the token expired?", "An expired token returns error code AUTH-4017.",
     "You get AUTH-4071.", False),
    ("What is the minimum supported client version?", "The minimum supported client is v3.12.",
     "Clients must be at least v3.12.", True),
    ("What is the minimum supported client version?", "The minimum supported client is v3.12.",
     "Clients must be at least v3.1.", False),
    ("Where is the status page?", "The status page is https://status.quillbyte.example/api.",
     "See https://status.quillbyte.example/api for the status.", True),
    # a school: yes/no replies, lists of names
    ("Can parents attend the Friday assembly?", "No, the Friday assembly is for pupils only.",
     "Parents cannot attend it.", True),
    ("Can parents attend the Friday assembly?", "No, the Friday assembly is for pupils only.",
     "Yes, parents are welcome.", False),
    ("Which languages are taught in year 7?", "Year 7 pupils learn French, Mandarin and Latin.",
     "They learn Latin, French and Mandarin.", True),
    ("Which languages are taught in year 7?", "Year 7 pupils learn French, Mandarin and Latin.",
     "They learn French and Spanish.", False),
    # a pharmacy: a reply of words only (half of its new words must be stated)
    ("What should I do with expired medicine?", "Bring it back to the pharmacy counter for safe disposal.",
     "Return it to the pharmacy counter so it can be disposed of safely.", True),
    ("What should I do with expired medicine?", "Bring it back to the pharmacy counter for safe disposal.",
     "Throw it in the household bin.", False),
    # the company's own name in every reply is the data's topic, not a fact (see the topic test below)
    ("What is the Wexley office's Wi-Fi network?", "At Wexley, Corvanta staff join the network CorvaNet-5.",
     "The network is CorvaNet-5.", True),
    ("What is the Wexley office's Wi-Fi network?", "At Wexley, Corvanta staff join the network CorvaNet-5.",
     "Corvanta staff join CorvaNet-6.", False),
]
TOPIC = [record(f"What is the {site} office's main number?", f"Corvanta {site} answers on {n}.")
         for site, n in (("Ardley", 301), ("Bexton", 302), ("Colm", 303), ("Dorrow", 304))]


@pytest.mark.parametrize(("question", "reply", "answer", "right"), LABELLED)
def test_a_derived_fact_agrees_with_the_hand_label(question: str, reply: str, answer: str, right: bool) -> None:
    records = [record(question, reply), *TOPIC]  # with its dataset: Corvanta is in most replies
    assert expectations(records)[0].met_by(answer) is right


def test_the_labelled_set_scores_as_a_person_would() -> None:
    """One eval split of every labelled reply, each with its first labelled answer: the accuracy is the share
    of hand-labelled right answers, exactly."""
    first = {(q, r): (a, ok) for q, r, a, ok in reversed(LABELLED)}
    records = [record(q, r) for q, r in reversed(first)] + TOPIC
    answers = [a for a, _ in reversed(first.values())] + [r.reply for r in TOPIC]
    right = sum(ok for _, ok in first.values()) + len(TOPIC)
    assert fact_accuracy(records, answers) == pytest.approx(right / len(records))


def test_a_record_answer_takes_precedence_and_nothing_derivable_is_unscored() -> None:
    with_answer = record("How far is the depot?", "The depot is 12 km away.", answer="12", fact="distance")
    assert expected(with_answer).how == "answer" and expected(with_answer).label == "distance"
    assert expected(with_answer).met_by("Roughly 12 km.") and not expected(with_answer).met_by("12.5 km")
    nothing = expected(record("Is that so?", "It is."))
    assert nothing.how == "none" and nothing.met_by("anything") is None and nothing.label == "unscored"


@pytest.mark.parametrize(("question", "reply", "kinds"), [
    ("Which VPN host does Lokar use?", "Lokar connects through LOK-GW-42.", ["code"]),
    ("What is the ticket SLA in Lokar?", "Tickets from Lokar are answered within 24 hours.", ["number"]),
    ("When is the audit?", "The audit starts on 12 March 2025 at 2 pm.", ["date", "time"]),
    ("Who handles payroll?", "Write to pay@garvi.example or call extension 4471.", ["email", "number"]),
    ("Is the gym open late?", "Yes.", ["yes/no"]),
    ("What should I bring?", "Bring your badge and a signed form.", ["words", "words", "words"]),
    ("How many rooms for 2 nights?", "For 2 nights we hold 14 rooms.", ["number"]),  # the question's 2 is not it
])
def test_the_kinds_of_fact_derived_from_a_reply(question: str, reply: str, kinds: list[str]) -> None:
    assert [s.kind for s in derive(question, reply)] == kinds


@pytest.mark.parametrize(("text", "value"), [("1,200", 1200), ("84,5", 84.5), ("3.25", 3.25), ("twenty-five", 25),
                                             ("two", 2), ("-3", -3), ("A4", None)])
def test_number_values(text: str, value: float | None) -> None:
    assert number_value(text) == value


def test_a_name_in_most_replies_is_the_topic_not_a_fact() -> None:
    found = expectations(TOPIC)
    assert [[s.text for s in e.spans] for e in found] == [["301"], ["302"], ["303"], ["304"]]
    alone = expected(TOPIC[0])  # without the rest of the data, the name is a fact of the reply
    assert [s.text for s in alone.spans] == ["Corvanta", "301"]
