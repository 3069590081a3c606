"""The commands a state-machine test starts from: a user and a conversation, with the fields
that do not matter to the test filled in once (plate version and hash, timestamps)."""

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
