"""`ccn-node bench context`: a synthetic corpus, and the speed of context assembly and search.

Why synthetic and why this shape: the figures must hold at 1M messages on a small machine,
so the generator is fast (numpy sampling, thousands of commands per transaction through
``StateMachine.apply_batch`` — the same apply path as the log and recovery) and the text is
realistic enough for FTS5 to work as hard as on real chat: a Zipf-distributed vocabulary of
pronounceable words with the common English function words at the top, plus each
conversation's own topic words, messages of log-normal length.

Users and conversations: ``users`` users (default 100) own ``conversations`` conversations
(default 1,000) round-robin, so 10 each; messages are spread evenly over the conversations and
interleaved in time, so one user's rows are scattered through the table — the worst case for
the per-user filter. Roles alternate user/assistant within a conversation.
"""

from __future__ import annotations

import math
import random
import time
from pathlib import Path
from typing import Any

import numpy as np

from ccn_node.config import ContextSettings
from ccn_node.continuity.context import ContextAssembler
from ccn_node.continuity.plate import parse_plate
from ccn_node.continuity.retrieval import search
from ccn_node.replication import commands as c
from ccn_node.replication.state_machine import StateMachine
from ccn_node.store.database import Store

__all__ = ["generate_corpus", "run_context_bench"]

DATABASE_NAME = "ccn.sqlite3"
BENCH_PLATE = (
    b"# Claude\n\nYou are Claude, a careful and honest assistant. You remember the user's earlier"
    b" conversations through the context you are given, and you say so when you do not know.\n"
)
_FUNCTION_TEXT = (
    "the of and to a in is it you that he was for on are with as i his they be at one have this from or had by"
    " but some what there we can out other were all your when up use word how said an each she which do their"
    " time if will way about many then them would like so these her long make thing see him two has look more"
    " day could go come did my no most who over know than call first people may down side been now find"
)
_FUNCTION_WORDS = _FUNCTION_TEXT.split()
_ONSETS = ["", "b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "z",
           "br", "ch", "cl", "dr", "fl", "gr", "pl", "pr", "sh", "sl", "st", "th", "tr"]
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ea", "ou", "io"]
_CODAS = ["", "", "n", "r", "s", "t", "l", "m", "nd", "st", "ng", "rk"]


def _vocabulary(size: int, rng: random.Random) -> list[str]:
    """Function words first (the Zipf head), then distinct pronounceable made-up words."""
    words = list(dict.fromkeys(_FUNCTION_WORDS))
    seen = set(words)
    while len(words) < size:
        syllables = rng.choice((1, 2, 2, 2, 3, 3, 4))
        w = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(syllables))
        if len(w) >= 2 and w not in seen:
            seen.add(w)
            words.append(w)
    return words


class _TextMaker:
    """Sentences from a Zipf(1.07) vocabulary mixed with a conversation's topic words."""

    def __init__(self, vocabulary: int = 40_000, seed: int = 7, vocabulary_seed: int = 7) -> None:
        self.rng = random.Random(seed)
        self.np = np.random.default_rng(seed)
        self.words = np.array(_vocabulary(vocabulary, random.Random(vocabulary_seed)), dtype=object)
        ranks = np.arange(1, vocabulary + 1, dtype=np.float64)
        weights = ranks**-1.07
        self.cdf = np.cumsum(weights / weights.sum())

    def topic(self, n: int = 40) -> np.ndarray:
        """Mid-frequency words a conversation keeps coming back to."""
        return self.np.integers(300, len(self.words), size=n)

    def texts(self, topics: list[np.ndarray], count: int) -> list[str]:
        lengths = np.clip(self.np.lognormal(mean=2.9, sigma=0.6, size=count).astype(int), 3, 200)
        total = int(lengths.sum())
        idx = np.searchsorted(self.cdf, self.np.random(total))
        idx = np.minimum(idx, len(self.words) - 1)
        topical = self.np.random(total) < 0.15
        out: list[str] = []
        pos = 0
        for i, n in enumerate(lengths):
            span = idx[pos : pos + n].copy()
            mask = topical[pos : pos + n]
            if mask.any():
                topic = topics[i]
                span[mask] = topic[self.np.integers(0, len(topic), size=int(mask.sum()))]
            pos += n
            words = self.words[span]
            text = " ".join(words)
            out.append(text[0].upper() + text[1:] + self.rng.choice((".", ".", "?", "!")))
        return out


def _iso(seconds: float) -> str:
    t = time.gmtime(seconds)
    return time.strftime("%Y-%m-%dT%H:%M:%S", t) + f".{int((seconds % 1) * 1e6):06d}Z"


