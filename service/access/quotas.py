"""Per-owner quotas at submit: stored checkpoint bytes, queued + running jobs at once, and
submissions per minute. A paused job is inactive: resuming it is checked against the active
jobs alone (check_active_jobs).

Both are counted in the database (the source of truth), so they hold across several API
processes; quota_held counts and inserts in one transaction under the owner's lock, so that
concurrent submissions never pass on the same count. A token may override either
(api_tokens.max_active_jobs, .submissions_per_minute; `groklab token create --max-active-jobs
N`; 0 there allows none); otherwise the settings apply, except to admin
tokens (the operator's, and `groklab up`'s), which have no quota unless given one. Over a quota,
the submission is refused with QuotaExceeded (the API's 429, with a Retry-After header and the
limit named). The storage quota (GROKLAB_STORAGE_QUOTA_BYTES, every token) is
StorageQuotaExceeded (the API's 507): no new job until checkpoints are deleted; jobs already
running carry on. The rows are counted by the store (service.store.usage).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta

from sqlalchemy.orm import Session

from service import store
from service.access.auth import Principal
from service.contract.models import utcnow
from service.contract.settings import Settings

WINDOW_S = 60
# Retry-After when the owner has too many active jobs: about when a short job frees a slot.
ACTIVE_RETRY_AFTER_S = 30
# Retry-After when the owner has too many analyses waiting: about one analysis's time.
ANALYSIS_RETRY_AFTER_S = 10


class QuotaExceeded(Exception):
    """Too many active jobs, or too many submissions in the last WINDOW_S seconds: waiting frees
    the quota, in about retry_after_s seconds. The message names the limit and its setting."""

    def __init__(self, message: str, retry_after_s: float):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class StorageQuotaExceeded(Exception):
    """The owner's checkpoints fill its storage quota: waiting does not free it, deleting
    experiments does. The message names the bytes stored and the quota."""


def _limit(principal: Principal, override: int | None, setting: int) -> int | None:
    """The token's override (0: none at all), else the setting (0 there: no limit); None is no
    limit. An admin token (the operator's) has no limit unless it was given one."""
    if override is not None:
        return override
    return None if principal.is_admin or setting == 0 else setting


def recent_submissions(session: Session, owner: str) -> tuple[int, float]:
    """Submissions (single experiments and sweeps) of the owner in the last WINDOW_S seconds,
    and the seconds until the oldest of them leaves the window."""
    now = utcnow()  # created_at is written with the API's clock (store.create_experiment)
    times = store.submission_times(session, owner, since=now - timedelta(seconds=WINDOW_S))
    if not times:
        return 0, 0.0
    oldest = min(times)
    return len(times), max(1.0, WINDOW_S - (now - oldest).total_seconds())


def check_quota(
    session: Session, settings: Settings, principal: Principal, new_jobs: int = 1
) -> None:
    """Raise StorageQuotaExceeded or QuotaExceeded unless the owner may submit `new_jobs` more
    experiments now."""
    owner = principal.owner
    quota = settings.storage_quota_bytes
    if quota and (used := store.owner_checkpoint_bytes(session, owner)) >= quota:
        raise StorageQuotaExceeded(
            f"storage quota exceeded: owner {owner!r} stores {used} bytes of checkpoints, "
            f"the quota (GROKLAB_STORAGE_QUOTA_BYTES) is {quota}; delete experiments to submit "
            "new ones",
        )
    per_minute = _limit(principal, principal.submissions_per_minute,
                        settings.submissions_per_minute)
    if per_minute is not None:
        count, retry = recent_submissions(session, owner)
        if count >= per_minute:
            raise QuotaExceeded(
                f"submission rate limit: owner {owner!r} made {count} submissions in the last "
                f"{WINDOW_S} s; at most {per_minute} per minute (submissions_per_minute, "
                "GROKLAB_SUBMISSIONS_PER_MINUTE or the token's override); retry after "
                f"{retry:.0f} s",
                retry,
            )
    check_active_jobs(session, settings, principal, new_jobs)


def check_active_jobs(
    session: Session, settings: Settings, principal: Principal, new_jobs: int = 1,
    action: str = "this submission adds",
) -> None:
    """Raise QuotaExceeded unless the owner may have `new_jobs` more queued or running
    experiments now. A paused job is not active, so resuming one counts here again (and only
    here: a resume is not a submission, and a paused job's checkpoints are already stored)."""
    max_active = _limit(principal, principal.max_active_jobs, settings.max_active_jobs_per_owner)
    if max_active is not None and new_jobs:
        active = store.active_jobs(session, principal.owner)
        if active + new_jobs > max_active:
            raise QuotaExceeded(
                f"active job limit: owner {principal.owner!r} has {active} queued or running "
                f"jobs and {action} {new_jobs}; at most {max_active} at once "
                "(max_active_jobs_per_owner, GROKLAB_MAX_ACTIVE_JOBS_PER_OWNER or the token's "
                "override); retry when some finish, or pause or cancel some",
                ACTIVE_RETRY_AFTER_S,
            )


@contextmanager
def quota_held(
    session: Session, settings: Settings, principal: Principal, new_jobs: int = 1,
    *, resuming: bool = False,
) -> Iterator[None]:
    """check_quota (check_active_jobs when `resuming` paused jobs), then the block that stores
    what it admitted, in one transaction under the owner's lock (store.owner_lock: PostgreSQL's
    advisory lock, SQLite's BEGIN IMMEDIATE). Submissions of one owner from any number of API
    processes are counted one after the other, each seeing what the one before inserted; the
    block's insert commits the transaction."""
    with store.owner_lock(session, principal.owner):
        if resuming:
            check_active_jobs(session, settings, principal, new_jobs, action="resuming adds")
        else:
            check_quota(session, settings, principal, new_jobs)
        yield


@contextmanager
def analysis_held(
    session: Session, settings: Settings, owner: str, already_pending: Callable[[], bool],
) -> Iterator[None]:
    """Raise QuotaExceeded when the owner has GROKLAB_MAX_PENDING_ANALYSES_PER_OWNER analyses
    waiting for a worker and this request would add one (already_pending() is False); else run
    the block that requests it, under the owner's lock (store.owner_lock), so that concurrent
    requests never pass on the same count. The analysis queue thus holds at most that many of
    one owner's analyses before another owner's."""
    limit = settings.max_pending_analyses_per_owner
    with store.owner_lock(session, owner):
        if limit and (pending := store.pending_analyses(session, owner)) >= limit \
                and not already_pending():
            raise QuotaExceeded(
                f"pending analysis limit: owner {owner!r} has {pending} analyses waiting for a "
                f"worker; at most {limit} at once (GROKLAB_MAX_PENDING_ANALYSES_PER_OWNER); "
                "retry when some are done",
                ANALYSIS_RETRY_AFTER_S,
            )
        yield
