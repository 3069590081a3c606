"""The commands state-machine tests are made of: a user, a conversation and its messages, with
the fields that do not matter to the test filled in once (plate version and hash, timestamps,
token counts, ids derived from a number)."""

from __future__ import annotations

from ccn_node.replication import commands as c

AT = "2025-03-01T10:00:00.000000Z"


def create_user(user_id: str, *, request_id: str | None = None, at: str = AT) -> c.CreateUser:
    return c.CreateUser(request_id=request_id or f"user-{user_id}", user_id=user_id, name=user_id, role="user",
                        created_at=at)


def start_conversation(
    session_id: str, user_id: str, *, request_id: str | None = None, title: str = "", at: str = AT
) -> c.StartConversation:
    return c.StartConversation(request_id=request_id or f"conv-{session_id}", session_id=session_id, user_id=user_id,
                               title=title, created_at=at, plate_version="v1", plate_sha256="0" * 64)


def at(i: int) -> str:
    """The i-th second after AT: distinct, ordered timestamps."""
    return f"2025-03-01T10:{i // 60:02d}:{i % 60:02d}.000000Z"


def append_message(
    i: int,
    session: str,
    user: str,
    text: str,
    *,
    request_id: str | None = None,
    message_id: str | None = None,
    role: str = "user",
    **extra: object,
) -> c.AppendMessage:
    """Message number ``i``: request id ``r{i}``, message id ``m{i}``, written at ``at(i)``."""
    return c.AppendMessage(
        request_id=request_id or f"r{i}",
        message_id=message_id or f"m{i}",
        session_id=session,
        user_id=user,
        role=role,
        content=text,
        created_at=at(i),
        tokens=len(text) // 4 + 1,
        **extra,
    )  # type: ignore[arg-type]
