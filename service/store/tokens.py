"""API tokens as rows: stored by the hash of their secret, listed, counted, found and revoked.

The secret itself never reaches the database: service.access.auth makes it and hashes it, and
decides who a token acts for.
"""
from __future__ import annotations

import uuid

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from service.contract.models import ApiToken, utcnow


def add_token(
    session: Session,
    *,
    owner: str,
    scope: str,
    token_hash: str,
    max_active_jobs: int | None = None,
    submissions_per_minute: int | None = None,
    max_compute: float | None = None,
) -> ApiToken:
    """Store a new token (its hash) with its quota overrides (None: the setting's)."""
    row = ApiToken(
        id=str(uuid.uuid4()),
        owner=owner,
        scope=scope,
        token_hash=token_hash,
        created_at=utcnow(),
        revoked_at=None,
        max_active_jobs=max_active_jobs,
        submissions_per_minute=submissions_per_minute,
        max_compute=max_compute,
    )
    session.add(row)
    session.commit()
    return row


def list_tokens(session: Session, *, include_revoked: bool = False) -> list[ApiToken]:
    """Tokens by creation time (their hashes, never their secrets)."""
    query = select(ApiToken).order_by(ApiToken.created_at, ApiToken.id)
    if not include_revoked:
        query = query.where(ApiToken.revoked_at.is_(None))
    tokens = list(session.scalars(query))
    session.commit()
    return tokens


def count_tokens(session: Session) -> int:
    """How many tokens were ever created, revoked ones included."""
    count = session.scalar(select(func.count()).select_from(ApiToken))
    session.commit()
    return int(count or 0)


def tokens_with_id_prefix(session: Session, id_prefix: str) -> list[ApiToken]:
    """The tokens whose id starts with id_prefix (matched literally: % and _ are not wildcards)."""
    escaped = id_prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    matches = list(
        session.scalars(select(ApiToken).where(ApiToken.id.like(f"{escaped}%", escape="\\")))
    )
    session.commit()
    return matches


def revoke_token_row(session: Session, token: ApiToken) -> ApiToken:
    """Mark the token revoked now; a revoked token keeps its first revocation time."""
    session.execute(
        update(ApiToken)
        .where(ApiToken.id == token.id, ApiToken.revoked_at.is_(None))
        .values(revoked_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    session.commit()
    session.refresh(token)
    return token


def token_by_hash(session: Session, token_hash: str) -> ApiToken | None:
    """The token stored with this hash (revoked or not), or None."""
    row = session.scalars(select(ApiToken).where(ApiToken.token_hash == token_hash)).first()
    session.commit()
    return row


def token_is_live(session: Session, token_id: str) -> bool:
    """The token exists and is not revoked (a long-lived stream checks it again)."""
    row = session.execute(select(ApiToken.revoked_at).where(ApiToken.id == token_id)).first()
    session.commit()
    return row is not None and row.revoked_at is None