def generate_corpus(
    data_dir: str | Path,
    messages: int,
    conversations: int = 1000,
    users: int = 100,
    *,
    batch: int = 5000,
    seed: int = 7,
) -> dict[str, Any]:
    """Write a synthetic corpus into ``data_dir/ccn.sqlite3`` through the state machine.

    Returns counts and the ingest rate (messages/s through encode → apply → commit).
    """
    path = Path(data_dir) / DATABASE_NAME
    store = Store(path, synchronous="off", readers=1)
    try:
        sm = StateMachine(store.writer)
        index = sm.applied_index
        maker = _TextMaker(seed=seed)
        plate = parse_plate(BENCH_PLATE, "bench-plate.md")
        start_s = 1_700_000_000.0
        setup: list[c.Command] = [
            c.RecordPlate(request_id="gen-plate", version="bench", sha256=plate.sha256, name=plate.name,
                          content=plate.body, recorded_at=_iso(start_s))
        ]
        for u in range(users):
            setup.append(c.CreateUser(request_id=f"gen-user-{u}", user_id=f"user{u:04d}", name=f"user{u:04d}",
                                      role="user", created_at=_iso(start_s)))
        for k in range(conversations):
            setup.append(c.StartConversation(
                request_id=f"gen-conv-{k}", session_id=f"conv{k:05d}", user_id=f"user{k % users:04d}",
                title=f"conversation {k}", created_at=_iso(start_s + k), plate_version="bench",
                plate_sha256=plate.sha256,
            ))
        entries = []
        for cmd in setup:
            index += 1
            entries.append((index, c.encode(cmd)))
        sm.apply_batch(entries)
        topics = [maker.topic() for _ in range(conversations)]
        started = time.perf_counter()
        done = 0
        while done < messages:
            n = min(batch, messages - done)
            convs = [(done + i) % conversations for i in range(n)]
            texts = maker.texts([topics[k] for k in convs], n)
            entries = []
            for i, (k, text) in enumerate(zip(convs, texts, strict=True)):
                m = done + i
                turn = m // conversations
                index += 1
                cmd = c.AppendMessage(
                    request_id=f"gen-msg-{m}", message_id=f"msg{m:08d}", session_id=f"conv{k:05d}",
                    user_id=f"user{k % users:04d}", role="user" if turn % 2 == 0 else "assistant", content=text,
                    created_at=_iso(start_s + 86_400 + m * 2.0), tokens=math.ceil(len(text) / 4),
                )
                entries.append((index, c.encode(cmd)))
            results = sm.apply_batch(entries)
            if not all(r.ok for r in results):
                bad = next(r for r in results if not r.ok)
                raise RuntimeError(f"corpus generation failed: {bad.error_code}: {bad.error_message}")
            done += n
        elapsed = time.perf_counter() - started
        sm.catch_up_search_index()
        store.writer.execute("INSERT INTO messages_fts(messages_fts) VALUES ('optimize')")
        store.writer.execute("ANALYZE")
    finally:
        store.close()
    return {
        "database": str(path),
        "messages": messages,
        "conversations": conversations,
        "users": users,
        "ingest_seconds": round(elapsed, 1),
        "ingest_per_s": round(messages / elapsed, 1) if elapsed else None,
    }


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))]


def run_context_bench(
    data_dir: str | Path,
    samples: int = 300,
    *,
    settings: ContextSettings | None = None,
    seed: int = 11,
) -> dict[str, Any]:
    """Time ``ContextAssembler.assemble`` and ``search`` on a generated corpus (warm cache).

    Each sample is a random conversation of its owner with a fresh message drawn from the
    same text distribution; the new message is not stored, as in a dry run.
    """
    path = Path(data_dir) / DATABASE_NAME
    store = Store(path, synchronous="normal", readers=1)
    try:
        settings = settings or ContextSettings()
        assembler = ContextAssembler(parse_plate(BENCH_PLATE, "bench-plate.md"), settings)
        convs = store.read_sync(lambda conn: conn.execute("SELECT session_id, user_id FROM conversations").fetchall())
        count = store.read_sync(lambda conn: conn.execute("SELECT count(*) FROM messages").fetchall()[0][0])
        rng = random.Random(seed)
        maker = _TextMaker(seed=seed)
        texts = maker.texts([maker.topic() for _ in range(samples + 20)], samples + 20)
        picks = [rng.choice(convs) for _ in range(samples + 20)]
        assemble_ms: list[float] = []
        search_ms: list[float] = []
        tokens: list[int] = []
        for i, ((sid, uid), text) in enumerate(zip(picks, texts, strict=True)):
            t0 = time.perf_counter()
            ctx = store.read_sync(
                lambda conn, s=sid, u=uid, x=text: assembler.assemble(
                    conn, user_id=u, session_id=s, user_text=x, state=None
                )
            )
            t1 = time.perf_counter()
            store.read_sync(lambda conn, u=uid, x=text: search(conn, u, " ".join(x.split()[:4]), 20))
            t2 = time.perf_counter()
            if i >= 20:  # the first calls warm the page cache
                assemble_ms.append((t1 - t0) * 1000)
                search_ms.append((t2 - t1) * 1000)
                tokens.append(ctx.tokens)
    finally:
        store.close()
    return {
        "messages": count,
        "conversations": len(convs),
        "samples": samples,
        "budget_tokens": settings.budget_tokens,
        "context_ms": {"p50": round(_pct(assemble_ms, 50), 2), "p95": round(_pct(assemble_ms, 95), 2),
                       "max": round(max(assemble_ms, default=0.0), 2)},
        "search_ms": {"p50": round(_pct(search_ms, 50), 2), "p95": round(_pct(search_ms, 95), 2)},
        "context_tokens_mean": round(sum(tokens) / max(len(tokens), 1), 1),
    }


if __name__ == "__main__":  # pragma: no cover - development entry point
    import json
    import sys

    target = sys.argv[1]
    if len(sys.argv) > 2:
        print(json.dumps(generate_corpus(target, int(sys.argv[2]))), flush=True)
    print(json.dumps(run_context_bench(target)))
