"""JWT bearer tokens with roles: public (no token), user, admin.

HS256 with the cluster-wide key from config; only that algorithm is accepted, so unsigned
(`alg: none`) tokens and tokens signed with any other key or algorithm are refused. The
token's subject is the user name; the node creates the user row (through the command log)
the first time it sees a valid token, so any node of a cluster can issue tokens offline.
"""

from __future__ import annotations

import re
import secrets
import threading
import time
from collections import OrderedDict
from typing import Literal

import jwt
import msgspec

Role = Literal["user", "admin"]
ROLES: tuple[str, ...] = ("user", "admin")
LEEWAY_S = 5
VERIFIED_CACHE_SIZE = 4096
"""Tokens remembered as verified. A client sends the same token on every request, and PyJWT's
full check was ~35 % of the event loop's busy time under a write load (`bench cluster`, http)."""
USER_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")


class AuthError(Exception):
    """Why a token was refused; the message is safe to show the client."""


class Principal(msgspec.Struct, frozen=True):
    user_id: str
    role: str
    token_id: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def valid_user_name(name: str) -> bool:
    return USER_NAME_RE.fullmatch(name) is not None


class TokenAuthority:
    """Issues and verifies the node's tokens with one HMAC key."""

    algorithm = "HS256"

    def __init__(
        self,
        key: bytes,
        *,
        issuer: str,
        ttl_s: int,
        previous_keys: list[bytes] | None = None,
        previous_until: float | None = None,
    ) -> None:
        self.issuer = issuer
        self.ttl_s = ttl_s
        self._cache_lock = threading.Lock()
        self.set_keys(key, previous_keys or [], previous_until)

    def set_keys(self, key: bytes, previous_keys: list[bytes], previous_until: float | None = None) -> None:
        """Rotate: sign with ``key`` from now on; accept ``previous_keys`` until ``previous_until``
        (unix time; None = no end), so tokens already handed out keep working for a grace period."""
        self._key = key
        self._previous = list(previous_keys)
        self._previous_until = previous_until
        with self._cache_lock:  # what was verified with the old keys is checked again
            self._verified: OrderedDict[str, tuple[Principal, float, float]] = OrderedDict()  # → (who, from, until)

    def _verification_keys(self) -> list[bytes]:
        if self._previous and (self._previous_until is None or time.time() < self._previous_until):
            return [self._key, *self._previous]
        return [self._key]

    def issue(self, user: str, role: str = "user", ttl_s: int | None = None) -> str:
        if not valid_user_name(user):
            raise ValueError("user names are 1-64 of letters, digits, '.', '_', '@', '-', starting alphanumeric")
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}")
        now = int(time.time())
        claims = {
            "sub": user,
            "role": role,
            "iss": self.issuer,
            "iat": now,
            "nbf": now - 5,
            "exp": now + (ttl_s or self.ttl_s),
            "jti": secrets.token_hex(8),
        }
        return jwt.encode(claims, self._key, algorithm=self.algorithm)

    def verify(self, token: str) -> Principal:
        """Return the principal of a valid token; raise AuthError otherwise.

        A token verified before is answered from a cache keyed by its exact text, within the
        time it was valid for (nbf .. exp with the leeway, and for a previous key only until
        that key's grace period ends); outside it, or after a key change, the full check runs
        again and says why it fails. Tokens are not revocable one by one (rotate the key)."""
        if len(token) > 4096:
            raise AuthError("token too long")
        now = time.time()
        with self._cache_lock:
            known = self._verified.get(token)
            if known is not None:
                if known[1] <= now < known[2]:
                    self._verified.move_to_end(token)
                    return known[0]
                del self._verified[token]
        principal, valid_from, valid_until = self._verify_fully(token)
        with self._cache_lock:
            self._verified[token] = (principal, valid_from, valid_until)
            if len(self._verified) > VERIFIED_CACHE_SIZE:
                self._verified.popitem(last=False)
        return principal

    def _verify_fully(self, token: str) -> tuple[Principal, float, float]:
        last: Exception | None = None
        for n, key in enumerate(self._verification_keys()):
            try:
                claims = jwt.decode(
                    token,
                    key,
                    algorithms=[self.algorithm],
                    issuer=self.issuer,
                    options={"require": ["sub", "exp", "iat", "iss", "role"]},
                    leeway=LEEWAY_S,
                )
            except jwt.ExpiredSignatureError:
                raise AuthError("token expired") from None
            except jwt.InvalidSignatureError as exc:
                last = exc
                continue
            except jwt.PyJWTError as exc:
                raise AuthError(f"invalid token: {exc}") from None
            sub, role = claims.get("sub"), claims.get("role")
            if not isinstance(sub, str) or not valid_user_name(sub):
                raise AuthError("invalid token subject")
            if role not in ROLES:
                raise AuthError("invalid token role")
            principal = Principal(user_id=sub, role=role, token_id=str(claims.get("jti", "")))
            nbf = claims.get("nbf")
            valid_from = float(nbf) - LEEWAY_S if isinstance(nbf, (int, float)) else float("-inf")
            valid_until = float(claims["exp"]) + LEEWAY_S
            if n > 0 and self._previous_until is not None:  # a previous key: only for its grace period
                valid_until = min(valid_until, self._previous_until)
            return principal, valid_from, valid_until
        raise AuthError("invalid token signature") from last
