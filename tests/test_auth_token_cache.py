"""Verified tokens are remembered (PyJWT's full check was ~35 % of the event loop's busy time
under a write load), but a remembered token is never accepted outside the time it was valid
for, nor after the keys changed."""

from __future__ import annotations

import pytest

from ccn_node.api import auth
from ccn_node.api.auth import AuthError, TokenAuthority

KEY_A = b"a" * 32
KEY_B = b"b" * 32


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock(1_800_000_000.0)
    monkeypatch.setattr(auth.time, "time", fake)
    monkeypatch.setattr("jwt.api_jwt.datetime", _FrozenDatetime(fake))
    return fake


class _FrozenDatetime:
    """PyJWT reads the time through datetime.now(tz=utc): follow the fake clock."""

    def __init__(self, clock: Clock) -> None:
        import datetime as real

        self._real = real.datetime
        self._clock = clock
        self.timezone = real.timezone

    def now(self, tz: object = None) -> object:
        return self._real.fromtimestamp(self._clock(), tz)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> object:
        return getattr(self._real, name)


def test_a_second_verify_is_answered_from_the_cache(clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    authority = TokenAuthority(KEY_A, issuer="ccn-node", ttl_s=60)
    token = authority.issue("alice")
    first = authority.verify(token)
    calls = []
    monkeypatch.setattr(auth.jwt, "decode", lambda *a, **k: calls.append(a))
    assert authority.verify(token) == first and calls == []


def test_an_expired_token_is_refused_even_when_remembered(clock: Clock) -> None:
    authority = TokenAuthority(KEY_A, issuer="ccn-node", ttl_s=60)
    token = authority.issue("alice")
    assert authority.verify(token).user_id == "alice"
    clock.now += 60 + auth.LEEWAY_S + 1
    with pytest.raises(AuthError, match="expired"):
        authority.verify(token)


def test_new_keys_forget_what_the_old_ones_verified(clock: Clock) -> None:
    authority = TokenAuthority(KEY_A, issuer="ccn-node", ttl_s=3600)
    token = authority.issue("alice")
    authority.verify(token)
    authority.set_keys(KEY_B, [])  # rotated with no grace: A's tokens stop at once
    with pytest.raises(AuthError, match="signature"):
        authority.verify(token)


def test_a_token_of_a_previous_key_stops_with_its_grace_period(clock: Clock) -> None:
    authority = TokenAuthority(KEY_A, issuer="ccn-node", ttl_s=3600)
    token = authority.issue("alice")
    authority.set_keys(KEY_B, [KEY_A], previous_until=clock.now + 100)
    assert authority.verify(token).user_id == "alice"  # verified with the previous key, remembered
    clock.now += 101
    with pytest.raises(AuthError, match="signature"):
        authority.verify(token)


def test_the_cache_is_bounded(clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(auth, "VERIFIED_CACHE_SIZE", 3)
    authority = TokenAuthority(KEY_A, issuer="ccn-node", ttl_s=3600)
    tokens = [authority.issue(f"user{i}") for i in range(5)]
    for token in tokens:
        authority.verify(token)
    assert len(authority._verified) == 3 and tokens[-1] in authority._verified and tokens[0] not in authority._verified
