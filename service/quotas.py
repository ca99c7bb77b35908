"""Per-owner quotas at submit: stored checkpoint bytes, queued + running jobs at once, and
submissions per minute.

Both are counted in the database (the source of truth), so they hold across several API
processes. A token may override either (api_tokens.max_active_jobs, .submissions_per_minute;
`groklab token create --max-active-jobs N`); otherwise the settings apply, except to admin
tokens (the operator's, and `groklab up`'s), which have no quota unless given one. Over a quota,
the submission is refused with 429, a Retry-After header and the limit named. The storage quota
(GROKLAB_STORAGE_QUOTA_BYTES, every token) is a 507: no new job until checkpoints are deleted;
jobs already running carry on.
"""
from __future__ import annotations

from datetime import timedelta

from fastapi import HTTPException
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service import store
from service.auth import Principal
from service.models import QUEUED, RUNNING, Experiment, Sweep, utcnow
from service.settings import Settings

WINDOW_S = 60
# Retry-After when the owner has too many active jobs: about when a short job frees a slot.
ACTIVE_RETRY_AFTER_S = 30


def _limit(principal: Principal, override: int | None, setting: int) -> int:
    """The token's override, else the setting; an admin token (the operator's) has no limit
    unless it was given one."""
    if override is not None:
        return override
    return 0 if principal.is_admin else setting


def active_jobs(session: Session, owner: str) -> int:
    """The owner's queued and running experiments (each sweep member counts one)."""
    n = session.scalar(
        select(func.count()).select_from(Experiment)
        .where(Experiment.owner == owner, Experiment.status.in_((QUEUED, RUNNING)))
    )
    return int(n or 0)


def recent_submissions(session: Session, owner: str) -> tuple[int, float]:
    """Submissions (single experiments and sweeps) of the owner in the last WINDOW_S seconds,
    and the seconds until the oldest of them leaves the window."""
    now = utcnow()  # created_at is written with the API's clock (store.create_experiment)
    since = now - timedelta(seconds=WINDOW_S)
    singles = select(Experiment.created_at).where(
        Experiment.owner == owner, Experiment.sweep_id.is_(None), Experiment.created_at >= since)
    sweeps = select(Sweep.created_at).where(Sweep.owner == owner, Sweep.created_at >= since)
    times = [*session.scalars(singles), *session.scalars(sweeps)]
    if not times:
        return 0, 0.0
    oldest = min(times)
    return len(times), max(1.0, WINDOW_S - (now - oldest).total_seconds())


def _too_many(detail: str, retry_after_s: float) -> HTTPException:
    return HTTPException(429, detail, headers={"Retry-After": str(max(1, int(retry_after_s + 0.999)))})


def require_quota(
    session: Session, settings: Settings, principal: Principal, new_jobs: int = 1
) -> None:
    """507 or 429 unless the owner may submit `new_jobs` more experiments now."""
    owner = principal.owner
    quota = settings.storage_quota_bytes
    if quota and (used := store.owner_checkpoint_bytes(session, owner)) >= quota:
        session.commit()
        raise HTTPException(
            507, f"storage quota exceeded: owner {owner!r} stores {used} bytes of checkpoints, "
            f"the quota (GROKLAB_STORAGE_QUOTA_BYTES) is {quota}; delete experiments to submit "
            "new ones",
        )
    per_minute = _limit(principal, principal.submissions_per_minute,
                        settings.submissions_per_minute)
    if per_minute:
        count, retry = recent_submissions(session, owner)
        if count >= per_minute:
            session.commit()
            raise _too_many(
                f"submission rate limit: owner {owner!r} made {count} submissions in the last "
                f"{WINDOW_S} s; at most {per_minute} per minute (submissions_per_minute, "
                "GROKLAB_SUBMISSIONS_PER_MINUTE or the token's override); retry after "
                f"{retry:.0f} s",
                retry,
            )
    max_active = _limit(principal, principal.max_active_jobs, settings.max_active_jobs_per_owner)
    if max_active:
        active = active_jobs(session, owner)
        if active + new_jobs > max_active:
            session.commit()
            raise _too_many(
                f"active job limit: owner {owner!r} has {active} queued or running jobs and "
                f"this submission adds {new_jobs}; at most {max_active} at once "
                "(max_active_jobs_per_owner, GROKLAB_MAX_ACTIVE_JOBS_PER_OWNER or the token's "
                "override); retry when some finish, or cancel some",
                ACTIVE_RETRY_AFTER_S,
            )
    session.commit()
