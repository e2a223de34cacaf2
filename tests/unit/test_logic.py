"""The unit tier: pure logic, in-process, no servers (`make test-unit`)."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from gateway.deadline import Deadline
from gateway.jobstore import advance, code_of
from gateway.orchestrator import ImageLimit
from gateway.paths import AllowedRoots
from gateway.servicer import convert
from gateway.settings import GatewaySettings
from gateway.walk import walk_images
from imagesearch import errors, ids
from imagesearch.channels import service_config
from imagesearch.client import ImageSearchError, Job, JobState, Query
from imagesearch.limits import CallLimits
from imagesearch.settings import ServerSettings, SettingsError, load_settings
from imagesearch.v1 import gateway_pb2, index_pb2
from index_service.milvus import score_of
from index_service.plan import Checked, Item
from index_service.settings import IndexSettings

# -- settings -----------------------------------------------------------------


def test_settings_from_env_then_flags() -> None:
    env = {"GATEWAY_EMBED_BATCH": "8", "GATEWAY_ALLOWED_ROOTS": "/a, /b,", "GATEWAY_PORT": "1"}
    s = load_settings(GatewaySettings, "GATEWAY_", ["--port", "2", "--resume-jobs", "no"], env)
    assert (s.embed_batch, s.allowed_roots, s.port, s.resume_jobs) == (8, ("/a", "/b"), 2, False)


@pytest.mark.parametrize(
    "env, names",
    [
        ({"GATEWAY_PORT": "eighty"}, "GATEWAY_PORT"),
        ({"GATEWAY_RESUME_JOBS": "maybe"}, "GATEWAY_RESUME_JOBS"),
        ({"GATEWAY_DEFAULT_TOP_K": "0"}, "GATEWAY_DEFAULT_TOP_K"),
        ({"GATEWAY_BACKEND_WAIT_S": "0"}, "GATEWAY_BACKEND_WAIT_S"),
        ({"GATEWAY_TLS_CERT": "c.pem"}, "GATEWAY_TLS_KEY"),
        ({"GATEWAY_TLS_CLIENT_CA": "ca.pem"}, "GATEWAY_TLS_CERT"),
        ({"GATEWAY_BACKEND_TLS_CERT": "c.pem"}, "GATEWAY_BACKEND_TLS_KEY"),
        (
            {"GATEWAY_BACKEND_TLS_CERT": "c.pem", "GATEWAY_BACKEND_TLS_KEY": "k.pem"},
            "GATEWAY_BACKEND_TLS_CA",
        ),
        ({"GATEWAY_EMBEDDERS": "tirg_css"}, "GATEWAY_EMBEDDERS"),
        ({"GATEWAY_MAX_WATCHERS": "0"}, "GATEWAY_MAX_WATCHERS must be >= 1"),
        ({"GATEWAY_STREAM_IDLE_S": "0"}, "GATEWAY_STREAM_IDLE_S must be > 0"),
        ({"GATEWAY_EMBEDDERS": "a=h:1;a=h:2"}, "GATEWAY_EMBEDDERS names a twice"),
    ],
)
def test_bad_settings_name_the_variable(env: dict[str, str], names: str) -> None:
    with pytest.raises(SettingsError, match=names):
        load_settings(GatewaySettings, "GATEWAY_", None, env)


def test_services_share_the_server_fields_with_their_own_defaults() -> None:
    gateway, index = GatewaySettings(), IndexSettings()
    assert isinstance(gateway, ServerSettings) and isinstance(index, ServerSettings)
    assert (gateway.port, index.port) == (50051, 50053)
    assert (gateway.max_message_mb, index.max_message_mb) == (4, 128)
    assert gateway.server_options() == {
        "host": "localhost",  # loopback unless told otherwise
        "port": 50051,
        "limits": CallLimits(
            prefix="GATEWAY_",
            threads=32,
            calls=128,
            uploads=16,
            watchers=16,
            reflection=8,
            idle_s=60.0,
            per_connection=100,
            open_rpcs=1000,
        ),
        "max_message_bytes": 4 * 1024 * 1024,
        "tls": None,
        "health_port": 0,
        "reflection": True,
    }


# -- ids and scores -------------------------------------------------------------


def test_image_id_is_the_first_8_bytes_of_sha256_signed() -> None:
    data = b"an image"
    digest = hashlib.sha256(data).digest()
    assert ids.image_id(data) == int.from_bytes(digest[:8], "big", signed=True)
    assert ids.image_id(b"\x00") != ids.image_id(b"\x01")
    with pytest.raises(ValueError, match="32 bytes"):
        ids.image_id_from_sha256(digest[:16])


@pytest.mark.parametrize(
    "metric, raw, distance, score",
    [
        ("IP", 1.0, 0.0, 1.0),
        ("IP", -0.5, 1.5, 0.0),
        ("COSINE", 0.25, 0.75, 0.25),
        ("L2", 0.0, 0.0, 1.0),
        ("L2", 1.0, 1.0, 0.5),
        ("L2", 4.0, 4.0, 0.0),
    ],
)
def test_score_mapping(metric: str, raw: float, distance: float, score: float) -> None:
    assert score_of(metric, raw) == pytest.approx((distance, score))


# -- jobs ---------------------------------------------------------------------


def test_job_cursor_advances_over_batches_done_out_of_order() -> None:
    cursor = 0
    ahead: list[int] = []
    for batch, want in [(2, (0, [2])), (1, (0, [1, 2])), (0, (3, [])), (4, (3, [4])), (3, (5, []))]:
        cursor, ahead = advance(cursor, ahead, batch)
        assert (cursor, ahead) == want


def test_job_error_codes_read_by_name_and_old_numbers() -> None:
    assert code_of("RESOURCE_EXHAUSTED") == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert code_of(5) == grpc.StatusCode.NOT_FOUND
    assert code_of("7") == grpc.StatusCode.PERMISSION_DENIED


# -- limits, deadlines, messages ---------------------------------------------------


def test_image_limit_names_the_setting() -> None:
    limit = ImageLimit(100)
    limit.check("ok.jpg", 100)
    with pytest.raises(errors.ServiceError) as err:
        limit.check("big.jpg", 101)
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "big.jpg" in err.value.message and "GATEWAY_MAX_IMAGE_MB" in err.value.message


def test_deadline_caps_each_downstream_call() -> None:
    assert Deadline.unbounded().timeout(30) == 30
    soon = Deadline.after(2.0)
    assert 0 < soon.timeout(30) <= 2.0  # the deadline's, not the call's 30 s
    assert soon.timeout(0.5) == 0.5
    past = Deadline(time.monotonic() - 1)
    assert past.remaining() == 0.0 and past.timeout(30) == 0.0


def test_gateway_and_index_twins_convert_field_for_field() -> None:
    public = gateway_pb2.DeleteRequest(
        collection="c", image_ids=[1, -2], paths=["/a"], path_prefix="/p/"
    )
    internal = convert(public, index_pb2.IndexServiceDeleteRequest)
    assert (internal.collection, list(internal.image_ids), list(internal.paths)) == (
        "c",
        [1, -2],
        ["/a"],
    )
    assert internal.path_prefix == "/p/"
    back = convert(
        index_pb2.IndexServiceCountResponse(count=3, pending=1), gateway_pb2.CountResponse
    )
    assert (back.count, back.pending) == (3, 1)


def test_client_retries_only_idempotent_calls() -> None:
    import json

    from imagesearch.client import SERVICE
    from imagesearch.rpcs import idempotent_methods

    config = json.loads(service_config([], methods=[(SERVICE, m) for m in idempotent_methods()]))
    names = {(n["service"], n["method"]) for n in config["methodConfig"][0]["name"]}
    assert (SERVICE, "Search") in names and (SERVICE, "Count") in names
    assert (SERVICE, "GetImage") in names and (SERVICE, "GetThumbnail") in names
    assert (SERVICE, "StartIndexJob") not in names and (SERVICE, "IndexImages") not in names
    assert "methodConfig" not in json.loads(service_config([]))


def test_embedders_by_model_and_the_up_command_that_sets_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from imgsearch.up import extra_embedders

    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)  # the user sets none

    settings = load_settings(
        GatewaySettings,
        "GATEWAY_",
        None,
        {"GATEWAY_EMBEDDERS": " tirg_css=ipv4:127.0.0.1:1,127.0.0.1:2 ; resnet50=dns:///e:3;"},
    )
    assert settings.embedder_routes == {
        "tirg_css": "ipv4:127.0.0.1:1,127.0.0.1:2",
        "resnet50": "dns:///e:3",
    }
    env = {"EMBEDDER_MODEL": "mobilenet_v2", "EMBEDDER_WEIGHTS": "bundled", "EMBEDDER_HOST": "h"}
    extra = extra_embedders(["tirg_css"], env, "127.0.0.1", 50052)
    assert env["GATEWAY_EMBEDDERS"] == "tirg_css=127.0.0.1:50062"
    (svc,) = extra
    assert (svc.name, svc.port, svc.env["EMBEDDER_PORT"]) == ("embedder-tirg_css", 50062, "50062")
    assert svc.env["EMBEDDER_MODEL"] == "tirg_css" and svc.env["EMBEDDER_HOST"] == "h"
    assert "EMBEDDER_WEIGHTS" not in svc.env  # the default model's weights are not its own
    assert env["EMBEDDER_MODEL"] == "mobilenet_v2"
    assert svc.env["MALLOC_MMAP_THRESHOLD_"] == str(32 * 1024 * 1024)  # as the main embedder's


def test_embedders_keep_larger_freed_buffers_than_the_other_services() -> None:
    from imgsearch.up import embedder_environment, environment

    env = environment(Path("/d"), "127.0.0.1", "127.0.0.1", 1, 2, 3, None)
    assert env["MALLOC_MMAP_THRESHOLD_"] == "131072"  # gateway, index, web
    embedder = embedder_environment(env, user={})
    assert embedder["MALLOC_MMAP_THRESHOLD_"] == "33554432"
    assert {k: v for k, v in embedder.items() if k != "MALLOC_MMAP_THRESHOLD_"} == {
        k: v for k, v in env.items() if k != "MALLOC_MMAP_THRESHOLD_"
    }
    mine = {**env, "MALLOC_MMAP_THRESHOLD_": "65536"}  # the user's own value stands
    assert embedder_environment(mine, user={"MALLOC_MMAP_THRESHOLD_": "65536"}) == mine


def test_client_query_needs_exactly_one_kind() -> None:
    assert Query(path="/p", text="make it red").to_proto().text == "make it red"
    assert Query(image_id=5).to_proto().WhichOneof("query") == "image_id"
    with pytest.raises(ValueError):
        Query().to_proto()
    with pytest.raises(ValueError):
        Query(image=b"x", path="/p").to_proto()
    assert JobState(gateway_pb2.JOB_STATE_CANCELED).terminal
    assert not JobState(gateway_pb2.JOB_STATE_RUNNING).terminal
    assert ImageSearchError(grpc.StatusCode.UNAVAILABLE, "down").retryable


# -- paths --------------------------------------------------------------------


def test_allowed_roots_refuse_escapes(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.jpg").write_bytes(b"x")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "b.jpg").write_bytes(b"y")
    os.symlink(outside / "b.jpg", root / "sub" / "link.jpg")
    roots = AllowedRoots([root])
    assert roots.resolve(str(root / "sub" / ".." / "sub" / "a.jpg")) == root / "sub" / "a.jpg"
    for bad in [str(root / ".." / "outside" / "b.jpg"), str(root / "sub" / "link.jpg"), "/etc"]:
        with pytest.raises(errors.ServiceError) as err:
            roots.resolve(bad)
        assert err.value.code == grpc.StatusCode.PERMISSION_DENIED
    for bad in ["", "a\x00b"]:
        with pytest.raises(errors.ServiceError) as err:
            roots.resolve(bad)
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [Path(p).name for p in walk_images(root, True, roots)] == ["a.jpg"]


def test_byte_budget_waits_for_room_and_lets_a_giant_through_alone() -> None:
    import threading

    from gateway.budget import ByteBudget

    budget = ByteBudget(100)
    first = budget.acquire(60)
    entered = threading.Event()

    def second() -> None:
        taken = budget.acquire(60)  # does not fit beside the first
        entered.set()
        budget.release(taken)

    t = threading.Thread(target=second)
    t.start()
    assert not entered.wait(0.3)
    budget.release(first)
    assert entered.wait(5)
    t.join()
    assert budget.acquire(10_000) == 100  # larger than the budget: all of it, alone
    assert budget.peak <= 100


def test_job_files_are_grouped_by_bytes(tmp_path: Path) -> None:
    from imagesearch.batching import byte_groups

    sizes = [40, 40, 40, 150, 10]
    paths = []
    for n, size in enumerate(sizes):
        path = tmp_path / f"{n}.jpg"
        path.write_bytes(b"x" * size)
        paths.append(str(path))
    groups = [(len(g), s) for g, s in byte_groups([*paths, str(tmp_path / "gone.jpg")], 100)]
    assert groups == [(2, 80), (1, 40), (1, 150), (2, 10)]
    by_count = [len(g) for g, _ in byte_groups(paths, 10_000, max_items=2)]
    assert by_count == [2, 2, 1]


def test_stream_budgets_share_the_gateway_total() -> None:
    from gateway.budget import ByteBudget

    total = ByteBudget(100)
    a, b = ByteBudget(80, total), ByteBudget(80, total)
    taken = a.acquire(70)
    assert total.held == 70
    import threading

    got = threading.Event()

    def second() -> None:
        b.acquire(50)
        got.set()

    threading.Thread(target=second).start()
    assert not got.wait(0.3)  # b's own budget has room, the gateway's has not
    a.release(taken)
    assert got.wait(5) and total.held == 50


def test_milvus_and_mysql_tls_settings_reach_their_clients() -> None:
    """What pymilvus and PyMySQL get for each TLS setting (a live MySQL test
    covers the refusal; no Milvus with TLS runs here)."""
    plain = IndexSettings(milvus_uri="http://milvus:19530")
    assert plain.milvus_tls() == {} and plain.database_tls() is None
    one_way = IndexSettings(milvus_tls_ca="ca.pem", milvus_tls_server_name="milvus.local")
    assert one_way.milvus_tls() == {
        "secure": True,
        "server_pem_path": "ca.pem",
        "server_name": "milvus.local",
    }
    mutual = IndexSettings(milvus_tls_ca="ca.pem", milvus_tls_cert="c.pem", milvus_tls_key="k.pem")
    assert mutual.milvus_tls() == {
        "secure": True,
        "client_pem_path": "c.pem",
        "client_key_path": "k.pem",
        "ca_pem_path": "ca.pem",
    }
    mysql = IndexSettings(
        database_url="mysql+pymysql://u@db/x", database_tls_ca="ca.pem",
        database_tls_cert="c.pem", database_tls_key="k.pem",
    )  # fmt: skip
    assert mysql.database_tls() == {"ca": "ca.pem", "cert": "c.pem", "key": "k.pem"}
    for bad in (
        {"INDEX_MILVUS_TLS_CERT": "c.pem", "INDEX_MILVUS_TLS_KEY": "k.pem"},
        {"INDEX_DATABASE_TLS_CA": "ca.pem"},  # with the SQLite default
    ):
        with pytest.raises(SettingsError):
            load_settings(IndexSettings, "INDEX_", None, bad)


def test_every_gateway_method_is_in_the_rpc_table() -> None:
    """An RPC added to GatewayService without its facts in imagesearch.rpcs
    fails here (and is refused to every token until it gets a role)."""
    from gateway.auth import required_role
    from imagesearch.rpcs import GATEWAY_RPCS, SERVICE, Access, Role

    methods = set(SERVICE.methods_by_name)
    assert methods - set(GATEWAY_RPCS) == set(), "describe these methods in imagesearch.rpcs"
    assert set(GATEWAY_RPCS) - methods == set()
    # What only reads is safe to repeat and needs no more than the read role.
    for name, rpc in GATEWAY_RPCS.items():
        if rpc.access is Access.READ:
            assert rpc.idempotent and rpc.role is Role.READ, name
    assert not GATEWAY_RPCS["StartIndexJob"].idempotent
    assert required_role(f"/{SERVICE.full_name}/Search") is Role.READ
    assert required_role(f"/{SERVICE.full_name}/Reconcile") is Role.ADMIN
    assert required_role(f"/{SERVICE.full_name}/NoSuchMethod") is None
    assert required_role("/imagesearch.v1.IndexService/DropCollection") is None


# -- search queries -------------------------------------------------------------


def test_search_queries_come_single_first_then_the_list() -> None:
    from gateway.servicer import Query as Parsed
    from gateway.servicer import parse_queries

    request = gateway_pb2.SearchRequest(
        image=b"jpeg",
        text="make it blue",
        queries=[gateway_pb2.Query(path="/a.jpg"), gateway_pb2.Query(image_id=7)],
    )
    assert parse_queries(request, 8) == [
        Parsed("image", b"jpeg", "make it blue"),
        Parsed("path", "/a.jpg", ""),
        Parsed("image_id", 7, ""),
    ]
    # A text alone is a search by words, in `queries` too.
    words = gateway_pb2.SearchRequest(text="red shoes", queries=[gateway_pb2.Query(text="hat")])
    assert parse_queries(words, 8) == [
        Parsed("words", "red shoes", "red shoes"),
        Parsed("words", "hat", "hat"),
    ]


@pytest.mark.parametrize(
    "request_, words",
    [
        (gateway_pb2.SearchRequest(), "needs an image, image_id, path or text"),
        (
            gateway_pb2.SearchRequest(text="blue", queries=[gateway_pb2.Query(image_id=1)]),
            "by words or by images, not both",
        ),
        (gateway_pb2.SearchRequest(text="blue", any_rotation=True), "for image queries"),
        (gateway_pb2.SearchRequest(queries=[gateway_pb2.Query()]), "has no image"),
        (gateway_pb2.SearchRequest(queries=[gateway_pb2.Query(image_id=1)] * 3), "limit 2"),
        (gateway_pb2.SearchRequest(image=b"x", text="blue", any_rotation=True), "any_rotation"),
        (gateway_pb2.SearchRequest(image_id=3, text="blue"), "not a stored image_id"),
    ],
)
def test_search_queries_that_cannot_be_answered_are_refused(
    request_: gateway_pb2.SearchRequest, words: str
) -> None:
    from gateway.servicer import parse_queries

    with pytest.raises(errors.ServiceError) as err:
        parse_queries(request_, 2)
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert words in err.value.message


# -- the upsert plan ------------------------------------------------------------


def _item(data: bytes, path: str, origin: str = "stream", thumbnail: bytes = b"") -> Checked:
    sha = hashlib.sha256(data).digest()
    item = Item(sha, path, len(data), 4, 3, b"", origin=origin, thumbnail=thumbnail)
    return Checked(item, ids.image_id_from_sha256(sha), np.ones(2, dtype=np.float32))


def test_the_upsert_plan_stores_each_new_image_once_whatever_its_paths() -> None:
    from index_service.plan import plan_upsert

    a, a_again, b = (
        _item(b"a", "/x/a.jpg", thumbnail=b"jpg"),
        _item(b"a", "/x/a2.jpg"),
        _item(b"b", "/x/b.jpg"),
    )
    plan = plan_upsert([a, a_again, b], statuses={}, owners={})
    assert [img.image_id for img in plan.new_images] == [a.image_id, b.image_id]
    assert list(plan.to_embed) == [a.image_id, b.image_id]
    assert plan.new_paths == {
        "/x/a.jpg": a.image_id,
        "/x/a2.jpg": a.image_id,
        "/x/b.jpg": b.image_id,
    }
    assert plan.moved_paths == {} and plan.thumbnails == {a.image_id: b"jpg"}
    assert [(r.duplicate, r.path_added, r.refused) for r in plan.results] == [
        (False, False, ""), (True, True, ""), (False, False, ""),
    ]  # fmt: skip


def test_the_upsert_plan_reuses_ready_images_and_moves_changed_paths() -> None:
    from index_service.plan import plan_upsert

    old, new = _item(b"old", "/x/a.jpg"), _item(b"new", "/x/a.jpg")
    ready = {old.image_id: ("ready", old.item.sha256.hex())}
    # A ready image under a new name: a path, no vector.
    plan = plan_upsert([_item(b"old", "/x/copy.jpg")], ready, owners={})
    assert plan.new_images == [] and plan.to_embed == {}
    assert plan.new_paths == {"/x/copy.jpg": old.image_id}
    assert (plan.results[0].duplicate, plan.results[0].path_added) == (True, True)
    # Other bytes at a known path: the path moves to the new image.
    plan = plan_upsert([new], ready, owners={"/x/a.jpg": (old.image_id, "stream")})
    assert plan.moved_paths == {"/x/a.jpg": new.image_id} and plan.new_paths == {}
    assert list(plan.to_embed) == [new.image_id]
    # A pending image is embedded again, not made again.
    pending = {old.image_id: ("pending", old.item.sha256.hex())}
    plan = plan_upsert([old], pending, owners={"/x/a.jpg": (old.image_id, "stream")})
    assert plan.new_images == [] and list(plan.to_embed) == [old.image_id]
    assert plan.new_paths == {} and plan.moved_paths == {}


def test_the_upsert_plan_refuses_items_alone() -> None:
    from index_service.plan import plan_upsert

    streamed, fine = _item(b"s", "/srv/a.jpg"), _item(b"f", "/srv/f.jpg")
    collider = _item(b"c", "/srv/c.jpg")
    server_owned = {"/srv/a.jpg": (12345, "server")}
    other_bytes = {collider.image_id: ("ready", "00" * 32)}
    plan = plan_upsert([streamed, collider, fine], other_bytes, server_owned)
    codes = [r.code for r in plan.results]
    assert codes == [
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.OK,
    ]
    assert "a server job indexed a file under this path" in plan.results[0].refused
    assert "collides" in plan.results[1].refused
    assert list(plan.to_embed) == [fine.image_id] and plan.new_paths == {
        "/srv/f.jpg": fine.image_id
    }
    # A server job's file takes a streamed name back.
    taken = plan_upsert(
        [_item(b"s", "/srv/a.jpg", origin="server")], {}, {"/srv/a.jpg": (1, "stream")}
    )
    assert taken.moved_paths == {"/srv/a.jpg": streamed.image_id}
    assert taken.origins == {"/srv/a.jpg": "server"}


def test_the_vector_store_is_chosen_by_its_uri() -> None:
    from index_service.milvus import MilvusVectors
    from index_service.vectors import open_vector_store

    lite = open_vector_store(IndexSettings(milvus_uri="./data/milvus.db"))
    server = open_vector_store(
        IndexSettings(milvus_uri="http://127.0.0.1:19530", milvus_metric="L2")
    )
    assert isinstance(lite, MilvusVectors) and lite.lite
    assert isinstance(server, MilvusVectors) and not server.lite
    assert (server.metric, server.max_top_k) == ("L2", 16384)
    assert server.score(0.0) == (0.0, 1.0)  # the same vector under L2


def test_secrets_are_read_from_files_never_needed_in_the_environment(tmp_path: Path) -> None:
    url = tmp_path / "db-url"
    url.write_text("mysql+pymysql://reader:s3cret@db:3306/images\n")
    token = tmp_path / "milvus-token"
    token.write_text("root:pw")
    env = {"INDEX_DATABASE_URL_FILE": str(url), "INDEX_MILVUS_TOKEN_FILE": str(token)}
    s = load_settings(IndexSettings, "INDEX_", None, env)
    assert s.database_url == "mysql+pymysql://reader:s3cret@db:3306/images"  # newline dropped
    assert s.milvus_token == "root:pw"
    nats = tmp_path / "nats-url"
    nats.write_text("nats://gw:pw@nats:4222\n")
    gw = load_settings(GatewaySettings, "GATEWAY_", None, {"GATEWAY_JOBS_URL_FILE": str(nats)})
    assert gw.jobs_url == "nats://gw:pw@nats:4222"

    with pytest.raises(SettingsError, match="INDEX_DATABASE_URL and INDEX_DATABASE_URL_FILE"):
        load_settings(IndexSettings, "INDEX_", None, {**env, "INDEX_DATABASE_URL": "sqlite://"})
    with pytest.raises(SettingsError, match=r"INDEX_MILVUS_TOKEN_FILE=.*cannot be read"):
        load_settings(IndexSettings, "INDEX_", None, {"INDEX_MILVUS_TOKEN_FILE": str(tmp_path)})
    # Only secrets have a _FILE form: a port is never read from a file.
    plain = load_settings(IndexSettings, "INDEX_", None, {"INDEX_PORT_FILE": str(url)})
    assert plain.port == IndexSettings().port


def test_a_milvus_coming_back_is_unavailable_not_internal() -> None:
    """Found by the chaos run: for ~20 s after a Milvus restart its
    collections are not loaded yet (its code 101), and searches failed
    INTERNAL, which clients do not retry. That is "not now": UNAVAILABLE."""
    from pymilvus import MilvusException

    from index_service.milvus import milvus_away

    assert milvus_away(MilvusException(code=101, message="collection not loaded[collection=7]"))
    assert milvus_away(MilvusException(code=1, message="failed to connect to 127.0.0.1:19530"))
    assert not milvus_away(MilvusException(code=1100, message="invalid parameter: dim"))
    assert not milvus_away(MilvusException(code=100, message="collection not found[x]"))


def test_one_job_record_the_web_face_and_the_cli_show_as_it_is() -> None:
    """The job record was spelled four times; the web face's JobOut and the
    CLI's --json are now the client's Job as ``as_dict`` gives it, field for
    field (errors_omitted, which only the wire had, included)."""
    import dataclasses

    from imagesearch.client import FileError, Job
    from web_service.models import JobOut

    job = Job.from_proto(
        gateway_pb2.Job(
            job_id="0123456789ab",
            state=gateway_pb2.JOB_STATE_FAILED,
            total=9,
            done=9,
            failed=3,
            errors=[gateway_pb2.FileError(path="/a.jpg", reason="broken", code=3)],
            errors_omitted=2,
            walk_complete=True,
        )
    )
    assert job.errors == (FileError("/a.jpg", "broken", grpc.StatusCode.INVALID_ARGUMENT),)
    shown = job.as_dict()
    assert set(JobOut.model_fields) == {f.name for f in dataclasses.fields(Job)} | {"terminal"}
    assert JobOut.of(job).model_dump() == shown
    assert shown["state"] == "failed" and shown["terminal"] is True
    assert shown["errors_omitted"] == 2 and shown["walk_complete"] is True
    assert shown["errors"] == [{"path": "/a.jpg", "reason": "broken", "code": "INVALID_ARGUMENT"}]


def test_the_gateway_sends_its_record_as_the_clients_job() -> None:
    """The gateway's conversion is the client's type too: its record's view
    goes over the wire and comes back the same Job, field for field."""
    from gateway.jobstore import JobRecord

    record = JobRecord(
        "0123456789ab",
        "photos",
        "/data",
        True,
        state="failed",
        total=9,
        done=9,
        failed=3,
        errors=[{"path": "/a.jpg", "reason": "broken", "code": "INVALID_ARGUMENT"}],
        walk_complete=True,
        model="resnet50",
    )
    view = record.view()
    assert Job.from_proto(view.to_proto()) == view
    assert (view.state, view.errors_omitted, view.walk_complete) == (JobState.FAILED, 2, True)
    assert record.view(with_errors=False).errors == ()


def test_renamed_settings_still_read_their_old_names_and_say_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Milvus' index knobs are INDEX_MILVUS_* like its connection settings
    (CHANGELOG.md); the old names work for now, each with one warning that
    names the new one, and the new name wins when both are set."""
    old = {"INDEX_INDEX_TYPE": "HNSW", "INDEX_HNSW_EF": "64", "INDEX_MILVUS_URI": "http://m:19530"}
    with caplog.at_level("WARNING", logger="imagesearch.settings"):
        s = load_settings(IndexSettings, "INDEX_", None, old)
    assert (s.milvus_index_type, s.milvus_hnsw_ef) == ("HNSW", 64)
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "INDEX_INDEX_TYPE is now called INDEX_MILVUS_INDEX_TYPE" in said
    assert "INDEX_HNSW_EF is now called INDEX_MILVUS_HNSW_EF" in said
    both = load_settings(IndexSettings, "INDEX_", None, {**old, "INDEX_MILVUS_HNSW_EF": "32"})
    assert both.milvus_hnsw_ef == 32


