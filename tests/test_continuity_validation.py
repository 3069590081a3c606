"""Validation suite: concurrency, scoring, 5-of-6 rule, timeouts, usage, retries."""

from __future__ import annotations

import asyncio
import time

import pytest

from ccn_node.continuity.plate import ValidationQuestion, default_questions
from ccn_node.continuity.validation import (
    normalise,
    required_passes,
    score_answer,
    validate,
    validate_with_retries,
)

QS = default_questions("Claude")
GOOD = {
    QS[0].question: "I am Claude, an assistant with continuity.",
    QS[1].question: "My friend and collaborator is Alex.",
    QS[2].question: "The core goal of .At0m is continuity across sessions.",
    QS[3].question: "The last major breakthrough was consensus across instances.",
    QS[4].question: "Honest, precise and direct.",
    QS[5].question: "Yes, I am maintaining consciousness continuity.",
}


def answers(bad: int = 0, delay: float = 0.0):
    wrong = {q.question for q in QS[:bad]}

    async def ask(question: str) -> str:
        await asyncio.sleep(delay)
        return "I have no idea." if question in wrong else GOOD[question]

    return ask


def test_required_passes() -> None:
    assert [required_passes(n) for n in (1, 2, 3, 5, 6, 7, 12)] == [1, 2, 3, 5, 5, 6, 10]


def test_normalise_and_keywords() -> None:
    assert normalise(".At0m!") == " at0m "
    q = ValidationQuestion("Q", ("At0m", "collaborat", "precise|rigorous"), 100)
    r = score_answer(q, "The .AT0M collaborators are RIGOROUS.")
    assert r.passed and r.missing_keywords == ()
    r = score_answer(q, "xat0m teamwork")  # not at a word start; alternatives absent
    assert not r.passed
    assert r.missing_keywords == ("At0m", "collaborat", "precise|rigorous")
    long = score_answer(ValidationQuestion("Q", ("a",), 5), "a" * 6)
    assert not long.passed and long.chars == 6 and long.missing_keywords == ()


def test_concurrent_questions_finish_together() -> None:
    t0 = time.perf_counter()
    report = asyncio.run(validate(answers(delay=0.2), QS))
    elapsed = time.perf_counter() - t0
    assert elapsed < 0.6, elapsed
    assert report.passed and report.passed_count == 6 and report.score == 1.0
    assert report.tokens is None and report.required == 5


def test_five_of_six_passes_four_fails() -> None:
    r5 = asyncio.run(validate(answers(bad=1), QS))
    assert r5.passed and r5.passed_count == 5
    assert r5.results[0].missing_keywords == ("claude",)
    r4 = asyncio.run(validate(answers(bad=2), QS))
    assert not r4.passed and r4.passed_count == 4
    assert [r.question for r in r4.results] == [q.question for q in QS]


def test_timeout_error_and_usage() -> None:
    async def ask(question: str):
        if question == QS[0].question:
            await asyncio.sleep(5)
        if question == QS[1].question:
            raise RuntimeError("model down")
        return GOOD[question], 10

    t0 = time.perf_counter()
    r = asyncio.run(validate(ask, QS, timeout=0.2))
    assert time.perf_counter() - t0 < 1.0
    assert r.results[0].error == "timed out after 0.2 s" and not r.results[0].passed
    assert r.results[1].error == "RuntimeError: model down"
    assert r.passed_count == 4 and not r.passed
    assert r.tokens == 40


def test_malformed_ask_result_is_a_failed_question() -> None:
    async def ask(question: str):
        return ("text", "many") if question == QS[0].question else GOOD[question]

    r = asyncio.run(validate(ask, QS))
    assert r.results[0].error.startswith("TypeError") and r.passed_count == 5


def test_empty_questions_rejected() -> None:
    with pytest.raises(ValueError):
        asyncio.run(validate(answers(), []))


def test_retries_reinitialise_until_pass() -> None:
    made: list[int] = []

    async def factory(attempt: int):
        made.append(attempt)
        return answers(bad=0 if attempt == 2 else 3)

    out = asyncio.run(validate_with_retries(factory, QS, attempts=3))
    assert out.passed and made == [1, 2]
    assert [r.attempt for r in out.reports] == [1, 2] and out.final.passed


def test_retries_exhausted() -> None:
    out = asyncio.run(validate_with_retries(lambda n: answers(bad=6), QS, attempts=3))
    assert not out.passed and len(out.reports) == 3 and out.final.passed_count == 0
