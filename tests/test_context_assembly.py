"""Context assembly on a real Store file, with the corpus written through the state machine."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from ccn_node.config import ContextSettings
from ccn_node.continuity.context import ContextAssembler, tokens_of
from ccn_node.continuity.plate import parse_plate
from ccn_node.replication import commands as c
from ccn_node.replication.state_machine import StateMachine
from ccn_node.store.database import Store

PLATE = b"# Claude\n\nYou are Claude. Be honest and precise.\n"
_ids = itertools.count(1)


class Corpus:
    """A real database plus a tiny proposer that applies commands in order."""

    def __init__(self, path: Path) -> None:
        self.store = Store(path, synchronous="off", readers=1)
        self.sm = StateMachine(self.store.writer)
        self.index = self.sm.applied_index
        self.clock = 0
        self.plate = parse_plate(PLATE, "plate.md")

    def apply(self, *cmds: c.Command) -> None:
        entries = []
        for cmd in cmds:
            self.index += 1
            entries.append((self.index, c.encode(cmd)))
        results = self.sm.apply_batch(entries)
        self.sm.catch_up_search_index()
        assert all(r.ok for r in results), [r.error_message for r in results if not r.ok]

    def now(self) -> str:
        self.clock += 1
        return f"2025-01-{1 + self.clock // 86400:02d}T00:{(self.clock // 60) % 60:02d}:{self.clock % 60:02d}.000000Z"

    def user(self, user_id: str) -> None:
        self.apply(c.CreateUser(request_id=f"r{next(_ids)}", user_id=user_id, name=user_id, role="user",
                                created_at=self.now()))

    def conversation(self, user_id: str, session_id: str, metadata: dict | None = None) -> None:
        self.apply(c.StartConversation(request_id=f"r{next(_ids)}", session_id=session_id, user_id=user_id,
                                       title="t", created_at=self.now(), plate_version=self.plate.version,
                                       plate_sha256=self.plate.sha256, metadata=metadata or {}))

    def say(self, user_id: str, session_id: str, role: str, content: str) -> str:
        mid = f"m{next(_ids)}"
        self.apply(c.AppendMessage(request_id=f"r{next(_ids)}", message_id=mid, session_id=session_id,
                                   user_id=user_id, role=role, content=content, created_at=self.now(),
                                   tokens=tokens_of(content)))
        return mid

    def assemble(self, assembler: ContextAssembler, user_id: str, session_id: str, text: str, **kw):
        return self.store.read_sync(
            lambda conn: assembler.assemble(conn, user_id=user_id, session_id=session_id, user_text=text,
                                            state=kw.get("state"), exclude_message_ids=kw.get("exclude"))
        )


@pytest.fixture
def corpus(tmp_path: Path):
    db = Corpus(tmp_path / "ccn.sqlite3")
    yield db
    db.store.close()


def _filled(corpus: Corpus) -> None:
    corpus.user("alice")
    corpus.user("bob")
    corpus.conversation("alice", "a-old")
    corpus.conversation("alice", "a-now")
    corpus.conversation("bob", "b-old")
    for i in range(30):
        corpus.say("alice", "a-old", "user", f"Filler message number {i} about gardening tomatoes and weather.")
        corpus.say("alice", "a-old", "assistant", f"Reply {i}: tomatoes like sun; water them in the morning.")
    corpus.say("alice", "a-old", "user", "My telescope is a Dobsonian reflector called Orion.")
    corpus.say("bob", "b-old", "user", "Bob's secret: my telescope is a refractor named Vega.")
    for i in range(6):
        corpus.say("alice", "a-now", "user" if i % 2 == 0 else "assistant", f"Current chat line {i} about music.")


def test_budget_respected_and_plate_first(corpus: Corpus) -> None:
    _filled(corpus)
    settings = ContextSettings(budget_tokens=400, recent_turns=12, relevant_limit=40)
    assembler = ContextAssembler(corpus.plate, settings)
    ctx = corpus.assemble(assembler, "alice", "a-now", "What is my telescope called?",
                          state={"character": {"warmth": 0.5, "rigour": 0.25}})
    assert ctx.tokens <= settings.budget_tokens
    assert ctx.manifest["total"] == ctx.tokens
    assert not ctx.manifest["over_budget"]
    assert ctx.system[0].kind == "plate" and ctx.system[0].cache is True
    assert ctx.system[0].text == corpus.plate.block_text
    counted = sum(tokens_of(b.text) for b in ctx.system) + sum(tokens_of(m.content) for m in ctx.messages)
    assert counted == ctx.tokens
    sections = ctx.manifest["sections"]
    assert sum(s["tokens"] for s in sections.values()) == ctx.tokens
    assert ctx.messages[-1].role == "user" and ctx.messages[-1].content.endswith("What is my telescope called?")


def test_plate_block_byte_identical_across_turns(corpus: Corpus) -> None:
    _filled(corpus)
    assembler = ContextAssembler(corpus.plate, ContextSettings(budget_tokens=2000))
    first = corpus.assemble(assembler, "alice", "a-now", "Tell me about tomatoes", state={"x": 0.1})
    corpus.say("alice", "a-now", "user", "Tell me about tomatoes")
    corpus.say("alice", "a-now", "assistant", "They like sun.")
    second = corpus.assemble(assembler, "alice", "a-now", "And my telescope?", state={"x": 0.9})
    assert first.system[0] == second.system[0]
    assert first.system[0].text.encode() == second.system[0].text.encode() == corpus.plate.block_text.encode()


def test_relevant_turn_found_and_user_isolated(corpus: Corpus) -> None:
    _filled(corpus)
    assembler = ContextAssembler(corpus.plate, ContextSettings(budget_tokens=1500))
    ctx = corpus.assemble(assembler, "alice", "a-now", "What is my telescope called?")
    relevant = next(b for b in ctx.system if b.kind == "relevant")
    assert "Dobsonian reflector called Orion" in relevant.text
    everything = "\n".join([b.text for b in ctx.system] + [m.content for m in ctx.messages])
    assert "Vega" not in everything and "Bob" not in everything
    owners = corpus.store.read_sync(lambda conn: {
        r[0] for r in conn.execute(
            "SELECT DISTINCT user_id FROM messages WHERE message_id IN (SELECT value FROM json_each(?))",
            (str(ctx.manifest["sections"]["relevant"]["message_ids"]).replace("'", '"'),),
        )
    })
    assert owners == {"alice"}


def test_manifest_ids_and_recent_window_excluded_from_relevant(corpus: Corpus) -> None:
    _filled(corpus)
    stored = corpus.say("alice", "a-now", "user", "music question just stored")
    assembler = ContextAssembler(corpus.plate, ContextSettings(budget_tokens=3000, recent_turns=4))
    ctx = corpus.assemble(assembler, "alice", "a-now", "music question just stored", exclude={stored})
    sections = ctx.manifest["sections"]
    recent_ids = sections["recent"]["message_ids"] + sections["recent"]["dropped_message_ids"]
    last_four = corpus.store.read_sync(lambda conn: [r[0] for r in conn.execute(
        "SELECT message_id FROM messages WHERE session_id = 'a-now' AND message_id != ? ORDER BY seq DESC LIMIT 4",
        (stored,))])
    assert sorted(recent_ids) == sorted(last_four)
    assert stored not in recent_ids
    assert stored not in sections["relevant"]["message_ids"]
    assert not set(sections["relevant"]["message_ids"]) & set(recent_ids)


def test_roles_alternate_first_user_last_new_message(corpus: Corpus) -> None:
    corpus.user("carol")
    corpus.conversation("carol", "c1")
    ids = [
        corpus.say("carol", "c1", "assistant", "Welcome back."),  # cannot come first
        corpus.say("carol", "c1", "user", "one"),
        corpus.say("carol", "c1", "user", "two"),
        corpus.say("carol", "c1", "assistant", "three"),
        corpus.say("carol", "c1", "assistant", "four"),
        corpus.say("carol", "c1", "user", "five, unanswered"),
    ]
    assembler = ContextAssembler(corpus.plate, ContextSettings(budget_tokens=4000, recent_turns=12))
    ctx = corpus.assemble(assembler, "carol", "c1", "six")
    roles = [m.role for m in ctx.messages]
    assert roles[0] == "user"
    assert all(a != b for a, b in itertools.pairwise(roles))
    assert [m.content for m in ctx.messages] == ["one\n\ntwo", "three\n\nfour", "five, unanswered\n\nsix"]
    recent = ctx.manifest["sections"]["recent"]
    assert recent["dropped_message_ids"] == [ids[0]]
    assert recent["message_ids"] == ids[1:]


def test_empty_conversation_gives_single_user_message(corpus: Corpus) -> None:
    corpus.user("dan")
    corpus.conversation("dan", "d1")
    ctx = corpus.assemble(ContextAssembler(corpus.plate, ContextSettings()), "dan", "d1", "hello there")
    assert [(m.role, m.content) for m in ctx.messages] == [("user", "hello there")]
    assert ctx.manifest["sections"]["relevant"]["message_ids"] == []


def test_plate_and_message_alone_over_budget_is_reported_not_fatal(corpus: Corpus) -> None:
    _filled(corpus)
    big = parse_plate(b"# Big\n\n" + b"word " * 2000 + b"\n", "big.md")
    assembler = ContextAssembler(big, ContextSettings(budget_tokens=100))
    ctx = corpus.assemble(assembler, "alice", "a-now", "telescope?", state={"a": 1.0})
    assert ctx.manifest["over_budget"] is True
    assert ctx.system[0].text == big.block_text
    assert ctx.messages == [ctx.messages[-1]] and ctx.messages[-1].content == "telescope?"
    assert ctx.manifest["sections"]["relevant"]["message_ids"] == []


def test_state_block_deterministic(corpus: Corpus) -> None:
    corpus.user("erin")
    corpus.conversation("erin", "e1")
    assembler = ContextAssembler(corpus.plate, ContextSettings(budget_tokens=2000))
    state_a = {"relational": {"trust": 0.5}, "character": {"warmth": 0.123456, "rigour": 0.9}, "measured_at": "t"}
    state_b = {"measured_at": "t", "character": {"warmth": 0.123456, "rigour": 0.9}, "relational": {"trust": 0.5}}
    a = corpus.assemble(assembler, "erin", "e1", "hi", state=state_a)
    b = corpus.assemble(assembler, "erin", "e1", "hi", state=state_b)
    assert a.system[1].kind == "state" and a.system[1].text == b.system[1].text
    assert "warmth 0.12" in a.system[1].text


def test_speaker_names_from_metadata(corpus: Corpus) -> None:
    corpus.user("fay")
    corpus.conversation("fay", "f-old", {"speakers": {"user": "Fay", "assistant": "Gus"}})
    corpus.conversation("fay", "f-now")
    corpus.say("fay", "f-old", "user", "I adopted a greyhound named Pixel.")
    corpus.say("fay", "f-old", "assistant", "Pixel is a lovely greyhound name.")
    assembler = ContextAssembler(corpus.plate, ContextSettings(budget_tokens=2000))
    ctx = corpus.assemble(assembler, "fay", "f-now", "What is my greyhound called?")
    text = next(b for b in ctx.system if b.kind == "relevant").text
    assert "Fay: I adopted a greyhound named Pixel." in text
    assert "Gus: Pixel is a lovely greyhound name." in text
    assert "[2025-01-01]" in text


def test_layout_free_counting_charges_only_turn_lines(corpus: Corpus) -> None:
    """count_layout=False (the LoCoMo metric's unit): Σ ceil(len("Speaker: text")/4) ≤ the budget."""
    from ccn_node.continuity.context import render_relevant
    from ccn_node.continuity.retrieval import Turn

    turns = [Turn(message_id=f"m{i}", session_id=f"s{i}", seq=0, role="user", content="x" * 34,
                  created_at=f"2025-01-{i + 1:02d}T00:00:00Z", score=1.0) for i in range(5)]
    labels = {"": {"user": "User", "assistant": "A"}}  # "User: " + 34 chars = 40 chars = 10 tokens
    _, strict_ids, _ = render_relevant(turns, 30, 100, labels)
    _, free_ids, _ = render_relevant(turns, 30, 100, labels, count_layout=False)
    assert len(free_ids) == 3  # exactly 3 × 10 tokens, dates and header free
    assert len(strict_ids) < 3  # header, date lines and newlines counted


def test_greedy_packing_skips_a_turn_that_does_not_fit(corpus: Corpus) -> None:
    from ccn_node.continuity.context import render_relevant
    from ccn_node.continuity.retrieval import Turn

    sizes = [34, 200, 34]
    turns = [Turn(message_id=f"m{i}", session_id="s", seq=i, role="user", content="y" * n,
                  created_at="2025-01-01T00:00:00Z", score=1.0) for i, n in enumerate(sizes)]
    _, ids, truncated = render_relevant(turns, 25, 100, {"": {"user": "User", "assistant": "A"}},
                                        count_layout=False)
    assert ids == ["m0", "m2"] and truncated


def test_no_topic_match_falls_back_to_the_named_speakers_latest_turns(corpus: Corpus) -> None:
    corpus.user("fay")
    corpus.user("zed")
    corpus.conversation("fay", "f-old", {"speakers": {"user": "Fay", "assistant": "Gus"}})
    corpus.conversation("fay", "f-now")
    corpus.conversation("zed", "z-old")
    corpus.say("fay", "f-old", "user", "Went to the market with my sister.")
    corpus.say("fay", "f-old", "assistant", "Sounds fun, what did you buy?")
    corpus.say("zed", "z-old", "user", "Zed's kayak trip was long.")  # "kayak" exists only for another user
    assembler = ContextAssembler(corpus.plate, ContextSettings(budget_tokens=2000))
    ctx = corpus.assemble(assembler, "fay", "f-now", "Did Fay go on a kayak trip?")
    text = next(b for b in ctx.system if b.kind == "relevant").text
    assert "Fay: Went to the market with my sister." in text
    assert "Zed" not in text and "kayak" not in text
    # A message with no searchable words at all still gets no relevant section.
    ctx = corpus.assemble(assembler, "fay", "f-now", "hello there!")
    assert all(b.kind != "relevant" for b in ctx.system)
