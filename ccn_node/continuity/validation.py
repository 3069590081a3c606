"""The validation suite, independent of any model: ask the plate's questions, score answers.

Why concurrent: a spawn waits for validation before the instance may talk to a user; asked
one after another, six questions at ~0.5–1 s each would make every spawn take seconds.
With `asyncio.gather` the wait is the slowest answer (bounded by a per-question timeout).

Scoring is deliberately mechanical (keywords + length) so it is deterministic and cheap;
it checks that the instance has the plate's facts, not that it "is" the character.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import re
import time
import unicodedata
from collections.abc import Awaitable, Callable, Sequence

import msgspec

from ccn_node.continuity.plate import ValidationQuestion

__all__ = [
    "Ask",
    "AskFactory",
    "QuestionResult",
    "ValidationOutcome",
    "ValidationReport",
    "normalise",
    "required_passes",
    "score_answer",
    "validate",
    "validate_with_retries",
]

#: ask(question) → answer, or (answer, tokens used).
Ask = Callable[[str], Awaitable[str | tuple[str, int]]]
#: ask_factory(attempt) → a fresh (re-initialised) instance's `ask`; may be async.
AskFactory = Callable[[int], Ask | Awaitable[Ask]]

DEFAULT_TIMEOUT_S = 30.0
_NON_ALNUM_RE = re.compile(r"[^0-9a-z]+")


class QuestionResult(msgspec.Struct, frozen=True):
    """One question's outcome; `error` is set when the ask failed or timed out."""

    question: str
    answer: str
    passed: bool
    missing_keywords: tuple[str, ...]
    chars: int
    max_chars: int
    tokens: int | None = None
    error: str | None = None


class ValidationReport(msgspec.Struct, frozen=True):
    """One run of the suite. `score` = passed_count / len(results)."""

    results: tuple[QuestionResult, ...]
    passed: bool
    score: float
    passed_count: int
    required: int
    tokens: int | None
    elapsed_ms: float
    attempt: int = 1


class ValidationOutcome(msgspec.Struct, frozen=True):
    """All attempts of `validate_with_retries`; the last report decides."""

    passed: bool
    reports: tuple[ValidationReport, ...]
    tokens: int | None

    @property
    def final(self) -> ValidationReport:
        """The report that decided the outcome."""
        return self.reports[-1]


def normalise(text: str) -> str:
    """NFKC, case-folded, every run of non-alphanumerics → one space, padded with spaces.

    Why: ".At0m", "AT0M!" and "at0m" must all match the keyword "At0m"; the padding lets a
    keyword match at a word start with a plain substring search.
    """
    t = unicodedata.normalize("NFKC", text).casefold()
    return " " + _NON_ALNUM_RE.sub(" ", t).strip() + " "


def _keyword_present(norm_answer: str, keyword: str) -> bool:
    for alt in keyword.split("|"):
        k = normalise(alt).strip()
        if k and (" " + k) in norm_answer:
            return True
    return False


def required_passes(n: int) -> int:
    """ceil(5n/6): 5 of 6 for the specification's suite; integer arithmetic, no rounding."""
    return -(-5 * n // 6)


def score_answer(q: ValidationQuestion, answer: str, tokens: int | None = None,
                 error: str | None = None) -> QuestionResult:
    """Pass when every keyword is present (alternatives with `|`) and len ≤ max_chars."""
    norm = normalise(answer)
    missing = tuple(k for k in q.keywords if not _keyword_present(norm, k))
    chars = len(answer)
    return QuestionResult(
        question=q.question, answer=answer,
        passed=error is None and not missing and chars <= q.max_chars,
        missing_keywords=missing, chars=chars, max_chars=q.max_chars,
        tokens=tokens, error=error,
    )


async def _ask_one(ask: Ask, q: ValidationQuestion, timeout: float) -> QuestionResult:
    try:
        got = await asyncio.wait_for(ask(q.question), timeout)
        if isinstance(got, tuple):
            answer, tokens = got
            if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
                raise TypeError(f"token count must be an int ≥ 0, got {tokens!r}")
        else:
            answer, tokens = got, None
        if not isinstance(answer, str):
            raise TypeError(f"answer must be a string, got {type(answer).__name__}")
    except TimeoutError:
        return score_answer(q, "", error=f"timed out after {timeout:g} s")
    except Exception as e:  # one bad answer must not cancel the others
        return score_answer(q, "", error=f"{type(e).__name__}: {e}")
    return score_answer(q, answer, tokens=tokens)


async def validate(ask: Ask, questions: Sequence[ValidationQuestion], *,
                   timeout: float = DEFAULT_TIMEOUT_S, attempt: int = 1) -> ValidationReport:
    """Ask all `questions` concurrently (each bounded by `timeout` seconds) and score them.

    Passes when at least ceil(5n/6) answers pass. `tokens` sums the usage reported by
    `ask` (None if it reported none).
    """
    if not questions:
        raise ValueError("validate: no questions to ask")
    if not (math.isfinite(timeout) and timeout > 0):
        raise ValueError(f"validate: timeout must be > 0 seconds, got {timeout!r}")
    t0 = time.perf_counter()
    results = tuple(await asyncio.gather(*(_ask_one(ask, q, timeout) for q in questions)))
    elapsed = (time.perf_counter() - t0) * 1000.0
    passed_count = sum(1 for r in results if r.passed)
    need = required_passes(len(results))
    used = [r.tokens for r in results if r.tokens is not None]
    return ValidationReport(
        results=results, passed=passed_count >= need,
        score=passed_count / len(results), passed_count=passed_count, required=need,
        tokens=sum(used) if used else None, elapsed_ms=elapsed, attempt=attempt,
    )


async def validate_with_retries(ask_factory: AskFactory,
                                questions: Sequence[ValidationQuestion], attempts: int = 3,
                                *, timeout: float = DEFAULT_TIMEOUT_S) -> ValidationOutcome:
    """Validate a fresh instance; on failure re-initialise (call the factory again) and
    retry, up to `attempts` runs in all. The caller refuses the conversation (503 with the
    final report) when the outcome did not pass."""
    if attempts < 1:
        raise ValueError(f"validate_with_retries: attempts must be ≥ 1, got {attempts}")
    reports: list[ValidationReport] = []
    for n in range(1, attempts + 1):
        made = ask_factory(n)
        ask: Ask = await made if inspect.isawaitable(made) else made  # type: ignore[assignment]
        report = await validate(ask, questions, timeout=timeout, attempt=n)
        reports.append(report)
        if report.passed:
            break
    used = [r.tokens for r in reports if r.tokens is not None]
    return ValidationOutcome(passed=reports[-1].passed, reports=tuple(reports),
                             tokens=sum(used) if used else None)
