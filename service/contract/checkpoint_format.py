"""The layout of a groklab checkpoint, read without torch (the API checks what it serves; the
engine checks what it loads; worker/engine/checkpoint.py writes and loads the tensors).

A checkpoint is exactly the safetensors layout: an 8-byte little-endian header length, a JSON
header (tensor names, dtypes, shapes, offsets and "__metadata__"), then raw tensor bytes. Only
this layout is ever accepted: a pickle (torch.save) is refused by its first 8 bytes, long before
anything could run.
"""
from __future__ import annotations

import json
import struct
from typing import Any

CHECKPOINT_FORMAT = "groklab-checkpoint/1"


def read_header(blob: bytes, size: int | None = None) -> tuple[dict[str, Any], int]:
    """(the safetensors JSON header, the offset where the tensor bytes start); ValueError for
    anything that is not a safetensors blob. `blob` may be only the head of a checkpoint of
    `size` bytes (the header's length prefix and the header), as a streamed one is checked."""
    size = len(blob) if size is None else size
    if size < 8 or len(blob) < 8:
        raise ValueError("not a checkpoint: fewer than 8 bytes")
    (header_len,) = struct.unpack("<Q", blob[:8])
    if header_len > size - 8 or header_len > len(blob) - 8:
        raise ValueError("not a checkpoint: the safetensors header is longer than the blob")
    try:
        header = json.loads(blob[8 : 8 + header_len])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not a checkpoint: unreadable safetensors header ({exc})") from None
    if not isinstance(header, dict) or not isinstance(header.get("__metadata__") or {}, dict):
        raise ValueError(
            "not a checkpoint: the safetensors header must be a JSON object whose __metadata__ "
            "is an object of strings"
        )
    return header, 8 + header_len


def read_metadata(blob: bytes) -> dict[str, str]:
    """The "__metadata__" of a safetensors blob, read from its JSON header without the tensors."""
    header, _ = read_header(blob)
    return dict(header.get("__metadata__") or {})


def header_length(head: bytes) -> int:
    """How many bytes of a checkpoint its layout check needs: the 8-byte length and the header
    (8 when the head is shorter than 8 bytes)."""
    return 8 + struct.unpack("<Q", head[:8])[0] if len(head) >= 8 else 8


def check_checkpoint(blob: bytes, size: int | None = None) -> dict[str, str]:
    """The metadata of a groklab checkpoint whose layout holds together: safetensors, our
    format, every tensor's data_offsets inside the blob. ValueError saying what is wrong.
    `blob` may be the head of a checkpoint of `size` bytes (read_header)."""
    size = len(blob) if size is None else size
    header, data_start = read_header(blob, size)
    metadata = dict(header.get("__metadata__") or {})
    if metadata.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"not a groklab checkpoint: format is {metadata.get('format')!r}, "
            f"expected {CHECKPOINT_FORMAT!r}"
        )
    data_len = size - data_start
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (
            isinstance(offsets, list)
            and len(offsets) == 2
            and all(type(o) is int for o in offsets)
            and 0 <= offsets[0] <= offsets[1] <= data_len
        ):
            raise ValueError(
                f"not a checkpoint: tensor {name!r} has data_offsets {offsets!r}; each must be "
                f"[begin, end] within the {data_len} bytes of tensor data"
            )
    return metadata
