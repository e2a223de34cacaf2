"""What only the local job store does: a damaged state file, a lost file list
(the contract both stores keep is tests/gateway/test_jobstores.py)."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from gateway.jobstore import LocalJobStore
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
    (tmp_path / "d.files").unlink()
    with pytest.raises(ServiceError) as err:
        store.todo("d")
    assert (
        err.value.code == grpc.StatusCode.DATA_LOSS and "start the job again" in err.value.message
    )
