"""Webhook secrets: one per owner, the key its alert webhooks are signed with."""
from __future__ import annotations

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from service.contract.models import WebhookSecret, utcnow
from service.contract.notify import new_webhook_secret
from service.store.dialect import upsert_insert


def set_webhook_secret(session: Session, owner: str) -> str:
    """Give `owner` a new secret (replacing any), and return it: show it to its user once."""
    secret, now = new_webhook_secret(), utcnow()
    statement = upsert_insert(session, WebhookSecret).values(owner=owner, secret=secret, created_at=now)
    session.execute(statement.on_conflict_do_update(
        index_elements=["owner"], set_={"secret": secret, "created_at": now}
    ))
    session.commit()
    return secret


def get_webhook_secret(session: Session, owner: str) -> str | None:
    """The owner's secret, or None when it has none (its alerts are not sent)."""
    secret = session.scalar(select(WebhookSecret.secret).where(WebhookSecret.owner == owner))
    session.commit()
    return secret


def list_webhook_secrets(session: Session) -> list[WebhookSecret]:
    """Every owner with a secret, by owner (callers show the owner and date, never the secret)."""
    rows = list(session.scalars(select(WebhookSecret).order_by(WebhookSecret.owner)))
    session.commit()
    return rows


def revoke_webhook_secret(session: Session, owner: str) -> bool:
    """Delete the owner's secret; False when it had none."""
    deleted = session.execute(delete(WebhookSecret).where(WebhookSecret.owner == owner)).rowcount
    session.commit()
    return bool(deleted)
