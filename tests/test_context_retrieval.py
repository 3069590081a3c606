"""Retrieval and full-text search: safe query construction, user isolation, recall smoke test."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from ccn_node.config import ContextSettings
from ccn_node.continuity.bench_context import _TextMaker
from ccn_node.continuity.bench_retrieval import normalise_evidence, run_retrieval_bench
from ccn_node.continuity.context import ContextAssembler, tokens_of
from ccn_node.continuity.plate import parse_plate
from ccn_node.continuity.retrieval import RankParams, fts_query, query_terms, relevant_turns, search
from ccn_node.replication import commands as c
from ccn_node.replication.state_machine import StateMachine
from ccn_node.store.database import Store

HOSTILE = [
    '"',
    '""',
    '"unbalanced',
    "*",
    "a*",
    "NEAR(",
    "NEAR(a b, 3)",
    "OR",
    "AND",
    "NOT",
    "telescope OR",
    "AND telescope",
    "NOT telescope",
    "(",
    ")",
    "((telescope",
    "telescope)",
    "content:telescope",
    "col:value",
    "{content}: telescope",
    "^telescope",
    "telescope\x00orion",
    "\x00",
    "x" * 10_000,
    "telescope " * 2_000,
    "\ud800 lone surrogate",
    "- + : ; ' \\ ` ~",
    "",
    "   ",
]


@pytest.fixture
def store(tmp_path: Path):
    st = Store(tmp_path / "ccn.sqlite3", synchronous="off", readers=1)
    sm = StateMachine(st.writer)
    plate = parse_plate(b"# P\n\nplate\n", "p.md")
    cmds: list[c.Command] = []
    for user in ("alice", "bob"):
        cmds.append(c.CreateUser(request_id=f"u-{user}", user_id=user, name=user, role="user",
                                 created_at="2025-01-01T00:00:00.000000Z"))
        cmds.append(c.StartConversation(request_id=f"s-{user}", session_id=f"s-{user}", user_id=user, title="",
                                        created_at="2025-01-01T00:00:00.000000Z", plate_version=plate.version,
                                        plate_sha256=plate.sha256))
    texts = {
        "alice": [
            "My telescope is a Dobsonian called Orion.",
            'She wrote "NEAR(" and col:value and a*b in her notes, (unbalanced too.',
            "To be or not to be, and that is the question.",
            "The weather was fine and we planted tomatoes.",
        ],
        "bob": ["Bob's telescope is a refractor named Vega.", "Bob also said NEAR( and col:value."],
    }
    n = 0
    for user, lines in texts.items():
        for i, text in enumerate(lines):
            n += 1
            cmds.append(c.AppendMessage(request_id=f"m-{n}", message_id=f"{user}-{i}", session_id=f"s-{user}",
                                        user_id=user, role="user", content=text,
                                        created_at=f"2025-01-02T00:00:{n:02d}.000000Z", tokens=tokens_of(text)))
    sm.apply_batch([(i + 1, c.encode(cmd)) for i, cmd in enumerate(cmds)])
    sm.catch_up_search_index()
    yield st
    st.close()


@pytest.mark.parametrize("q", HOSTILE)
def test_hostile_search_strings_never_raise_and_stay_private(store: Store, q: str) -> None:
    hits = store.read_sync(lambda conn: search(conn, "alice", q, 20, 0))
    assert all(h.message_id.startswith("alice-") for h in hits)
    turns = store.read_sync(lambda conn: relevant_turns(conn, "alice", q))
    assert all(t.message_id.startswith("alice-") for t in turns)


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        ("NEAR(", "alice-1"),
        ("col:value", "alice-1"),
        ("a*b", "alice-1"),
        ('"unbalanced', "alice-1"),
        ("(unbalanced", "alice-1"),
        ("telescope OR", "alice-0"),
        ("NOT telescope", "alice-0"),
        ("telescope\x00orion", "alice-0"),
        ("OR", "alice-2"),
        ("to be or not to be", "alice-2"),
        ("telescopes", "alice-0"),  # porter stemming
    ],
)
def test_syntax_is_matched_as_text(store: Store, q: str, expected: str) -> None:
    hits = store.read_sync(lambda conn: search(conn, "alice", q, 20, 0))
    assert expected in [h.message_id for h in hits]


def test_search_result_shape_snippet_and_paging(store: Store) -> None:
    hits = store.read_sync(lambda conn: search(conn, "alice", "telescope Orion", 20, 0))
    assert hits[0].message_id == "alice-0"
    assert hits[0].session_id == "s-alice" and hits[0].seq == 1 and hits[0].role == "user"
    assert hits[0].created_at.startswith("2025-01-02") and "[telescope]" in hits[0].snippet
    assert hits[0].score > 0
    assert store.read_sync(lambda conn: search(conn, "alice", "telescope", 20, 1)) == []
    assert store.read_sync(lambda conn: search(conn, "bob", "telescope", 20, 0))[0].message_id == "bob-0"
    assert store.read_sync(lambda conn: search(conn, "nobody", "telescope", 20, 0)) == []


def test_query_construction_quotes_everything(store: Store) -> None:
    terms = store.read_sync(lambda conn: query_terms(conn, 'telescope "orion" NEAR( OR', max_terms=10))
    expression = fts_query(terms)
    assert expression.count('"') % 2 == 0
    assert all(part.startswith('"') and part.endswith('"') for part in expression.split(" OR "))


def _recall_corpus(path: Path) -> tuple[Store, list[tuple[str, str]]]:
    """Filler chat from the synthetic generator with planted facts; returns (question, message id)."""
    st = Store(path, synchronous="off", readers=1)
    sm = StateMachine(st.writer)
    plate = parse_plate(b"# P\n\nplate\n", "p.md")
    maker = _TextMaker(seed=3)
    rng = random.Random(5)
    facts = [
        ("My sister adopted a greyhound named Pixel last spring.", "What is the name of my sister's greyhound?"),
        ("I finally finished the quilt for my grandmother's birthday.", "What did I make for grandma's birthday?"),
        ("We booked the flight to Lisbon for the conference in October.", "Where is the October conference?"),
        ("My landlord raised the rent by twelve percent this year.", "How much did the rent go up?"),
        ("The vet said the cat needs a kidney diet from now on.", "What did the vet say about the cat?"),
        ("I switched my thesis topic to coral reef bleaching.", "What is my thesis about now?"),
    ]
    cmds: list[c.Command] = [
        c.CreateUser(request_id="u", user_id="u", name="u", role="user", created_at="2025-01-01T00:00:00.000000Z"),
        c.CreateUser(request_id="o", user_id="o", name="o", role="user", created_at="2025-01-01T00:00:00.000000Z"),
    ]
    for k in range(12):
        cmds.append(c.StartConversation(request_id=f"s{k}", session_id=f"s{k}", user_id="u" if k < 10 else "o",
                                        title="", created_at=f"2025-02-{k + 1:02d}T00:00:00.000000Z",
                                        plate_version=plate.version, plate_sha256=plate.sha256))
    cmds.append(c.StartConversation(request_id="now", session_id="now", user_id="u", title="",
                                    created_at="2025-03-01T00:00:00.000000Z", plate_version=plate.version,
                                    plate_sha256=plate.sha256))
    texts = maker.texts([maker.topic() for _ in range(600)], 600)
    planted = {rng.randrange(600): i for i in range(len(facts))}
    while len(planted) < len(facts):
        planted[rng.randrange(600)] = len(planted)
    evidence = []
    for m, text in enumerate(texts):
        k = m % 12
        if m in planted and k < 10:
            text = facts[planted[m]][0]
            evidence.append((facts[planted[m]][1], f"m{m}"))
        cmds.append(c.AppendMessage(request_id=f"m{m}", message_id=f"m{m}", session_id=f"s{k}",
                                    user_id="u" if k < 10 else "o", role="user" if (m // 12) % 2 == 0 else "assistant",
                                    content=text, created_at=f"2025-02-{k + 1:02d}T01:{m // 60 % 60:02d}:{m % 60:02d}Z",
                                    tokens=tokens_of(text)))
    sm.apply_batch([(i + 1, c.encode(cmd)) for i, cmd in enumerate(cmds)])
    sm.catch_up_search_index()
    return st, evidence


def test_evidence_recall_smoke(tmp_path: Path) -> None:
    st, evidence = _recall_corpus(tmp_path / "ccn.sqlite3")
    try:
        assert len(evidence) >= 4
        plate = parse_plate(b"# P\n\nplate\n", "p.md")
        assembler = ContextAssembler(plate, ContextSettings(budget_tokens=1000, recent_turns=12, relevant_limit=40))
        found = 0
        for question, mid in evidence:
            ctx = st.read_sync(lambda conn, q=question: assembler.assemble(
                conn, user_id="u", session_id="now", user_text=q, state=None))
            assert ctx.tokens <= 1000
            found += mid in ctx.manifest["sections"]["relevant"]["message_ids"]
        assert found / len(evidence) >= 0.8
        for method in ("bm25", "recency"):
            turns = st.read_sync(lambda conn, m=method: relevant_turns(
                conn, "u", evidence[0][0], params=RankParams(method=m)))
            assert turns and all(t.message_id for t in turns)
    finally:
        st.close()


def test_normalise_evidence() -> None:
    existing = {"D8:6", "D9:17", "D30:5", "D11:26", "D1:1"}
    assert normalise_evidence(["D8:6; D9:17", "D30:05", "D:11:26", "D", "D99:1", "D1:1", "D1:1"], existing) == [
        "D8:6", "D9:17", "D30:5", "D11:26", "D1:1"]


def test_retrieval_bench_on_tiny_locomo_file(tmp_path: Path) -> None:
    turns = [
        {"speaker": "Ann", "dia_id": "D1:1", "text": "I started learning the cello in March."},
        {"speaker": "Ben", "dia_id": "D1:2", "text": "That is great, how are the lessons going?"},
        {"speaker": "Ann", "dia_id": "D1:3", "text": "Slowly, but my teacher is patient."},
    ]
    later = [
        {"speaker": "Ben", "dia_id": "D2:1", "text": "I ran my first marathon in Boston yesterday."},
        {"speaker": "Ann", "dia_id": "D2:2", "text": "Wow, congratulations on the marathon!"},
    ]
    data = [{
        "sample_id": "tiny",
        "conversation": {
            "speaker_a": "Ann", "speaker_b": "Ben",
            "session_1_date_time": "1:56 pm on 8 May, 2023", "session_1": turns,
            "session_2_date_time": "10:00 am on 9 June, 2023", "session_2": later,
        },
        "qa": [
            {"question": "What instrument is Ann learning?", "answer": "cello", "evidence": ["D1:01"], "category": 4},
            {"question": "Where did Ben run a marathon?", "answer": "Boston", "evidence": ["D2:1; D2:2"],
             "category": 1},
            {"question": "Adversarial", "answer": "", "evidence": ["D1:1"], "category": 5},
            {"question": "Broken evidence", "answer": "", "evidence": ["D"], "category": 2},
        ],
    }]
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(data))
    result = run_retrieval_bench(path, budget=200, extra_budgets=(100,), data_dir=tmp_path)
    assert result["questions"] == 2 and result["turns"] == 5
    assert result["cat1_4"]["budget_recall"] == 1.0
    assert result["at_100"]["cat1_4"]["budget_recall"] == 1.0
    assert set(result["baselines"]) == {"bm25", "recency"}
    assert result["dropped_evidence_ids"] == 1
    assert list(tmp_path.glob("ccn-bench-retrieval-*")) == []
