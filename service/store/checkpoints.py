"""Checkpoints: stored with their sha256 and size, their bytes split into chunks of
CHECKPOINT_CHUNK_BYTES (checkpoint_chunks), listed without their bytes, and read a chunk at a
time: a download streams them, a resumed job reassembles them, and both only after the sha256
and the safetensors layout have been checked (CheckpointCorrupt otherwise).
"""
from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterator

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.contract.checkpoint_format import check_checkpoint, header_length
from service.contract.models import (
    CHECKPOINT_CHUNK_BYTES,
    Checkpoint,
    CheckpointChunk,
    Experiment,
    utcnow,
)
from service.store.dialect import upsert_insert
from service.store.experiments import MAX_STEP, holds_attempt, require_experiment
from service.store.retention import CheckpointRetention, apply_retention

# The safetensors header of a groklab checkpoint is a few KiB; a head claiming more than this is
# refused rather than buffered.
MAX_HEADER_BYTES = 16 << 20


class CheckpointCorrupt(ValueError):
    """A stored checkpoint that must not be loaded or served: its bytes no longer hash to the
    sha256 recorded when it was written, or they are not a groklab safetensors checkpoint."""

    def __init__(self, checkpoint: Checkpoint, problem: str) -> None:
        super().__init__(
            f"checkpoint at step {checkpoint.step} of experiment {checkpoint.experiment_id} is "
            f"corrupt: {problem}"
        )
        self.experiment_id = checkpoint.experiment_id
        self.step = checkpoint.step


def add_checkpoint(
    session: Session, experiment_id: str, step: int, blob: bytes, meta: dict,
    retention: CheckpointRetention | None = None, attempt: int | None = None,
) -> Checkpoint | None:
    """Store a checkpoint with its sha256 and size, its bytes in chunks, in one transaction.
    Idempotent on (experiment, step): the first one written for a step is kept and returned.
    Then applies the retention policy (service.store.retention; None: the default), which
    never removes the checkpoint just written. Raises ExperimentNotFound. With `attempt` (a
    worker's write): nothing is stored, and None returned, unless that attempt is running the
    job, checked in the same transaction (holds_attempt)."""
    experiment_id = str(experiment_id)
    if not 0 <= step <= MAX_STEP:
        raise ValueError(f"step must be in [0, {MAX_STEP}] (got {step})")
    if attempt is not None and not holds_attempt(session, experiment_id, attempt):
        session.rollback()
        return None
    require_experiment(session, experiment_id)
    view = memoryview(blob)
    inserted = session.execute(
        upsert_insert(session, Checkpoint)
        .values(
            experiment_id=experiment_id,
            step=step,
            size=len(view),
            sha256=hashlib.sha256(view).hexdigest(),
            meta=meta,
            created_at=utcnow(),
        )
        .on_conflict_do_nothing()
        .returning(Checkpoint.step)
    ).first() is not None
    if inserted:
        # One chunk per statement: the writer never holds a second copy of the blob.
        for seq, start in enumerate(range(0, max(len(view), 1), CHECKPOINT_CHUNK_BYTES)):
            session.execute(CheckpointChunk.__table__.insert().values(
                experiment_id=experiment_id, step=step, seq=seq,
                data=bytes(view[start:start + CHECKPOINT_CHUNK_BYTES]),
            ))
    session.commit()
    if inserted:
        apply_retention(session, experiment_id, retention)
    checkpoint = get_checkpoint(session, experiment_id, step)
    assert checkpoint is not None
    return checkpoint


def list_checkpoints(
    session: Session, experiment_id: str, *, after_step: int | None = None,
    limit: int | None = None,
) -> list[Checkpoint]:
    """Checkpoints of an experiment by step, without their bytes: those after `after_step`, at
    most `limit` of them (None: every one)."""
    query = (
        select(Checkpoint)
        .where(Checkpoint.experiment_id == str(experiment_id))
        .order_by(Checkpoint.step)
        .execution_options(populate_existing=True)
    )
    if after_step is not None:
        query = query.where(Checkpoint.step > after_step)
    if limit is not None:
        query = query.limit(limit)
    checkpoints = list(session.scalars(query))
    session.commit()
    return checkpoints


def _find_checkpoint(
    session: Session, experiment_id: str, *, step: int | None
) -> Checkpoint | None:
    query = (
        select(Checkpoint)
        .where(Checkpoint.experiment_id == str(experiment_id))
        .execution_options(populate_existing=True)
    )
    if step is None:
        query = query.order_by(Checkpoint.step.desc()).limit(1)
    else:
        query = query.where(Checkpoint.step == step)
    checkpoint = session.scalars(query).first()
    session.commit()
    return checkpoint


def get_checkpoint(session: Session, experiment_id: str, step: int) -> Checkpoint | None:
    """One checkpoint's row (step, size, sha256, meta), or None. Reads none of its bytes."""
    return _find_checkpoint(session, experiment_id, step=step)


def _chunk(session: Session, checkpoint: Checkpoint, seq: int) -> bytes | None:
    """Chunk seq of a stored checkpoint (None: there is none), in a transaction of its own."""
    data = session.scalar(
        select(CheckpointChunk.data).where(
            CheckpointChunk.experiment_id == checkpoint.experiment_id,
            CheckpointChunk.step == checkpoint.step,
            CheckpointChunk.seq == seq,
        )
    )
    session.commit()
    return data


def checkpoint_chunks(session: Session, checkpoint: Checkpoint) -> Iterator[bytes]:
    """The stored bytes of a checkpoint, unchecked, one chunk per query: whatever the size,
    one chunk in memory at a time, and no transaction held open between chunks."""
    seq = 0
    while True:
        data = _chunk(session, checkpoint, seq)
        if data is None:
            return
        yield bytes(data)
        seq += 1


