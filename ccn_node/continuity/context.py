"""Context assembly: what a fresh model instance is given for one turn, inside a budget.

Order matters for the prompt cache: THE PLATE block comes first and is the plate's own
``block_text``, byte for byte, every turn (``cache=True``); everything that changes per turn
comes after it. Then the character/relational state, then the relevant earlier turns
(retrieval), then the recent turns as real alternating messages ending with the new user
message. Tokens are estimated as ceil(chars/4). The plate and the new user message are
always sent; if they alone exceed the budget the manifest says so instead of failing.
"""

from __future__ import annotations

import math
from typing import Any

import apsw
import msgspec

from ccn_node.config import ContextSettings
from ccn_node.continuity.plate import Plate
from ccn_node.continuity.retrieval import RankParams, Turn, relevant_turns
from ccn_node.llm.base import ChatMessage, ContextBlock

__all__ = ["DEFAULT_SHARES", "AssembledContext", "ContextAssembler", "render_relevant", "render_state", "tokens_of"]

# Section shares of the total budget when the plate gives no hint.
DEFAULT_SHARES = {"state": 0.05, "recent": 0.45, "relevant": 0.35}

RELEVANT_HEADER = "Relevant earlier turns, by date:"
STATE_HEADER = "Current measured state (0 = low, 1 = high):"


def tokens_of(text: str) -> int:
    """The project's token estimate: ceil(chars/4)."""
    return math.ceil(len(text) / 4)


def _line_tokens(line: str) -> int:
    """A line plus its newline, so a section's lines never add up to less than its text."""
    return math.ceil((len(line) + 1) / 4)


def _message_tokens(text: str) -> int:
    """A recent turn, counting the blank line it may be merged with."""
    return math.ceil((len(text) + 2) / 4)


class AssembledContext(msgspec.Struct, kw_only=True):
    """The model input for one turn and the manifest stored with the answer."""

    system: list[ContextBlock]
    messages: list[ChatMessage]
    manifest: dict[str, Any]
    tokens: int