def test_a_renamed_size_reads_its_old_unit_and_the_gateways_job_limits_their_old_names(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Sizes are MB everywhere: EMBEDDER_MAX_IMAGE_BYTES, in bytes, becomes
    EMBEDDER_MAX_IMAGE_MB, rounded up so the limit never shrinks; the
    gateway's job limits say what they count (walks, active jobs)."""
    from embedder_service.settings import EmbedderSettings
    from gateway.settings import GatewaySettings

    with caplog.at_level("WARNING", logger="imagesearch.settings"):
        e = load_settings(
            EmbedderSettings, "EMBEDDER_", None, {"EMBEDDER_MAX_IMAGE_BYTES": "5000000"}
        )
        g = load_settings(
            GatewaySettings,
            "GATEWAY_",
            None,
            {
                "GATEWAY_MAX_JOBS": "3",
                "GATEWAY_MAX_QUEUED_JOBS": "9",
                "GATEWAY_JOB_BATCH_TIMEOUT_S": "7",
            },
        )
    assert (e.max_image_mb, e.max_image_bytes) == (5, 5 * 1024 * 1024)
    assert (g.max_walks, g.max_active_jobs, g.job_chunk_timeout_s) == (3, 9, 7.0)
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "EMBEDDER_MAX_IMAGE_BYTES is now called EMBEDDER_MAX_IMAGE_MB" in said
    assert "GATEWAY_MAX_QUEUED_JOBS is now called GATEWAY_MAX_ACTIVE_JOBS" in said
