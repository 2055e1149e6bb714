"""Where results and checkpoints go (tasks/storage.py): the checkout, a shared directory, or a URL.
The URL case uses fsspec's in-memory filesystem (memory://) in place of an object store."""

from __future__ import annotations

from pathlib import Path

import pytest


def test_default_local_and_shared_directory(monkeypatch, tmp_path):
    from tasks import storage

    monkeypatch.delenv("PERSONA_ICM_STORAGE", raising=False)
    monkeypatch.delenv("PERSONA_ICM_RESULTS", raising=False)
    assert storage.result_storage() == storage.ROOT / "warehouse" / "results"
    assert storage.checkpoint_dir(tmp_path / "wh" / "x.duckdb") == tmp_path / "wh" / "checkpoints"
    monkeypatch.setenv("PERSONA_ICM_STORAGE", str(tmp_path / "shared"))
    assert storage.result_storage() == tmp_path / "shared" / "results"
    assert storage.checkpoint_dir(tmp_path / "wh" / "x.duckdb") == tmp_path / "shared" / "checkpoints"
    monkeypatch.setenv("PERSONA_ICM_STORAGE", f"file://{tmp_path}/mount")
    assert storage.checkpoint_dir(Path("anything")) == tmp_path / "mount" / "checkpoints"


def test_checkpoints_are_mirrored_to_a_url_and_fetched_back_elsewhere(monkeypatch, tmp_path):
    """Machine A saves twice and pushes; machine B (another local directory) fetches both files."""
    from persona_icm.icm.checkpoint import load_checkpoint, previous_path, save_checkpoint
    from tasks.storage import CheckpointMirror

    monkeypatch.setenv("PERSONA_ICM_STORAGE", "memory://bucket/persona-icm")
    on_a = tmp_path / "a" / "key.ckpt"
    mirror = CheckpointMirror(on_a)
    mirror.fetch()  # nothing there yet
    assert not on_a.exists()
    save_checkpoint(on_a, "key", {"iteration": 2})
    mirror.push_if_saved()
    save_checkpoint(on_a, "key", {"iteration": 4})
    mirror.push_if_saved()
    mirror.push_if_saved()  # unchanged: nothing to do

    on_b = tmp_path / "b" / "key.ckpt"
    CheckpointMirror(on_b).fetch()
    assert load_checkpoint(on_b, "key") == {"iteration": 4}
    assert load_checkpoint(previous_path(on_b), "key") == {"iteration": 2}
    import fsspec

    assert fsspec.filesystem("memory").exists("/bucket/persona-icm/checkpoints/key.ckpt")


@pytest.mark.slow
def test_url_storage_persists_results_through_a_saved_block(harness, monkeypatch):
    from prefect.filesystems import RemoteFileSystem

    from tasks.storage import result_storage

    monkeypatch.setenv("PERSONA_ICM_STORAGE", "memory://bucket/run-results")
    slug = result_storage()
    assert slug.startswith("remote-file-system/persona-icm-results-")
    block = RemoteFileSystem.load(slug.split("/", 1)[1])
    assert block.basepath == "memory://bucket/run-results/results"
    assert result_storage() == slug  # saved once, found again