class ContextAssembler:
    """Builds the context of a turn from the plate, state, retrieval and recent history."""

    def __init__(
        self, plate: Plate, settings: ContextSettings, rank: RankParams | None = None, *, count_layout: bool = True
    ) -> None:
        self.plate = plate
        self.settings = settings
        self.rank = rank or RankParams()
        # False only for the LoCoMo metric, which counts each included turn's "Speaker: text"
        # and nothing else (date lines and newlines are free); a real turn always counts them.
        self.count_layout = count_layout
        self.plate_block = ContextBlock("plate", plate.block_text, cache=True)
        self.plate_tokens = tokens_of(plate.block_text)

    # -- budget --------------------------------------------------------------------------

    def _share(self, section: str) -> int:
        """A section's budget in tokens: the plate's hint (fraction or count) or the default."""
        hint = getattr(self.plate.budget, section, None)
        if isinstance(hint, float):
            return int(hint * self.settings.budget_tokens)
        if isinstance(hint, int):
            return hint
        return int(DEFAULT_SHARES[section] * self.settings.budget_tokens)

    # -- assembly ------------------------------------------------------------------------

    def assemble(
        self,
        conn: apsw.Connection,
        *,
        user_id: str,
        session_id: str,
        user_text: str,
        state: dict[str, Any] | None,
        exclude_message_ids: set[str] | None = None,
        history: list[Turn] | None = None,
    ) -> AssembledContext:
        """Assemble on a reader connection; every read is filtered by ``user_id`` in SQL.

        ``history``: the conversation's latest usable turns (oldest first) when the caller has
        already read them in the same transaction — all of them, or at least
        ``recent_turns + len(exclude_message_ids)`` — so they are not read a second time.
        """
        exclude = set(exclude_message_ids or ())
        budget = self.settings.budget_tokens
        user_tokens = tokens_of(user_text)
        fixed = self.plate_tokens + user_tokens
        remaining = max(0, budget - fixed)
        labels = _labels(conn, user_id, self.plate.name)

        # State: small, rendered deterministically, dropped whole if it does not fit.
        state_text = render_state(state) if state else ""
        state_tokens = tokens_of(state_text)
        state_truncated = False
        if state_text and state_tokens > min(remaining, max(self._share("state"), 0)):
            state_text, state_tokens, state_truncated = "", 0, True
        remaining -= state_tokens

        # Recent turns of this conversation: at least their share, more if relevant needs less.
        if history is None:
            recent_rows = _recent(conn, user_id, session_id, self.settings.recent_turns, exclude)
        else:
            recent_rows = last_turns(history, self.settings.recent_turns, exclude)
        recent_cap = min(remaining, max(self._share("recent"), remaining - self._share("relevant")))
        recent_rows, recent_truncated = _fit_recent(recent_rows, recent_cap)
        recent_used = sum(_message_tokens(r.content) for r in recent_rows)
        remaining -= recent_used

        # Relevant earlier turns: whatever is left (the section's share or more).
        skip = exclude | {r.message_id for r in recent_rows}
        relevant_text, relevant_ids, relevant_truncated, candidates = "", [], False, 0
        if remaining > _line_tokens(RELEVANT_HEADER) and self.settings.relevant_limit > 0 and user_text.strip():
            found = relevant_turns(
                conn, user_id, user_text, exclude_ids=skip, limit=max(self.settings.relevant_limit * 3, 60),
                params=self.rank,
            )
            candidates = len(found)
            relevant_text, relevant_ids, relevant_truncated = render_relevant(
                found, remaining, self.settings.relevant_limit, labels, count_layout=self.count_layout
            )
        relevant_tokens = tokens_of(relevant_text)

        system = [self.plate_block]
        if state_text:
            system.append(ContextBlock("state", state_text))
        if relevant_text:
            system.append(ContextBlock("relevant", relevant_text))
        messages, recent_ids, dropped = _alternate(recent_rows, user_text)
        message_tokens = sum(tokens_of(m.content) for m in messages)
        total = self.plate_tokens + state_tokens + relevant_tokens + message_tokens
        manifest: dict[str, Any] = {
            "budget": budget,
            "total": total,
            "over_budget": fixed > budget,
            "sections": {
                "plate": {"tokens": self.plate_tokens, "version": self.plate.version, "sha256": self.plate.sha256},
                "state": {"tokens": state_tokens, "truncated": state_truncated},
                "relevant": {
                    "tokens": relevant_tokens,
                    "message_ids": relevant_ids,
                    "candidates": candidates,
                    "truncated": relevant_truncated,
                },
                "recent": {
                    "tokens": message_tokens - user_tokens,
                    "message_ids": recent_ids,
                    "truncated": recent_truncated,
                    "dropped_message_ids": dropped,
                },
                "user": {"tokens": user_tokens},
            },
        }
        return AssembledContext(system=system, messages=messages, manifest=manifest, tokens=total)


# -- sections ------------------------------------------------------------------------------


def render_state(state: dict[str, Any]) -> str:
    """Character and relational state as stable text: same state, same bytes."""
    lines = [STATE_HEADER]
    for key in sorted(state):
        value = state[key]
        if isinstance(value, dict):
            parts = ", ".join(f"{k} {_num(v)}" for k, v in value.items())
            lines.append(f"- {key}: {parts}")
        else:
            lines.append(f"- {key}: {_num(value)}")
    return "\n".join(lines) + "\n"


