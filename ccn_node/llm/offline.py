"""A deterministic stand-in for a model: no network, no randomness, not a language model.

It lets a node run, be tested and be benchmarked with no API key, while exercising the
whole turn: it reads the context blocks and the dialogue, streams its reply in several
deltas, counts usage as ceil(chars/4) and costs nothing. Its replies say in their metadata
(`is_language_model=False`, `backend="offline"`) and in their first words what they are.

The reply is composed from the request: it acknowledges the user's last message, lists the
context sections it was given, answers from the plate line that best matches the message
(so validation questions about the persona get plate text back) and quotes the sentence of
the other sections that best matches the message.
"""

from __future__ import annotations

import asyncio
import functools
import math
import re
import time
from collections.abc import AsyncIterator
from typing import Any

from ccn_node.llm.base import (
    Completed,
    ContextBlock,
    ModelReply,
    ModelRequest,
    StreamEvent,
    TextDelta,
    Usage,
    estimate_tokens,
)

__all__ = ["OFFLINE_LABEL", "OfflineBackend", "compose_reply"]

OFFLINE_LABEL = "[offline backend, not a language model]"

_WORD = re.compile(r"[a-z0-9]+")
_SENTENCE = re.compile(r"(?<=[.!?])\s+")
_STOP = frozenset(
    {
        "a", "about", "am", "an", "and", "are", "as", "at", "be", "been", "but", "by", "can",
        "could", "describe", "did", "do", "does", "for", "from", "had", "has", "have", "how", "i",
        "if", "in", "into", "is", "it", "its", "me", "my", "of", "on", "or", "our", "please", "so",
        "tell", "than", "that", "the", "their", "them", "then", "there", "these", "they", "this",
        "to", "was", "we", "were", "what", "when", "where", "which", "who", "whom", "why", "will",
        "with", "would", "you", "your", "yours",
    }
)
_MAX_QUOTE = 240


@functools.lru_cache(maxsize=65536)
def _stem(word: str) -> str:
    """A crude suffix strip, enough to match "values"/"value", "helping"/"help". Remembered:
    the same words come back every turn (the plate's above all)."""
    if word.endswith("ies") and len(word) > 4:
        word = word[:-3] + "y"
    for suffix in ("ing", "ed", "ly", "s"):
        if word.endswith(suffix) and not word.endswith("ss") and len(word) - len(suffix) >= 3:
            word = word[: -len(suffix)]
            break
    return word[:-1] if word.endswith("e") and len(word) > 3 else word


def _terms(text: str) -> set[str]:
    return {_stem(w) for w in _WORD.findall(text.lower()) if w not in _STOP}


def _clip(text: str, limit: int = _MAX_QUOTE) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _plate_units(plate: str) -> list[tuple[str, bool]]:
    """Plate lines (markdown marks removed) split into sentences; (text, is_heading)."""
    units: list[tuple[str, bool]] = []
    for raw in plate.splitlines():
        line = raw.strip()
        if not line or set(line) <= set("-=*_#|` "):
            continue
        heading = line.startswith("#")
        line = line.lstrip("#").strip().lstrip("-*+>").strip()
        line = re.sub(r"^\d+[.)]\s+", "", line)
        if not line:
            continue
        if heading:
            units.append((line, True))
        else:
            units.extend((s, False) for s in _SENTENCE.split(line) if s.strip())
    return units


def _best(term_sets: list[set[str]], query: set[str], weights: dict[str, float]) -> int | None:
    """Index of the candidate sharing the most (idf-weighted) terms with the query."""
    best_i, best_score = None, 0.0
    for i, terms in enumerate(term_sets):
        score = sum(weights.get(t, 1.0) for t in terms & query)
        if score > best_score:
            best_i, best_score = i, score
    return best_i


def _idf(term_sets: list[set[str]]) -> dict[str, float]:
    df: dict[str, int] = {}
    for terms in term_sets:
        for term in terms:
            df[term] = df.get(term, 0) + 1
    n = len(term_sets)
    return {term: math.log(1 + n / d) for term, d in df.items()}


@functools.lru_cache(maxsize=8)
def _plate_index(plate: str) -> tuple[list[tuple[str, bool]], list[set[str]], dict[str, float]]:
    """The plate's units, their terms and their idf: the plate changes rarely, turns often
    (parsing and stemming it again was most of a turn's CPU in the offline backend)."""
    units = _plate_units(plate)
    term_sets = [_terms(u[0]) for u in units]
    return units, term_sets, _idf(term_sets)


