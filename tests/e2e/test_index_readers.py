"""Index readers (INDEX_ROLE=reader) beside one writer, on a real Milvus
server and the local MariaDB: they serve reads, refuse writes, never
reconcile, see the writer's changes within INDEX_READ_STALENESS_S, and keep
searches answering through the gateway while the writer is down."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest

from imagesearch.ids import image_id_from_sha256
from imagesearch.v1 import gateway_pb2, gateway_pb2_grpc, index_pb2, index_pb2_grpc
from tests.conftest import (
    CLOTHING,
    ROOT,
    Server,
    channel,
    clothing_images,
    drop_sql_tables,
    free_port,
    start_gateway,
    start_index,
    start_job,
    unique_prefix,
    wait_job,
    wait_port,
    wait_until,
)

pytestmark = [pytest.mark.mariadb, pytest.mark.milvus_server]
STALENESS_S = 1.0
SLACK_S = 4.0  # a Milvus time tick and a loaded 2-core box on top of the bound


@dataclass
class Backends:
    milvus: str
    database: str
    prefix: str

    def settings(self, **more: object) -> dict[str, object]:
        return {
            "milvus_uri": self.milvus,
            "database_url": self.database,
            "table_prefix": self.prefix,
            "milvus_prefix": self.prefix,
            "read_staleness_s": STALENESS_S,
            **more,
        }


@pytest.fixture
def backends(milvus_server: str, mariadb_url: str) -> Iterator[Backends]:
    prefix = unique_prefix()
    yield Backends(milvus_server, mariadb_url, prefix)
    drop_sql_tables(mariadb_url, prefix)


def search_first(stub: gateway_pb2_grpc.GatewayServiceStub, collection: str, rel: str) -> str:
    hits = stub.Search(
        gateway_pb2.SearchRequest(
            collection=collection, image=(CLOTHING / rel).read_bytes(), top_k=3
        ),
        timeout=60,
    ).hits
    return hits[0].path if hits else ""


def count_on(index: index_pb2_grpc.IndexServiceStub, collection: str) -> int:
    request = index_pb2.IndexServiceCountRequest(collection=collection)
    return index.Count(request, timeout=30).count


def unit(dim: int) -> np.ndarray:
    vector = np.zeros(dim, dtype=np.float32)
    vector[0] = 1.0
    return vector


def item(sha256: bytes, path: str, dim: int) -> index_pb2.UpsertItem:
    return index_pb2.UpsertItem(sha256=sha256, path=path, vector=unit(dim).tobytes())


def code_of(call: Callable[[], object]) -> grpc.StatusCode:
    """The status ``call`` ends with (OK when it answers)."""
    try:
        call()
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def test_readers_serve_refuse_writes_and_see_the_writers_changes(
    embedder: Server, backends: Backends, tmp_path: Path
) -> None:
    writer = start_index(tmp_path / "w", **backends.settings())
    reader = start_index(tmp_path / "r", **backends.settings(role="reader"))
    gateway = start_gateway(tmp_path, embedder.addr, writer.addr, index_read_addr=reader.addr)
    try:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel(gateway.port))
        job = wait_job(stub, start_job(stub, "shared", CLOTHING).job_id)
        assert (job.state, job.indexed) == (gateway_pb2.JOB_STATE_SUCCEEDED, 64)
        direct = index_pb2_grpc.IndexServiceStub(channel(reader.running.port))
        wait_until(lambda: count_on(direct, "shared") == 64, STALENESS_S + SLACK_S)
        # Within the staleness bound the last vectors, stored a moment ago,
        # are in its view: each image first, searched through the reader.
        wait_until(
            lambda: all(
                search_first(stub, "shared", rel) == str(CLOTHING / rel)
                for rel, _ in clothing_images()
            ),
            STALENESS_S + SLACK_S,
        )

        # Every write sent to the reader is refused, naming its role; nothing changes.
        writes = {
            "Upsert": index_pb2.IndexServiceUpsertRequest(
                collection="shared",
                model="m",
                dim=4,
                items=[item(bytes(range(32)), "/x.jpg", 4)],
            ),
            "Delete": index_pb2.IndexServiceDeleteRequest(collection="shared", path_prefix="/"),
            "DropCollection": index_pb2.IndexServiceDropCollectionRequest(collection="shared"),
            "Reconcile": index_pb2.IndexServiceReconcileRequest(collection="shared"),
        }
        for method, request in writes.items():
            with pytest.raises(grpc.RpcError) as err:
                getattr(direct, method)(request, timeout=30)
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION, method
            assert "INDEX_ROLE=reader" in (err.value.details() or ""), method
        assert count_on(direct, "shared") == 64

        # A delete and a drop on the writer reach the reader within the bound.
        pants = str(CLOTHING / "Pants") + "/"
        stub.Delete(gateway_pb2.DeleteRequest(collection="shared", path_prefix=pants), timeout=60)
        started = time.monotonic()
        wait_until(lambda: count_on(direct, "shared") == 56, STALENESS_S + SLACK_S)
        pants_photo = next(rel for rel, _ in clothing_images() if rel.startswith("Pants/"))
        wait_until(
            lambda: not search_first(stub, "shared", pants_photo).startswith(pants),
            STALENESS_S + SLACK_S,
        )
        seen_after = time.monotonic() - started
        stub.DropCollection(gateway_pb2.DropCollectionRequest(collection="shared"), timeout=60)
        wait_until(
            lambda: code_of(lambda: count_on(direct, "shared")) == grpc.StatusCode.NOT_FOUND,
            STALENESS_S + SLACK_S,
        )
        print(f"the reader saw the delete after {seen_after:.2f}s")
    finally:
        gateway.running.stop(1)
        reader.running.stop(1)
        writer.running.stop(1)


def test_only_the_writer_reconciles(backends: Backends, tmp_path: Path) -> None:
    from pymilvus import MilvusClient

    writer = start_index(tmp_path / "w", **backends.settings())
    direct = index_pb2_grpc.IndexServiceStub(channel(writer.running.port))
    direct.Upsert(
        index_pb2.IndexServiceUpsertRequest(
            collection="orphans", model="m", dim=8, items=[item(bytes(32), "/a.jpg", 8)]
        ),
        timeout=60,
    )
    # A vector with no row in SQL: what Reconcile deletes.
    milvus = MilvusClient(uri=backends.milvus)
    name = f"{backends.prefix}orphans"
    milvus.insert(name, [{"id": 424242, "vector": unit(8).tolist()}])
    readers = [
        start_index(tmp_path / f"r{k}", **backends.settings(role="reader")) for k in range(2)
    ]
    try:
        for reader in readers:
            stub = index_pb2_grpc.IndexServiceStub(channel(reader.running.port))
            assert count_on(stub, "orphans") == 1  # serving, beside the writer's lock
        left = milvus.query(name, filter="id == 424242", consistency_level="Strong")
        assert len(left) == 1  # neither reader reconciled at start
        report = direct.Reconcile(
            index_pb2.IndexServiceReconcileRequest(collection="orphans"), timeout=60
        )
        assert report.orphan_vectors_deleted == 1
    finally:
        for reader in readers:
            reader.running.stop(1)
        writer.running.stop(1)
        milvus.close()


@pytest.mark.processes
def test_searches_outlive_the_writer_and_writes_resume_with_it(
    embedder: Server, backends: Backends, tmp_path: Path
) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("INDEX_")}
    env.update({f"INDEX_{k.upper()}": str(v) for k, v in backends.settings().items()})
    env.update(INDEX_HOST="127.0.0.1", INDEX_PORT=str(port))
    log = tmp_path / "writer.log"

    def spawn() -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            return subprocess.Popen(
                [sys.executable, "-m", "index_service"], env=env, cwd=ROOT, stdout=out, stderr=out
            )

    writer = spawn()
    reader = start_index(tmp_path / "r", **backends.settings(role="reader"))
    try:
        assert wait_port("127.0.0.1", port, 120), log.read_text()
        gateway = start_gateway(
            tmp_path,
            embedder.addr,
            f"127.0.0.1:{port}",
            index_read_addr=reader.addr,
            backend_wait_s=1.0,
        )
        try:
            stub = gateway_pb2_grpc.GatewayServiceStub(channel(gateway.port))
            job = wait_job(stub, start_job(stub, "kept", CLOTHING).job_id)
            assert job.indexed == 64
            writer.send_signal(signal.SIGKILL)
            writer.wait(timeout=30)
            count = gateway_pb2.CountRequest(collection="kept")
            wait_until(lambda: stub.Count(count, timeout=30).count == 64, STALENESS_S + SLACK_S)
            rel = clothing_images()[3][0]
            # The reader sees the job's last vectors within its staleness bound.
            wait_until(
                lambda: search_first(stub, "kept", rel) == str(CLOTHING / rel),
                STALENESS_S + SLACK_S,
            )
            with pytest.raises(grpc.RpcError) as err:
                stub.Delete(
                    gateway_pb2.DeleteRequest(collection="kept", path_prefix="/"), timeout=60
                )
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "index writer" in (err.value.details() or "")
            writer = spawn()
            gone = wait_until(lambda: _delete_hats(stub), 120)
            assert gone.deleted == 8
        finally:
            gateway.running.stop(1)
    finally:
        if writer.poll() is None:
            writer.terminate()
            writer.wait(timeout=60)
        reader.running.stop(1)


def _delete_hats(stub: gateway_pb2_grpc.GatewayServiceStub) -> gateway_pb2.DeleteResponse | None:
    try:
        hats = str(CLOTHING / "Hat") + "/"
        return stub.Delete(
            gateway_pb2.DeleteRequest(collection="kept", path_prefix=hats), timeout=60
        )
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.UNAVAILABLE:
            return None
        raise


def test_a_reader_finds_by_id_an_image_stored_a_moment_ago(
    backends: Backends, tmp_path: Path
) -> None:
    """Found by the chaos run: the reader saw the new row in SQL at once but
    not yet its vector (it reads vectors as of its staleness), and a search
    by the id that IndexImages had just answered failed FAILED_PRECONDITION,
    "run Reconcile". It reads that vector as of every write instead."""
    settings = {**backends.settings(), "read_staleness_s": 60.0}
    writer = start_index(tmp_path / "w", **settings)
    reader = start_index(tmp_path / "r", **{**settings, "role": "reader"})
    try:
        new = bytes([7] * 32)
        index_pb2_grpc.IndexServiceStub(channel(writer.running.port)).Upsert(
            index_pb2.IndexServiceUpsertRequest(
                collection="fresh", model="m", dim=8, items=[item(new, "/b.jpg", 8)]
            ),
            timeout=60,
        )
        direct = index_pb2_grpc.IndexServiceStub(channel(reader.running.port))
        reply = direct.Search(
            index_pb2.IndexServiceSearchRequest(
                collection="fresh", image_ids=[image_id_from_sha256(new)], top_k=2
            ),
            timeout=60,
        )
        assert len(reply.results) == 1 and reply.results[0].hits
    finally:
        reader.running.stop(1)
        writer.running.stop(1)


def test_a_reader_works_as_a_read_only_database_user_whose_writes_the_database_refuses(
    embedder: Server, backends: Backends, tmp_path: Path
) -> None:
    """Deployments give the readers a user with only SELECT: compose's
    deploy/mysql/reader-user.sh makes it (run here against MariaDB as the
    mysql image runs it), and the chaos run's. Read-only is enforced by the
    database, not only by INDEX_ROLE: the reader serves with that user; a
    write through the reader's own store code is refused by MariaDB."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from imagesearch.errors import ServiceError
    from index_service.metadata import MetadataStore

    user, password = "imagesearch_reader", uuid.uuid4().hex
    root = create_engine(backends.database)
    database = make_url(backends.database)
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "mysql-root-password").write_text(database.password or "")
    (secrets / "mysql-reader-password").write_text(password + "\n")
    client = shutil.which("mariadb") or shutil.which("mysql")
    assert client, "the MariaDB client is not installed"
    made = subprocess.run(
        ["sh", str(ROOT / "deploy" / "mysql" / "reader-user.sh")],
        env={
            **os.environ,
            "SECRETS_DIR": str(secrets),
            "MYSQL_DATABASE": str(database.database),
            "MYSQL_CLIENT": f"{client} -h{database.host} -P{database.port or 3306} "
            f"-u{database.username}",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert made.returncode == 0, made.stderr
    read_only = database.set(username=user, password=password)
    url = read_only.render_as_string(hide_password=False)
    writer = start_index(tmp_path / "w", **backends.settings())
    reader = start_index(tmp_path / "r", **backends.settings(role="reader", database_url=url))
    gateway = start_gateway(tmp_path, embedder.addr, writer.addr, index_read_addr=reader.addr)
    try:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel(gateway.port))
        job = wait_job(stub, start_job(stub, "ro", CLOTHING / "Hat").job_id)
        assert job.indexed == 8
        direct = index_pb2_grpc.IndexServiceStub(channel(reader.running.port))
        wait_until(lambda: count_on(direct, "ro") == 8, STALENESS_S + SLACK_S)

        store = MetadataStore(url, backends.prefix)  # what the reader runs, with its user
        try:
            with pytest.raises(ServiceError) as err:
                store.drop_collection("ro")
            # MariaDB's own refusal (1142), not our code's, and not an outage.
            assert err.value.code == grpc.StatusCode.PERMISSION_DENIED
            assert "command denied to user" in err.value.message, err.value.message
        finally:
            store.engine.dispose()
        assert count_on(direct, "ro") == 8
    finally:
        gateway.running.stop(1)
        reader.running.stop(1)
        writer.running.stop(1)
        with root.begin() as conn:
            conn.execute(text(f"DROP USER '{user}'@'%'"))
        root.dispose()


def test_a_reader_searches_by_words(backends: Backends, tmp_path: Path) -> None:
    """The text vectors the writer stores (search by words) are a reader's to
    search within its staleness, expanded by their images, as a writer's."""
    writer = start_index(tmp_path / "w", **backends.settings())
    reader = start_index(tmp_path / "r", **{**backends.settings(), "role": "reader"})
    try:
        texts = np.eye(4, dtype=np.float32)
        items = []
        for n in range(4):
            it = item(bytes([n + 1] * 32), f"/w{n}.jpg", 8)
            it.text_vector = texts[n].tobytes()
            items.append(it)
        stored = index_pb2_grpc.IndexServiceStub(channel(writer.running.port)).Upsert(
            index_pb2.IndexServiceUpsertRequest(
                collection="words",
                model="m",
                dim=8,
                items=items,
                text_model="conse/test",
                text_dim=4,
            ),
            timeout=60,
        )
        direct = index_pb2_grpc.IndexServiceStub(channel(reader.running.port))
        query = index_pb2.IndexServiceSearchRequest(
            collection="words", text_vectors=[texts[2].tobytes()], top_k=1, expand=1
        )

        def found() -> bool:
            hits = direct.Search(query, timeout=60).results[0].hits
            return bool(hits) and hits[0].image_id == stored.results[2].image_id

        wait_until(found, STALENESS_S + SLACK_S)
    finally:
        reader.running.stop(1)
        writer.running.stop(1)
