"""Atomic, checksummed JSON checkpoints of the ICM search (never pickle).

File layout: {"format": 1, "run_key": str, "sha256": hex of `payload`, "payload": JSON text}.
The payload is kept as text so the checksum covers exactly the bytes that are parsed.
Floats survive the round trip exactly (JSON uses the shortest repr that reads back the same).
Each save keeps the checkpoint it replaces as `<name>.prev`, so a damaged file still leaves the
state one checkpoint earlier to resume from.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from contextlib import suppress
from pathlib import Path
from typing import Any

FORMAT = 1


class CorruptCheckpoint(Exception):
    """The file exists but cannot be trusted (truncated, bad checksum, wrong layout)."""


class CheckpointMismatch(ValueError):
    """A valid checkpoint that belongs to another run."""


def previous_path(path: Path) -> Path:
    """Where save_checkpoint keeps the checkpoint before the latest one."""
    return Path(path).with_name(Path(path).name + ".prev")


def save_checkpoint(path: Path, run_key: str, payload: dict[str, Any]) -> None:
    """Write to a temporary file in the same directory, fsync, then os.replace: never half-written.

    The file it replaces becomes previous_path(path) first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=False)
    document = {"format": FORMAT, "run_key": run_key, "sha256": _sha256(text), "payload": text}
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(document, f)
            f.flush()
            os.fsync(f.fileno())
        with suppress(FileNotFoundError):  # first save, or a concurrent saver moved it already
            os.replace(path, previous_path(path))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    """Make the renames durable (a crash right after a save keeps the new file)."""
    with suppress(OSError):  # some filesystems / platforms do not allow opening a directory
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def load_checkpoint(path: Path, run_key: str) -> dict[str, Any] | None:
    """The payload, or None if there is no file. Raises CorruptCheckpoint or CheckpointMismatch."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        text = document["payload"]
        if document.get("format") != FORMAT or not isinstance(text, str):
            raise CorruptCheckpoint(f"{path}: unknown checkpoint format {document.get('format')!r}")
        if _sha256(text) != document["sha256"]:
            raise CorruptCheckpoint(f"{path}: checksum mismatch (file damaged or edited)")
        payload = json.loads(text)
    except CorruptCheckpoint:
        raise
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise CorruptCheckpoint(f"{path}: unreadable checkpoint ({type(exc).__name__}: {exc})") from exc
    if document["run_key"] != run_key:
        raise CheckpointMismatch(
            f"checkpoint {path} belongs to run key {document['run_key']!r}, not {run_key!r}; "
            "use another checkpoint path or delete the file"
        )
    return payload


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