def _plate_answer(plate: str, query: set[str]) -> str:
    """The best-matching plate line; under a matching heading, the lines that follow it."""
    units, term_sets, weights = _plate_index(plate)
    if not units:
        return ""
    texts = [u[0] for u in units]
    i = _best(term_sets, query, weights)
    if i is None:
        first = next((t for t, h in units if not h), texts[0])
        return _clip(first)
    if units[i][1]:
        body = [t for t, h in units[i + 1 : i + 4] if not h]
        return _clip(f"{texts[i]}: " + " ".join(body) if body else texts[i])
    return _clip(texts[i])


def _history_quote(blocks: list[ContextBlock], query: set[str]) -> tuple[str, str] | None:
    """(kind, sentence) of the non-plate section sentence closest to the query."""
    candidates: list[tuple[str, str]] = []
    for b in blocks:
        for line in b.text.splitlines():
            candidates.extend((b.kind, s.strip()) for s in _SENTENCE.split(line) if s.strip())
    if not candidates:
        return None
    term_sets = [_terms(c[1]) for c in candidates]
    i = _best(term_sets, query, _idf(term_sets))
    if i is None:
        history = [c for c in candidates if any(k in c[0] for k in ("recent", "history", "relevant"))]
        return history[-1] if history else None
    return candidates[i]


def compose_reply(req: ModelRequest) -> str:
    """The offline reply text for a request (pure function of the request)."""
    last_user = next((m.content for m in reversed(req.messages) if m.role == "user"), "")
    query = _terms(last_user)
    plate = next((b for b in req.system if b.kind == "plate"), req.system[0] if req.system else None)
    others = [b for b in req.system if b is not plate and b.text]
    parts = [OFFLINE_LABEL]
    parts.append(f'You said: "{_clip(last_user, 200)}".' if last_user else "There is no user message.")
    if req.system:
        sections = ", ".join(f"{b.kind} ({estimate_tokens(b.text)} tokens)" for b in req.system)
        parts.append(f"I was given {len(req.system)} context sections: {sections}.")
    else:
        parts.append("I was given no context sections.")
    earlier = len(req.messages) - 1
    if earlier > 0:
        parts.append(f"The dialogue holds {earlier} earlier turn{'s' if earlier != 1 else ''}.")
    if plate is not None and plate.text:
        answer = _plate_answer(plate.text, query)
        if answer:
            parts.append(f'From the plate: "{answer}"')
    quote = _history_quote(others, query)
    if quote is not None:
        parts.append(f'From {quote[0]}: "{_clip(quote[1])}"')
    return " ".join(parts)


def _split_deltas(text: str, size: int = 24) -> list[str]:
    """Word-boundary pieces of about `size` characters; they concatenate back to `text`."""
    pieces: list[str] = []
    start = 0
    while start < len(text):
        end = min(len(text), start + size)
        if end < len(text):
            space = text.rfind(" ", start + 1, end)
            if space > start:
                end = space + 1
        pieces.append(text[start:end])
        start = end
    return pieces


class OfflineBackend:
    """`ModelBackend` that composes replies locally; optional artificial latency."""

    name = "offline"

    def __init__(self, *, latency_ms: float = 0.0, model: str = "offline") -> None:
        self.model = model
        self.latency_ms = latency_ms

    def configured(self) -> bool:
        return True

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "model": self.model,
            "configured": True,
            "is_language_model": False,
            "latency_ms": self.latency_ms,
            "priced": True,
        }

    async def aclose(self) -> None:
        return None

    async def stream(self, req: ModelRequest) -> AsyncIterator[StreamEvent]:
        """The composed reply in word-boundary deltas, then Completed."""
        t0 = time.perf_counter()
        text = compose_reply(req)
        stop_reason = "end_turn"
        limit = max(0, req.max_tokens) * 4
        if len(text) > limit:
            text, stop_reason = text[:limit], "max_tokens"
        if self.latency_ms > 0:
            await asyncio.sleep(self.latency_ms / 1000.0)
        for piece in _split_deltas(text):
            yield TextDelta(piece)
            await asyncio.sleep(0)
        prompt = sum(estimate_tokens(b.text) for b in req.system) + sum(
            estimate_tokens(m.content) for m in req.messages
        )
        usage = Usage(input_tokens=prompt, output_tokens=estimate_tokens(text))
        yield Completed(
            ModelReply(
                text=text,
                usage=usage,
                model=self.model,
                backend=self.name,
                stop_reason=stop_reason,
                cost_usd=0.0,
                is_language_model=False,
                latency_ms=(time.perf_counter() - t0) * 1000.0,
            )
        )

    async def complete(self, req: ModelRequest) -> ModelReply:
        """The same reply as `stream`, collected."""
        async for event in self.stream(req):
            if isinstance(event, Completed):
                return event.reply
        raise AssertionError("offline stream ended without Completed")  # pragma: no cover