def _num(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    return f"{value:.2f}"


def _labels(conn: apsw.Connection, user_id: str, assistant: str) -> dict[str, dict[str, str]]:
    """Speaker names per conversation ("speakers" in its metadata), else User / the plate's name."""
    out: dict[str, dict[str, str]] = {"": {"user": "User", "assistant": assistant}}
    rows = conn.execute(
        "SELECT session_id, metadata ->> '$.speakers.user', metadata ->> '$.speakers.assistant'"
        " FROM conversations WHERE user_id = ? AND metadata ->> '$.speakers' IS NOT NULL",
        (user_id,),
    )
    for sid, user_name, assistant_name in rows:
        out[sid] = {"user": user_name or "User", "assistant": assistant_name or assistant}
    return out


def speaker_line(turn: Turn, labels: dict[str, dict[str, str]]) -> str:
    """'Speaker: text' — the unit the relevant section is built and budgeted from."""
    names = labels.get(turn.session_id, labels[""])
    return f"{names[turn.role]}: {' '.join(turn.content.split())}"


def render_relevant(
    turns: list[Turn],
    budget: int,
    max_turns: int,
    labels: dict[str, dict[str, str]],
    *,
    count_layout: bool = True,
) -> tuple[str, list[str], bool]:
    """Take turns best first while they fit, then print them grouped by conversation and date.

    A turn that does not fit is skipped and the next ones are still tried (greedy packing).
    ``count_layout=False`` charges only ceil(len("Speaker: text")/4) per turn (the LoCoMo
    metric's unit); the section header, date lines and newlines then cost nothing.
    """
    used = _line_tokens(RELEVANT_HEADER) if count_layout else 0
    chosen: list[tuple[Turn, str]] = []
    sessions: set[str] = set()
    truncated = False
    for turn in turns:
        if len(chosen) >= max_turns:
            truncated = True
            break
        line = speaker_line(turn, labels)
        if count_layout:
            cost = _line_tokens(line)
            if _session_header(turn) not in sessions:
                cost += _line_tokens(_session_header(turn))
        else:
            cost = tokens_of(line)
        if used + cost > budget:
            truncated = True
            continue
        used += cost
        sessions.add(_session_header(turn))
        chosen.append((turn, line))
    if not chosen:
        return "", [], truncated
    chosen.sort(key=lambda tl: (tl[0].created_at[:10], tl[0].session_id, tl[0].seq))
    lines = [RELEVANT_HEADER]
    current = None
    for turn, line in chosen:
        if _session_header(turn) != current:
            current = _session_header(turn)
            lines.append(current)
        lines.append(line)
    return "\n".join(lines) + "\n", [t.message_id for t, _ in chosen], truncated


def _session_header(turn: Turn) -> str:
    """One short date line per day: dates answer "when" questions; ids would only cost tokens."""
    return f"[{turn.created_at[:10]}]"


RECENT_SQL = (
    "SELECT message_id, session_id, seq, role, content, created_at FROM messages"
    " WHERE session_id = ? AND user_id = ? AND kind = 'chat' AND erased_at IS NULL AND content != ''"
    " ORDER BY seq DESC LIMIT ?"
)


def recent_turn(row: tuple[Any, ...]) -> Turn:
    """A ``messages`` row (message_id, session_id, seq, role, content, created_at, ...) as a recent turn."""
    return Turn(message_id=row[0], session_id=row[1], seq=row[2], role=row[3], content=row[4], created_at=row[5],
                score=0.0, source="recent")


def last_turns(turns: list[Turn], n: int, exclude: set[str]) -> list[Turn]:
    """The last ``n`` of ``turns`` (oldest first) that are not excluded, oldest first."""
    if n <= 0:
        return []
    return [t for t in turns if t.message_id not in exclude][-n:]


def _recent(conn: apsw.Connection, user_id: str, session_id: str, n: int, exclude: set[str]) -> list[Turn]:
    """The last ``n`` turns of this conversation, oldest first (user filter in the query)."""
    if n <= 0:
        return []
    rows = conn.execute(RECENT_SQL, (session_id, user_id, n + len(exclude))).fetchall()
    return last_turns([recent_turn(r) for r in reversed(rows)], n, exclude)


def _fit_recent(rows: list[Turn], cap: int) -> tuple[list[Turn], bool]:
    """Keep the newest turns that fit; older ones go (retrieval may still bring them back)."""
    kept: list[Turn] = []
    used = 0
    for turn in reversed(rows):
        cost = _message_tokens(turn.content)
        if used + cost > cap:
            return kept[::-1], True
        kept.append(turn)
        used += cost
    return kept[::-1], False


def _alternate(rows: list[Turn], user_text: str) -> tuple[list[ChatMessage], list[str], list[str]]:
    """Messages for the Messages API: first is user, roles alternate, last is the new message.

    Consecutive turns of one role are merged (blank line between); assistant turns before
    the first user turn are dropped (their ids are reported) since they cannot come first.
    """
    merged: list[tuple[str, list[str]]] = []
    ids: list[str] = []
    dropped: list[str] = []
    for turn in rows:
        if not merged and turn.role != "user":
            dropped.append(turn.message_id)
            continue
        ids.append(turn.message_id)
        if merged and merged[-1][0] == turn.role:
            merged[-1][1].append(turn.content)
        else:
            merged.append((turn.role, [turn.content]))
    if merged and merged[-1][0] == "user":
        merged[-1][1].append(user_text)
    else:
        merged.append(("user", [user_text]))
    messages = [ChatMessage(role=role, content="\n\n".join(parts)) for role, parts in merged]  # type: ignore[arg-type]
    return messages, ids, dropped