def read_checkpoint(session: Session, checkpoint: Checkpoint) -> bytes:
    """The stored bytes of a checkpoint, reassembled and unchecked (load_checkpoint_verified
    checks them)."""
    return b"".join(checkpoint_chunks(session, checkpoint))


def _scan(session: Session, checkpoint: Checkpoint, keep: bool) -> tuple[str, int, bytes, bytes]:
    """(sha256 hex, byte count, head: the length prefix and the safetensors header, the whole
    bytes when `keep`, else b"") of the stored chunks, read one at a time."""
    digest, size, head, parts = hashlib.sha256(), 0, bytearray(), []
    wanted = 8  # the length prefix, then the header it announces (capped)
    for chunk in checkpoint_chunks(session, checkpoint):
        while len(head) < wanted and size + len(chunk) > len(head):
            head += chunk[len(head) - size : wanted - size]
            wanted = min(header_length(head), MAX_HEADER_BYTES + 8)
        digest.update(chunk)
        size += len(chunk)
        if keep:
            parts.append(chunk)
    return digest.hexdigest(), size, bytes(head), b"".join(parts)


def checkpoint_intact(session: Session, checkpoint: Checkpoint) -> bool:
    """Whether the stored bytes still hash to the sha256 recorded when they were written."""
    sha256, _, _, _ = _scan(session, checkpoint, keep=False)
    return hmac.compare_digest(sha256, checkpoint.sha256)


def _verify(session: Session, checkpoint: Checkpoint, keep: bool) -> bytes:
    return _verify_head(session, checkpoint, keep)[1]


def _verify_head(session: Session, checkpoint: Checkpoint, keep: bool) -> tuple[bytes, bytes]:
    """(head: the length prefix and header, the bytes when `keep`) after the checks."""
    sha256, size, head, blob = _scan(session, checkpoint, keep)
    if not hmac.compare_digest(sha256, checkpoint.sha256):
        raise CheckpointCorrupt(
            checkpoint,
            f"its {size} bytes have sha256 {sha256}, but {checkpoint.sha256} was stored when it "
            "was written",
        )
    if MAX_HEADER_BYTES + 8 < header_length(head) <= size:
        raise CheckpointCorrupt(
            checkpoint, f"not a checkpoint: its safetensors header claims "
            f"{header_length(head) - 8} bytes, more than the {MAX_HEADER_BYTES} allowed",
        )
    try:
        check_checkpoint(head, size)
    except ValueError as exc:
        raise CheckpointCorrupt(checkpoint, str(exc)) from None
    return head, blob


def verified_checkpoint_head(
    session: Session, experiment_id: str, step: int
) -> tuple[Checkpoint, bytes] | None:
    """The checkpoint at `step` and its head (the 8-byte length and the safetensors header),
    after its bytes were streamed a chunk at a time and checked as verified_checkpoint does;
    None when there is none. With read_checkpoint_range, a reader takes only the tensors (or
    the parts of them) it needs: the API's export of one ensemble member never holds the
    whole checkpoint. Raises CheckpointCorrupt."""
    checkpoint = _find_checkpoint(session, experiment_id, step=step)
    if checkpoint is None:
        return None
    return checkpoint, _verify_head(session, checkpoint, keep=False)[0]


def read_checkpoint_range(session: Session, checkpoint: Checkpoint, start: int, end: int) -> bytes:
    """Bytes [start, end) of a stored checkpoint, reading only the chunks that hold them."""
    out = bytearray()
    if end <= start:
        return bytes(out)
    for seq in range(start // CHECKPOINT_CHUNK_BYTES, (end - 1) // CHECKPOINT_CHUNK_BYTES + 1):
        data = _chunk(session, checkpoint, seq)
        if data is None:
            raise CheckpointCorrupt(checkpoint, f"chunk {seq} is missing")
        base = seq * CHECKPOINT_CHUNK_BYTES
        out += memoryview(data)[max(start - base, 0) : min(end - base, len(data))]
    if len(out) != end - start:
        raise CheckpointCorrupt(checkpoint, f"bytes {start}..{end} are past its end")
    return bytes(out)


def verified_checkpoint(
    session: Session, experiment_id: str, step: int | None = None
) -> Checkpoint | None:
    """The checkpoint at `step` (None: the latest), after its bytes were read a chunk at a time
    and checked: their sha256, and their layout (a groklab safetensors checkpoint, never a
    pickle); None when there is no such checkpoint. Raises CheckpointCorrupt saying which check
    failed. The bytes are not kept: checkpoint_chunks streams them."""
    checkpoint = _find_checkpoint(session, experiment_id, step=step)
    if checkpoint is not None:
        _verify(session, checkpoint, keep=False)
    return checkpoint


def load_checkpoint_verified(
    session: Session, experiment_id: str, step: int | None = None
) -> bytes | None:
    """The bytes of the checkpoint at `step` (None: the latest, what a resumed job loads),
    checked against their sha256; None when there is no such checkpoint. Raises
    CheckpointCorrupt, never returning bytes that changed since they were written."""
    checkpoint = _find_checkpoint(session, experiment_id, step=step)
    return None if checkpoint is None else _verify(session, checkpoint, keep=True)


def owner_checkpoint_bytes(session: Session, owner: str) -> int:
    """The bytes of every stored checkpoint of an owner's experiments (one aggregate query), in
    the caller's transaction (the quota's, see usage.owner_lock)."""
    total = session.scalar(
        select(func.coalesce(func.sum(Checkpoint.size), 0))
        .join(Experiment, Experiment.id == Checkpoint.experiment_id)
        .where(Experiment.owner == owner)
    )
    return int(total or 0)

