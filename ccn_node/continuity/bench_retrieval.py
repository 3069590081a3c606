"""`ccn-node bench retrieval`: evidence recall of the real context assembler on LoCoMo.

Why through the real parts: the figure must describe what a turn actually sends, so the
LoCoMo turns go in through the command path (Store + StateMachine + LocalLog) and every
question is answered by ``ContextAssembler.assemble`` on a reader connection, exactly as a
turn would be.

Mapping: each LoCoMo conversation is one user; each of its sessions is one conversation of
that user, created at ``session_N_date_time``; speaker_a speaks as ``user`` and speaker_b as
``assistant``, and their names are kept in the conversation's metadata (``speakers``), so the
content is the turn's text and the assembler prints "Speaker: text". Each question gets a
fresh, empty conversation of that user, so "recent" is empty and every evidence turn must
come from retrieval.

Metric (the issue's definition, see DESIGN.md "Measured"): ``budget_recall`` is, for each
question, the share of its evidence turns that are in the context, averaged over the
questions (overall = ``cat1_4`` and per category); the budget is counted as
ceil(len("Speaker: text")/4) of each included turn and nothing else, so the assembler runs
with ``count_layout=False`` (section header, date lines and newlines free). Beside it:
``evidence_recall`` pools all evidence turns (micro average, same run), and
``layout_counted`` repeats both with the whole relevant section (header, dates, newlines)
counted against the budget, as a real turn counts it. ``per_conversation`` gives
``budget_recall`` per LoCoMo conversation (1-based), for tune/check splits.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import statistics
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec

from ccn_node.config import ContextSettings
from ccn_node.continuity.context import ContextAssembler, tokens_of
from ccn_node.continuity.plate import parse_plate
from ccn_node.continuity.retrieval import RankParams
from ccn_node.replication import commands as c
from ccn_node.replication.local_log import LocalLog
from ccn_node.replication.state_machine import StateMachine
from ccn_node.store.database import Store

__all__ = ["normalise_evidence", "run_retrieval_bench"]

BENCH_PLATE = b"# Bench\n\nYou answer questions about earlier conversations.\n"
_EVIDENCE_RE = re.compile(r"D\s*:?\s*(\d+)\s*:\s*(\d+)")
_DATE_FORMAT = "%I:%M %p on %d %B, %Y"
CATEGORIES = (1, 2, 3, 4)
METHODS = ("fused", "bm25", "recency")


def normalise_evidence(raw: Sequence[str], existing: set[str]) -> list[str]:
    """'D8:6; D9:17' → D8:6, D9:17; 'D30:05' → D30:5; 'D:11:26' → D11:26; unknown ids dropped."""
    out: list[str] = []
    for item in raw:
        for part in re.split(r"[;,\s]+(?=D)", str(item)):
            m = _EVIDENCE_RE.search(part)
            if not m:
                continue
            dia = f"D{int(m.group(1))}:{int(m.group(2))}"
            if dia in existing and dia not in out:
                out.append(dia)
    return out


def _session_time(text: str) -> datetime:
    return datetime.strptime(" ".join(text.split()), _DATE_FORMAT).replace(tzinfo=UTC)


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class _Question(msgspec.Struct):
    user_id: str
    session_id: str
    question: str
    category: int
    evidence: list[str]  # message ids


class _Corpus(msgspec.Struct):
    questions: list[_Question]
    lines: dict[str, str]  # message id → "Speaker: text", as the budget counts it
    dropped_evidence: int
    turns: int


async def _load(store: Store, items: list[dict[str, Any]]) -> _Corpus:
    """Every LoCoMo turn as an AppendMessage through LocalLog; sessions in parallel batches."""
    sm = StateMachine(store.writer)
    log = LocalLog(sm)
    await log.start()
    plate = parse_plate(BENCH_PLATE, "bench-plate.md")
    counter = 0

    async def propose_all(cmds: list[c.Command]) -> None:
        results = await asyncio.gather(*(log.propose(c.encode(cmd), cmd.request_id) for cmd in cmds))
        bad = [r for r in results if not r.ok]
        if bad:
            raise RuntimeError(f"bench corpus load failed: {bad[0].error_code}: {bad[0].error_message}")

    def rid() -> str:
        nonlocal counter
        counter += 1
        return f"bench-{counter}"

    questions: list[_Question] = []
    lines: dict[str, str] = {}
    dropped = 0
    try:
        await propose_all([c.RecordPlate(request_id=rid(), version="bench", sha256=plate.sha256, name=plate.name,
                                         content=plate.body, recorded_at=_iso(datetime(2020, 1, 1, tzinfo=UTC)))])
        for n, item in enumerate(items):
            conv = item["conversation"]
            user_id = f"u{n}"
            speakers = {"user": conv["speaker_a"], "assistant": conv["speaker_b"]}
            role_of = {conv["speaker_a"]: "user", conv["speaker_b"]: "assistant"}
            await propose_all([c.CreateUser(request_id=rid(), user_id=user_id, name=f"locomo-{n}", role="user",
                                            created_at=_iso(datetime(2020, 1, 1, tzinfo=UTC)))])
            starts: list[c.Command] = []
            appends: list[c.Command] = []
            dia_to_mid: dict[str, str] = {}
            last = datetime(2020, 1, 1, tzinfo=UTC)
            keys = sorted((k for k in conv if re.fullmatch(r"session_\d+", k)), key=lambda k: int(k.split("_")[1]))
            for key in keys:
                turns = conv[key]
                if not isinstance(turns, list) or not turns:
                    continue
                when = _session_time(conv[f"{key}_date_time"])
                last = max(last, when)
                sid = f"s{n}_{key}"
                starts.append(c.StartConversation(
                    request_id=rid(), session_id=sid, user_id=user_id, title=key, created_at=_iso(when),
                    plate_version="bench", plate_sha256=plate.sha256, metadata={"speakers": speakers},
                ))
                for i, turn in enumerate(turns):
                    mid = f"m{n}_{turn['dia_id'].replace(':', '_')}"
                    text = turn["text"]
                    dia_to_mid[turn["dia_id"]] = mid
                    lines[mid] = f"{turn['speaker']}: {' '.join(text.split())}"  # as printed
                    appends.append(c.AppendMessage(
                        request_id=rid(), message_id=mid, session_id=sid, user_id=user_id,
                        role=role_of.get(turn["speaker"], "user"), content=text,
                        created_at=_iso(when.replace(second=0) + _seconds(i)), tokens=tokens_of(text),
                    ))
            for qn, qa in enumerate(item.get("qa", [])):
                if qa.get("category") not in CATEGORIES:
                    continue
                raw = qa.get("evidence") or []
                evidence = normalise_evidence(raw, set(dia_to_mid))
                dropped += max(0, _raw_count(raw) - len(evidence))
                if not evidence:
                    continue
                qsid = f"q{n}_{qn}"
                starts.append(c.StartConversation(
                    request_id=rid(), session_id=qsid, user_id=user_id, title="question",
                    created_at=_iso(last + _seconds(86_400)), plate_version="bench", plate_sha256=plate.sha256,
                ))
                questions.append(_Question(user_id, qsid, str(qa["question"]), int(qa["category"]),
                                           [dia_to_mid[e] for e in evidence]))
            await propose_all(starts)
            for i in range(0, len(appends), 512):
                await propose_all(appends[i : i + 512])
    finally:
        await log.stop()
        sm.catch_up_search_index()  # the questions search every turn loaded
    return _Corpus(questions=questions, lines=lines, dropped_evidence=dropped, turns=len(lines))


def _seconds(n: int) -> timedelta:
    return timedelta(seconds=n)


def _raw_count(raw: Sequence[str]) -> int:
    return sum(max(1, len(re.findall(r"D\s*:?\s*\d+\s*:\s*\d+", str(x)))) for x in raw)


def _assemble_all(
    store: Store, corpus: _Corpus, budget: int, rank: RankParams, count_layout: bool
) -> tuple[list[tuple[_Question, int]], list[float], int]:
    """Run the real assembler for every question at one budget: (question, evidence hits) each."""
    plate = parse_plate(BENCH_PLATE, "bench-plate.md")
    records: list[tuple[_Question, int]] = []
    timings: list[float] = []
    max_used = 0
    for q in corpus.questions:
        settings = ContextSettings(
            budget_tokens=tokens_of(plate.block_text) + tokens_of(q.question) + budget,
            recent_turns=12,
            relevant_limit=100_000,
        )
        assembler = ContextAssembler(plate, settings, rank, count_layout=count_layout)
        start = time.perf_counter()
        ctx = store.read_sync(
            lambda conn, q=q, a=assembler: a.assemble(
                conn, user_id=q.user_id, session_id=q.session_id, user_text=q.question, state=None
            )
        )
        timings.append((time.perf_counter() - start) * 1000)
        relevant = ctx.manifest["sections"]["relevant"]
        included = set(relevant["message_ids"])
        used = sum(math.ceil(len(corpus.lines[m]) / 4) for m in included)
        if count_layout:
            used = relevant["tokens"]  # the whole section as sent: header, date lines, newlines
        max_used = max(max_used, used)
        if used > budget:
            raise AssertionError(f"assembler exceeded the budget: {used} > {budget}")
        records.append((q, sum(1 for e in q.evidence if e in included)))
    timings.sort()
    return records, timings, max_used


def _recall(records: list[tuple[_Question, int]]) -> dict[str, Any]:
    """budget_recall: mean over questions of its share of evidence in context; evidence_recall: pooled."""
    if not records:
        return {"budget_recall": None, "evidence_recall": None, "questions": 0, "evidence": 0}
    evidence = sum(len(q.evidence) for q, _ in records)
    return {
        "budget_recall": round(statistics.fmean(h / len(q.evidence) for q, h in records), 4),
        "evidence_recall": round(sum(h for _, h in records) / evidence, 4),
        "questions": len(records),
        "evidence": evidence,
    }


def _evaluate(store: Store, corpus: _Corpus, budget: int, rank: RankParams) -> dict[str, Any]:
    """Recall at one budget, overall, per category and per conversation, under both budget counts."""
    records, timings, max_used = _assemble_all(store, corpus, budget, rank, count_layout=False)
    strict, _, strict_used = _assemble_all(store, corpus, budget, rank, count_layout=True)
    users = sorted({q.user_id for q, _ in records}, key=lambda u: int(u[1:]))
    out: dict[str, Any] = {
        "budget": budget,
        "cat1_4": _recall(records),
        "per_category": {str(cat): _recall([r for r in records if r[0].category == cat]) for cat in CATEGORIES},
        "per_conversation": {
            str(int(u[1:]) + 1): _recall([r for r in records if r[0].user_id == u])["budget_recall"] for u in users
        },
        "max_turn_tokens_used": max_used,
        # The same, with the relevant section's header, date lines and newlines counted against
        # the budget as a real turn counts them (what is actually sent fits the budget).
        "layout_counted": {"cat1_4": _recall(strict), "max_section_tokens": strict_used},
        "assemble_ms": {"p50": round(_pct(timings, 50), 2), "p95": round(_pct(timings, 95), 2)},
    }
    return out


def _pct(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return 0.0
    k = min(len(sorted_values) - 1, max(0, math.ceil(p / 100 * len(sorted_values)) - 1))
    return sorted_values[k]


def run_retrieval_bench(
    locomo_path: str | Path,
    budget: int = 2000,
    extra_budgets: Sequence[int] = (1000,),
    *,
    rank: RankParams | None = None,
    baselines: bool = True,
    data_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Load the LoCoMo file into a temporary node database and measure evidence recall.

    Returns the fused ranking's figures at ``budget`` at the top level (``cat1_4``), the
    same at each extra budget (``at_<n>``), and the baselines under ``baselines``.
    """
    items = json.loads(Path(locomo_path).read_text(encoding="utf-8"))
    rank = rank or RankParams()
    with tempfile.TemporaryDirectory(prefix="ccn-bench-retrieval-", dir=data_dir) as tmp:
        store = Store(Path(tmp) / "bench.sqlite3", synchronous="off", readers=1)
        try:
            started = time.perf_counter()
            corpus = asyncio.run(_load(store, items))
            load_s = time.perf_counter() - started
            result: dict[str, Any] = {
                "file": str(locomo_path),
                "conversations": len(items),
                "turns": corpus.turns,
                "questions": len(corpus.questions),
                "dropped_evidence_ids": corpus.dropped_evidence,
                "load_seconds": round(load_s, 2),
                "ingest_per_s": round(corpus.turns / load_s, 1) if load_s else None,
                "method": "fused",
                "rank": msgspec.to_builtins(rank),
            }
            result.update(_evaluate(store, corpus, budget, rank))
            for extra in extra_budgets:
                result[f"at_{extra}"] = _evaluate(store, corpus, extra, rank)
            if baselines:
                result["baselines"] = {}
                for method in METHODS[1:]:
                    base = msgspec.structs.replace(rank, method=method)
                    entry = {f"at_{b}": _evaluate(store, corpus, b, base) for b in (budget, *extra_budgets)}
                    result["baselines"][method] = entry
        finally:
            store.close()
    return result

