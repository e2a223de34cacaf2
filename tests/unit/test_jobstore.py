"""What only the local job store does: a damaged state file, a lost file list
(the contract both stores keep is tests/gateway/test_jobstores.py)."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest

from gateway.localjobs import LocalJobStore
from imagesearch.errors import ServiceError
from tests.gateway.test_jobstores import new_job


def test_a_damaged_state_file_becomes_a_failed_job(tmp_path: Path) -> None:
    store = LocalJobStore(tmp_path, max_errors_kept=5)
    new_job(store, "c", 3)
    (tmp_path / "c.json").write_text("{not json")
    job = LocalJobStore(tmp_path, max_errors_kept=5).get("c")
    assert job.terminal and "damaged" in job.message
    assert (tmp_path / "c.damaged").exists()


def test_an_unreadable_file_list_is_data_loss(tmp_path: Path) -> None:
    store = LocalJobStore(tmp_path, max_errors_kept=5)
    new_job(store, "d", 3)
    (tmp_path / "d.chunks").unlink()
    with pytest.raises(ServiceError) as err:
        LocalJobStore(tmp_path, max_errors_kept=5).chunk_files("d", 0)
    assert (
        err.value.code == grpc.StatusCode.DATA_LOSS and "start the job again" in err.value.message
    )


def test_a_job_saved_by_the_previous_version_is_read_and_continued(tmp_path: Path) -> None:
    # Before the streamed walk: the whole list in <id>.files, no walk fields,
    # and the lease fields of that version.
    old = {
        "job_id": "old",
        "collection": "photos",
        "folder": "/data",
        "recursive": True,
        "state": "running",
        "total": 10,
        "done": 4,
        "indexed": 4,
        "batch_size": 4,
        "batch_cursor": 1,
        "runner": "host/1/abc",
        "heartbeat_ms": 1,
    }
    (tmp_path / "old.json").write_text(json.dumps(old))
    lines = [json.dumps({"format": "imagesearch-job-files", "version": 1})]
    lines += [json.dumps(f"/data/{n}.jpg") for n in range(10)]
    (tmp_path / "old.files").write_text("\n".join(lines) + "\n")
    store = LocalJobStore(tmp_path, max_errors_kept=5)
    job = store.get("old")
    assert (job.walk_complete, job.walked_chunks, job.left()) == (True, 3, [1, 2])
    assert store.chunk_files("old", 2) == ["/data/8.jpg", "/data/9.jpg"]


def test_a_record_is_saved_under_the_names_older_gateways_read(tmp_path: Path) -> None:
    # A NATS job store shared by gateways of two versions during an upgrade:
    # what this one saves, the previous one loads, and the other way round.
    store = LocalJobStore(tmp_path, max_errors_kept=5)
    new_job(store, "n", 10)
    saved = json.loads((tmp_path / "n.json").read_text())
    assert {"batch_size", "batch_cursor", "batches_ahead", "walk_done"} <= saved.keys()
    assert not {"chunk_size", "chunk_cursor", "chunks_ahead", "walk_complete"} & saved.keys()
    job = store.get("n")
    assert job.chunk_size == saved["batch_size"] and job.walk_complete == saved["walk_done"]
