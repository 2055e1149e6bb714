"""Where task results and ICM checkpoints live: this checkout by default, or a location every
worker shares, so that a country run on another machine hands its result back and a retried
search resumes from its checkpoint wherever it runs.

PERSONA_ICM_STORAGE (the same value in every worker's environment) is either
- a directory, e.g. a shared mount: results in `<dir>/results`, checkpoints in `<dir>/checkpoints`;
- an fsspec URL, e.g. `s3://bucket/persona-icm`: results through a saved Prefect
  RemoteFileSystem block (so the parent can read a child's result by block id), checkpoints
  written locally and mirrored to `<url>/checkpoints` after each save, fetched before a search.
Unset: results in `warehouse/results` of this checkout (PERSONA_ICM_RESULTS moves them) and
checkpoints in `checkpoints/` next to the warehouse file: one machine.

The flows and tasks whose results are large (searches, evaluations, countries, batches, the chat
baseline) set `cache_result_in_memory=False`: Prefect would otherwise keep every result it wrote or
read in its process's memory for the whole run (up to 1,000 of them), so a parent that stores each
country as it comes back would still hold all of them.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def storage_location() -> str | None:
    return os.environ.get("PERSONA_ICM_STORAGE") or None


def is_url(location: str) -> bool:
    return "://" in location and not location.startswith("file://")


def _local(location: str) -> Path:
    return Path(location.removeprefix("file://")).expanduser().resolve()


def result_storage():
    """What Prefect persists task and flow results to (a Path, or a saved block's slug)."""
    location = storage_location()
    if location is None:
        return Path(os.environ.get("PERSONA_ICM_RESULTS", ROOT / "warehouse" / "results"))
    if not is_url(location):
        return _local(location) / "results"
    return remote_results_block(location.rstrip("/") + "/results")


def remote_results_block(url: str) -> str:
    """Slug of a RemoteFileSystem block at `url`, saved once under a name derived from the URL."""
    from prefect.filesystems import RemoteFileSystem

    name = "persona-icm-results-" + hashlib.sha256(url.encode()).hexdigest()[:10]
    try:
        RemoteFileSystem.load(name)
    except ValueError:  # no such block yet
        RemoteFileSystem(basepath=url).save(name, overwrite=True)
    return f"remote-file-system/{name}"


def checkpoint_dir(warehouse_path: Path) -> Path:
    """The local directory the search writes its checkpoints to."""
    location = storage_location()
    if location is None:
        return Path(warehouse_path).resolve().parent / "checkpoints"
    if not is_url(location):
        return _local(location) / "checkpoints"
    digest = hashlib.sha256(location.encode()).hexdigest()[:10]
    return Path(tempfile.gettempdir()) / f"persona-icm-checkpoints-{digest}"


class CheckpointMirror:
    """For a URL storage: copies `<key>.ckpt` (and `.prev`) from the URL before a search and back
    after every save. For a local storage it does nothing."""

    def __init__(self, checkpoint_path: Path):
        self.path = Path(checkpoint_path)
        location = storage_location()
        self.remote = None
        if location is not None and is_url(location):
            import fsspec

            self.fs, root = fsspec.core.url_to_fs(location.rstrip("/") + "/checkpoints")
            self.remote = f"{root}/{self.path.name}"
        self.last_seen: float | None = None

    def fetch(self) -> None:
        if self.remote is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for suffix in ("", ".prev"):
            if self.fs.exists(self.remote + suffix):
                self.fs.get(self.remote + suffix, str(self.path) + suffix)
        self.last_seen = self._mtime()

    def push_if_saved(self) -> None:
        """Upload after the search wrote a new checkpoint (cheap to call every iteration)."""
        if self.remote is None:
            return
        mtime = self._mtime()
        if mtime is None or mtime == self.last_seen:
            return
        for suffix in (".prev", ""):
            local = Path(str(self.path) + suffix)
            if local.exists():
                self.fs.put(str(local), self.remote + suffix)
        self.last_seen = mtime

    def _mtime(self) -> float | None:
        return self.path.stat().st_mtime_ns if self.path.exists() else None
