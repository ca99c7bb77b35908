"""Bearer tokens: create, revoke, and authenticate a request's token (the rows:
service.store.tokens).

A token is `glk_` followed by 43 URL-safe characters from `secrets` (256 random bits). Only its
sha256 is stored: the secret is shown once, when the token is created. Authenticating hashes the
presented token and looks the hash up in the unique index of `api_tokens`, so no stored secret
is ever compared character by character. A plain (unsalted) sha256 is enough here: the secret
is random, not a password, so there is nothing to guess from its hash.

Scopes nest: admin ⊇ write ⊇ read. A token acts for its owner: it sees and changes only that
owner's experiments; an admin token sees and changes everyone's.
"""
from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass

from sqlalchemy.orm import Session

from service import store
from service.contract.models import SCOPES, ApiToken, Experiment, Sweep

TOKEN_PREFIX = "glk_"
OWNER_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,199}$"
MIN_ID_PREFIX = 4


def hash_token(token: str) -> str:
    """The stored form of a token: the hex sha256 of its UTF-8 bytes."""
    return hashlib.sha256(token.encode()).hexdigest()


def scope_includes(granted: str, needed: str) -> bool:
    """Whether a token of scope `granted` may do what needs scope `needed`."""
    return SCOPES.index(granted) >= SCOPES.index(needed)


@dataclass(frozen=True)
class Principal:
    """Who a request acts for: the owner and scope of its token."""

    token_id: str
    owner: str
    scope: str
    # The token's quota overrides (None: the setting's value; see service/access/quotas.py).
    max_active_jobs: int | None = None
    submissions_per_minute: int | None = None
    max_compute: float | None = None

    @property
    def is_admin(self) -> bool:
        return self.scope == "admin"

    def can(self, needed: str) -> bool:
        return scope_includes(self.scope, needed)

    def sees(self, row: Experiment | Sweep) -> bool:
        """Own experiments and sweeps, or every one for an admin."""
        return self.is_admin or row.owner == self.owner


def check_owner(owner: str) -> str:
    if not re.match(OWNER_PATTERN, owner):
        raise ValueError(
            f"owner must be 1..200 characters of letters, digits and . _ @ + -, starting with a "
            f"letter or digit (got {owner!r})"
        )
    return owner


def check_scope(scope: str) -> str:
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {', '.join(SCOPES)} (got {scope!r})")
    return scope


def create_token(
    session: Session,
    owner: str,
    scope: str,
    *,
    max_active_jobs: int | None = None,
    submissions_per_minute: int | None = None,
    max_compute: float | None = None,
) -> tuple[ApiToken, str]:
    """Store a new token for `owner` with `scope` and optional quota overrides (None: the
    setting's); returns (the row, the secret token).

    The secret exists only in the return value: show it to its user once."""
    check_owner(owner)
    check_scope(scope)
    for name, value in (
        ("max_active_jobs", max_active_jobs),
        ("submissions_per_minute", submissions_per_minute),
        ("max_compute", max_compute),
    ):
        if value is not None and value < 0:
            raise ValueError(f"{name} must be >= 0 (got {value})")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = store.add_token(
        session,
        owner=owner,
        scope=scope,
        token_hash=hash_token(token),
        max_active_jobs=max_active_jobs,
        submissions_per_minute=submissions_per_minute,
        max_compute=max_compute,
    )
    return row, token


def revoke_token(session: Session, id_prefix: str) -> ApiToken:
    """Revoke the token whose id starts with `id_prefix` (at least 4 characters, matching exactly
    one token). Revoking a revoked token keeps its first revocation time. Raises LookupError."""
    id_prefix = id_prefix.strip().lower()
    if len(id_prefix) < MIN_ID_PREFIX:
        raise LookupError(
            f"give at least {MIN_ID_PREFIX} characters of the token id (got {id_prefix!r})"
        )
    matches = store.tokens_with_id_prefix(session, id_prefix)
    if len(matches) != 1:
        found = "no token" if not matches else f"{len(matches)} tokens"
        raise LookupError(f"{found} with an id starting {id_prefix!r}; `groklab token list` shows them")
    (token,) = matches
    store.revoke_token_row(session, token)
    forget_checked_tokens()
    return token


def authenticate(session: Session, token: str) -> Principal | None:
    """The principal of a presented token, or None when it is unknown or revoked."""
    digest = hash_token(token)
    row = store.token_by_hash(session, digest)
    if row is None or row.revoked_at is not None:
        return None
    if not hmac.compare_digest(row.token_hash, digest):  # the index matched; belt and braces
        return None
    return Principal(
        token_id=row.id,
        owner=row.owner,
        scope=row.scope,
        max_active_jobs=row.max_active_jobs,
        submissions_per_minute=row.submissions_per_minute,
        max_compute=row.max_compute,
    )


# ---- checked tokens, reused for a few seconds ------------------------------------------------
#
# An API process keeps the principal of each token it checked for GROKLAB_TOKEN_CACHE_S seconds
# (keyed by the token's sha256, never the secret): a polling client costs no token query per
# request. A revocation in this process empties it at once; one made elsewhere (the CLI,
# another API worker) takes effect within GROKLAB_TOKEN_CACHE_S.

_CHECKED: dict[str, tuple[float, Principal]] = {}
_CHECKED_MAX = 10_000


def checked_principal(token: str, ttl_s: float) -> Principal | None:
    """The principal of a token checked less than ttl_s ago in this process, else None."""
    found = _CHECKED.get(hash_token(token)) if ttl_s > 0 else None
    if found is None or time.monotonic() - found[0] >= ttl_s:
        return None
    return found[1]


def authenticate_and_remember(session: Session, token: str, ttl_s: float) -> Principal | None:
    """authenticate(), remembering a valid token's principal for checked_principal()."""
    principal = authenticate(session, token)
    if principal is not None and ttl_s > 0:
        if len(_CHECKED) >= _CHECKED_MAX:
            _CHECKED.clear()
        _CHECKED[hash_token(token)] = (time.monotonic(), principal)
    return principal


def forget_checked_tokens() -> None:
    _CHECKED.clear()
