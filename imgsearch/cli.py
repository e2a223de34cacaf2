"""``imgsearch``: index, search and manage collections through the gateway,
with the typed client (imagesearch.client).

Exit codes: 0 success, 1 the gateway or a backend refused or failed (the
message says why), 2 bad usage, 130 interrupted (a job keeps running).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc

from imagesearch.client import Client, ImageSearchError, IndexReport, Job, JobState
from imagesearch.images import is_image_name
from imgsearch.progress import Progress

FILES_PER_CALL = 32
CALLS_IN_FLIGHT = 3


class UsageError(Exception):
    pass


class StoppedWatching(Exception):
    """Ctrl-C while following a job: the job runs on."""

    def __init__(self, job_id: str) -> None:
        super().__init__(job_id)
        self.job_id = job_id


def client(args: argparse.Namespace) -> Client:
    return Client(
        args.gateway,
        ca_file=args.ca or None,
        token=os.environ.get("IMGSEARCH_TOKEN") or None,
        timeout=args.timeout,
    )


def ready_client(args: argparse.Namespace) -> Client:
    """A client of a gateway whose embedder and index are up: a stack that is
    still starting is waited for (--wait), one that is not there fails now."""
    c = client(args)
    c.wait_ready(args.wait, on_wait=lambda msg: print(f"imgsearch: {msg}", file=sys.stderr))
    return c


def emit(args: argparse.Namespace, data: Any, text: str) -> None:
    print(json.dumps(data, indent=2) if args.json else text)


# -- index ------------------------------------------------------------------


def local_files(paths: Sequence[str], recursive: bool) -> list[Path]:
    files: list[Path] = []
    for raw in paths:
        p = Path(raw).expanduser()
        if p.is_dir():
            pattern = "**/*" if recursive else "*"
            files += sorted(f for f in p.glob(pattern) if f.is_file() and is_image_name(f))
        elif p.is_file():
            files.append(p)
        else:
            raise UsageError(f"{raw}: no such file or folder")
    return files


def cmd_index(args: argparse.Namespace) -> int:
    if args.server:
        return index_on_server(args)
    files = local_files(args.paths, not args.no_recursive)
    bar = Progress(len(files), "indexing", quiet=args.json)

    def progress(report: IndexReport) -> None:
        bar.update(
            report.files,
            indexed=report.indexed,
            duplicates=report.duplicates,
            failed=report.failed,
        )

    with ready_client(args) as c:
        report = c.index_files(
            files,
            collection=args.collection,
            files_per_call=FILES_PER_CALL,
            calls_in_flight=CALLS_IN_FLIGHT,
            on_progress=progress,
            model=args.model,
        )
    errors = [{"path": e.path, "reason": e.reason} for e in report.errors]
    text = (
        f"{len(files)} files: {report.indexed} indexed, {report.duplicates} duplicates, "
        f"{report.failed} failed"
    )
    text += "".join(f"\n  failed: {e['reason']}" for e in errors)
    emit(
        args,
        {
            "files": len(files),
            "indexed": report.indexed,
            "duplicates": report.duplicates,
            "failed": report.failed,
            "errors": errors,
        },
        text,
    )
    return 0


def job_dict(job: Job) -> dict[str, Any]:
    return job.as_dict()


def watch_stream_s() -> float:
    """How long one WatchJob stream lasts before the CLI renews it
    (IMGSEARCH_WATCH_STREAM_S); the watch itself lasts as long as the job."""
    raw = os.environ.get("IMGSEARCH_WATCH_STREAM_S", "600")
    try:
        value = float(raw)
    except ValueError:
        raise UsageError(f"IMGSEARCH_WATCH_STREAM_S={raw!r} is not a number of seconds") from None
    if value <= 0:
        raise UsageError("IMGSEARCH_WATCH_STREAM_S must be > 0")
    return value


def follow(args: argparse.Namespace, c: Client, job: Job) -> Job:
    """Follows ``job`` until it ends, across stream renewals and lost
    connections. Ctrl-C stops following, not the job."""
    bar = Progress(job.total, f"job {job.job_id}", quiet=args.json)
    last = job

    def reconnecting(error: ImageSearchError) -> None:
        if not args.json:
            print(
                f"imgsearch: lost the job's stream ({error.code.name}); reconnecting",
                file=sys.stderr,
            )

    try:
        for last in c.watch_job(job.job_id, stream_s=watch_stream_s(), on_reconnect=reconnecting):
            bar.total, bar.growing = last.total, not last.walk_complete
            bar.update(
                last.done, indexed=last.indexed, duplicates=last.duplicates, failed=last.failed
            )
    except KeyboardInterrupt:
        raise StoppedWatching(job.job_id) from None
    return last


def index_on_server(args: argparse.Namespace) -> int:
    jobs: list[Job] = []
    with ready_client(args) as c:
        for folder in args.paths:
            job = c.start_job(
                folder,
                collection=args.collection,
                recursive=not args.no_recursive,
                model=args.model,
            )
            jobs.append(follow(args, c, job))
    failed = [j for j in jobs if j.state is not JobState.SUCCEEDED]
    lines = []
    for j in jobs:
        lines.append(
            f"job {j.job_id} {j.state.label}: {j.total} files, {j.indexed} indexed, "
            f"{j.duplicates} duplicates, {j.failed} failed {j.message}".rstrip()
        )
        lines += [f"  failed: {e.reason}" for e in j.errors]
    emit(args, [job_dict(j) for j in jobs], "\n".join(lines))
    return 1 if failed else 0


# -- search -----------------------------------------------------------------


def cmd_search(args: argparse.Namespace) -> int:
    query_bytes: bytes | None = None
    query: dict[str, Any] = {}
    if args.image_id is not None:
        query["image_id"] = args.image_id
    elif args.server_path:
        query["path"] = args.image
    elif not args.image and args.text:
        pass  # search by words: the text alone
    else:
        if not args.image:
            raise UsageError(
                'give an image file, --image-id N, --server-path PATH, or --text "words"'
            )
        path = Path(args.image).expanduser()
        if not path.is_file():
            raise UsageError(f"{args.image}: no such file")
        query_bytes = path.read_bytes()
        query["image"] = query_bytes
    with ready_client(args) as c:
        found = c.search(
            collection=args.collection,
            top_k=args.top_k,
            min_score=args.min_score,
            path_prefix=args.prefix,
            any_rotation=args.any_rotation,
            text=args.text,
            **query,
        )
    hits: list[dict[str, Any]] = [
        {
            "rank": n + 1,
            "image_id": h.image_id,
            "path": h.path,
            "score": round(h.score, 4),
            "distance": round(h.distance, 4),
            "width": h.width,
            "height": h.height,
            "paths": list(h.paths),
        }
        for n, h in enumerate(found)
    ]
    if args.sheet:
        from imgsearch.sheet import Tile, render

        label = Path(args.image).name if args.image else str(args.image_id or args.text)
        tiles = [Tile("query", label, query_bytes)]
        for h in hits:
            local = Path(h["path"])
            tiles.append(
                Tile(
                    f"#{h['rank']} score {h['score']:.3f}",
                    local.name,
                    local.read_bytes() if local.is_file() else None,
                )
            )
        heading = f"query + text: {args.text}" if args.text else ""
        size = render(tiles, Path(args.sheet), heading)
        if not args.json:
            print(f"wrote {args.sheet} ({size[0]}x{size[1]})", file=sys.stderr)
    width = max([len(h["path"]) for h in hits] + [4])
    lines = [f"{'#':>3}  {'score':>6}  {'distance':>8}  path"]
    lines += [
        f"{h['rank']:>3}  {h['score']:>6.3f}  {h['distance']:>8.4f}  {h['path']:<{width}}"
        for h in hits
    ]
    emit(args, hits, "\n".join(lines) if hits else "no hits")
    return 0


# -- collections and jobs ---------------------------------------------------


def cmd_count(args: argparse.Namespace) -> int:
    with client(args) as c:
        reply = c.count(collection=args.collection)
    emit(
        args,
        {"collection": args.collection, "count": reply.count, "pending": reply.pending},
        str(reply.count),
    )
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    if not (args.id or args.path or args.prefix):
        raise UsageError("say what to delete: --id, --path or --prefix")
    with client(args) as c:
        reply = c.delete(
            collection=args.collection,
            image_ids=args.id or [],
            paths=args.path or [],
            path_prefix=args.prefix or "",
        )
    emit(
        args,
        {"deleted": reply.images, "paths_removed": reply.paths},
        f"deleted {reply.images} images ({reply.paths} paths)",
    )
    return 0


def cmd_drop(args: argparse.Namespace) -> int:
    if not args.yes:
        raise UsageError(
            f"dropping deletes every image in {args.collection!r}; add --yes to confirm"
        )
    with client(args) as c:
        c.drop_collection(args.collection)
    emit(args, {"dropped": args.collection}, f"dropped {args.collection}")
    return 0


def cmd_reconcile(args: argparse.Namespace) -> int:
    name = "" if args.all else args.collection
    with client(args) as c:
        done = c.reconcile(collection=name, thumbnails=args.thumbnails, text=args.text)
        made, texts = done.thumbnails_made, done.text_made
        # A thousand of each per call: call again while that makes progress.
        while (args.thumbnails and done.thumbnails_made and done.thumbnails_missing) or (
            args.text and done.text_made and done.text_missing
        ):
            done = c.reconcile(collection=name, thumbnails=args.thumbnails, text=args.text)
            made, texts = made + done.thumbnails_made, texts + done.text_made
        done = dataclasses.replace(done, thumbnails_made=made, text_made=texts)
    text = (
        f"marked ready {done.marked_ready}, orphan vectors deleted {done.orphan_vectors_deleted}, "
        f"missing vectors {done.missing_vectors}, re-embedded {done.reembedded}, "
        f"still unrepaired {done.unrepaired}"
    )
    if args.thumbnails:
        text += (
            f"; thumbnails made {done.thumbnails_made}, still without one "
            f"{done.thumbnails_missing} (images streamed, or whose file is gone)"
        )
    if args.text:
        text += (
            f"; text vectors made {done.text_made}, still without one {done.text_missing} "
            "(images streamed, or whose file is gone: index them again)"
        )
    if done.unrepaired_paths:
        text += " (index these again:)\n" + "\n".join(done.unrepaired_paths)
    emit(args, dataclasses.asdict(done), text)
    return 0 if done.unrepaired == 0 else 1


def cmd_collections(args: argparse.Namespace) -> int:
    with client(args) as c:
        collections = c.list_collections()
    rows = [
        {
            "name": x.name,
            "count": x.count,
            "pending": x.pending,
            "dim": x.dim,
            "model": x.model,
            "metric": x.metric,
            "index_type": x.index_type,
            "text_model": x.text_model,
        }
        for x in collections
    ]
    text = "\n".join(
        f"{r['name']:<24} {r['count']:>8}  {r['dim']}-d {r['model']}"
        + ("  (searchable by words)" if r["text_model"] else "")
        for r in rows
    )
    emit(args, rows, text or "no collections")
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    if args.action != "list" and not args.job_id:
        raise UsageError(f"`jobs {args.action}` needs a job id")
    with client(args) as c:
        if args.action == "list":
            jobs = c.list_jobs(collection=args.filter or "")
        elif args.action == "show":
            jobs = [c.get_job(args.job_id)]
        elif args.action == "cancel":
            jobs = [c.cancel_job(args.job_id)]
        elif args.action == "resume":
            jobs = [follow(args, c, c.resume_job(args.job_id))]
        else:  # watch
            jobs = [follow(args, c, c.get_job(args.job_id))]
    text = "\n".join(
        f"{j.job_id}  {j.state.label:<9} {j.done}/{j.total}  indexed={j.indexed} "
        f"duplicates={j.duplicates} failed={j.failed}  {j.collection}  {j.folder}  {j.message}".rstrip()
        for j in jobs
    )
    emit(args, [job_dict(j) for j in jobs], text or "no jobs")
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    from imgsearch.up import run

    def port(flag: int | None, env: str, default: int) -> int:
        return flag if flag is not None else int(os.environ.get(env, default))

    return run(
        args.data_dir,
        port(args.gateway_port, "GATEWAY_PORT", 50051),
        port(args.embedder_port, "EMBEDDER_PORT", 50052),
        port(args.index_port, "INDEX_PORT", 50053),
        host=args.host,
        tls=args.tls,
        web_port=None if args.no_web else port(args.web_port, "WEB_PORT", 8080),
        with_models=args.with_models,
        jobs_url=args.jobs_url,
    )


def cmd_certs(args: argparse.Namespace) -> int:
    from imagesearch.tls import local_pki

    services = args.service or []
    pki, made = local_pki(Path(args.folder), args.host or [], services=services)
    said = "made" if made else "already there (kept)"
    own = "".join(f", {pki.service_cert(s)} + {pki.service_key(s)} ({s} alone)" for s in services)
    print(
        f"{said}: {pki.ca} (the CA clients trust), {pki.server_cert} + {pki.server_key} "
        f"(every service){own}, {pki.client_cert} + {pki.client_key} (the gateway's client "
        "certificate). The CA's own key is not kept: run again with more --host or "
        "--service to add names (everything is made anew)."
    )
    return 0


def cmd_secrets(args: argparse.Namespace) -> int:
    from imgsearch.deploy_secrets import make_secrets

    made, kept = make_secrets(Path(args.folder))
    if made:
        print("made: " + ", ".join(p.name for p in made))
    if kept:
        print("kept (already there): " + ", ".join(p.name for p in kept))
    print(f"compose reads them from {args.folder} (SECRETS_DIR); never commit them")
    return 0


# -- parser -----------------------------------------------------------------


Sub = argparse._SubParsersAction  # what add_subparsers returns


def common_options() -> argparse.ArgumentParser:
    """The options every command that talks to the gateway takes."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--gateway",
        default=os.environ.get("IMGSEARCH_GATEWAY", "localhost:50051"),
        help="gateway address (env IMGSEARCH_GATEWAY, default localhost:50051)",
    )
    common.add_argument(
        "--collection",
        "-c",
        default=os.environ.get("IMGSEARCH_COLLECTION", "images"),
        help="collection (env IMGSEARCH_COLLECTION, default images)",
    )
    common.add_argument(
        "--ca",
        default=os.environ.get("IMGSEARCH_CA", ""),
        help="CA certificate file: talk TLS to the gateway (env IMGSEARCH_CA)",
    )
    common.add_argument("--json", action="store_true", help="machine-readable output")
    common.add_argument(
        "--timeout", type=float, default=600.0, help="seconds per call (default 600)"
    )
    common.add_argument(
        "--wait",
        type=float,
        default=300.0,
        help="seconds to wait for a gateway whose embedder or index is still starting "
        "(default 300)",
    )
    return common


def add_up(sub: Sub, common: argparse.ArgumentParser) -> None:
    """imgsearch up: the stack on this machine."""
    up = sub.add_parser(
        "up",
        parents=[common],
        help="run the three services and the web face on the embedded defaults",
    )
    up.add_argument(
        "--data-dir", default="./data", help="Milvus Lite, SQLite, jobs and logs (default ./data)"
    )
    up.add_argument(
        "--host",
        default=os.environ.get("IMGSEARCH_HOST", "127.0.0.1"),
        help="address all three services listen on (env IMGSEARCH_HOST; default 127.0.0.1, "
        "this machine only; 0.0.0.0 or [::] opens them to the network)",
    )
    up.add_argument(
        "--tls",
        action="store_true",
        default=os.environ.get("IMGSEARCH_TLS", "").lower() in ("1", "true", "yes", "on"),
        help="TLS on every port, mTLS between the gateway and the embedder and index, with "
        "a local CA made under <data-dir>/tls on first use (env IMGSEARCH_TLS)",
    )
    up.add_argument("--gateway-port", type=int)
    up.add_argument("--embedder-port", type=int)
    up.add_argument("--index-port", type=int)
    up.add_argument("--web-port", type=int, help="the HTTP face and page (env WEB_PORT; 8080)")
    up.add_argument("--no-web", action="store_true", help="do not start the HTTP face")
    up.add_argument(
        "--with",
        dest="with_models",
        action="append",
        default=[],
        metavar="MODEL",
        help="also start an embedder for MODEL (e.g. tirg_css, composed image+text search) "
        "on the embedder's port + 10, and route collections of that model to it (repeat "
        "for more)",
    )
    up.add_argument(
        "--jobs-url",
        default="",
        metavar="URL",
        help="keep folder jobs in NATS JetStream at URL (nats://host:4222), shared with "
        "other gateways; default: files under <data-dir>/jobs",
    )
    up.set_defaults(func=cmd_up)


def add_certs(sub: Sub, common: argparse.ArgumentParser) -> None:
    """imgsearch certs: a local CA and certificates."""
    certs = sub.add_parser(
        "certs",
        help="make a local CA and certificates for TLS/mTLS (compose, k8s, tests)",
    )
    certs.add_argument("folder", help="where to write them (made if missing)")
    certs.add_argument(
        "--host",
        action="append",
        help="a name or address the services are reached by (repeat); localhost, "
        "127.0.0.1 and ::1 are always in",
    )
    certs.add_argument(
        "--service",
        action="append",
        help="also a certificate and key of this service's own, for its name (repeat: "
        "embedder, index, gateway, web), so that each container holds only its own key",
    )
    certs.set_defaults(func=cmd_certs)


def add_secrets(sub: Sub, common: argparse.ArgumentParser) -> None:
    """imgsearch secrets: the passwords compose reads from files."""
    secrets = sub.add_parser(
        "secrets",
        help="make the database and NATS passwords compose reads from files (kept once made)",
    )
    secrets.add_argument("folder", help="where to write them (made if missing; ./secrets)")
    secrets.set_defaults(func=cmd_secrets)


def add_index(sub: Sub, common: argparse.ArgumentParser) -> None:
    """imgsearch index: files and folders, from here or on the server."""
    ix = sub.add_parser("index", parents=[common], help="index files or folders")
    ix.add_argument("paths", nargs="+", help="files or folders")
    ix.add_argument(
        "--server",
        action="store_true",
        help="folders are on the gateway's machine: run a job there",
    )
    ix.add_argument("--no-recursive", action="store_true", help="do not descend into sub-folders")
    ix.add_argument(
        "--model",
        default="",
        help="model of a collection this creates, e.g. tirg_css for composed image+text "
        "search (the gateway needs an embedder serving it: GATEWAY_EMBEDDERS, or "
        "imgsearch up --with tirg_css); default: the gateway's default embedder",
    )
    ix.set_defaults(func=cmd_index)


def add_search(sub: Sub, common: argparse.ArgumentParser) -> None:
    """imgsearch search: images like one."""
    se = sub.add_parser(
        "search", parents=[common], help='find images like IMAGE, or that --text "words" name'
    )
    se.add_argument(
        "image", nargs="?", help="query image file (or a server path with --server-path)"
    )
    se.add_argument("--image-id", type=int, help="query with a stored image's id")
    se.add_argument(
        "--server-path", action="store_true", help="IMAGE is a path on the gateway's machine"
    )
    se.add_argument("--top-k", "-k", type=int, default=10)
    se.add_argument("--min-score", type=float, default=0.0)
    se.add_argument("--prefix", default="", help="only hits whose path starts with this")
    se.add_argument(
        "--any-rotation",
        action="store_true",
        help="also match images stored turned by 90, 180 or 270 degrees (one embedder batch "
        "of four views of the query)",
    )
    se.add_argument(
        "--text",
        default="",
        help='alone: search by words ("red sneakers"), for a collection with text vectors; '
        'with IMAGE: a composed query, how the wanted image differs from it ("make the red '
        'cube blue"), for a collection of a composing model (tirg_css)',
    )
    se.add_argument("--sheet", help="write a contact sheet PNG of the query and its hits")
    se.set_defaults(func=cmd_search)


def add_count(sub: Sub, common: argparse.ArgumentParser) -> None:
    """imgsearch count."""
    sub.add_parser("count", parents=[common], help="images in the collection").set_defaults(
        func=cmd_count
    )


def add_delete(sub: Sub, common: argparse.ArgumentParser) -> None:
    """imgsearch delete: by id, path or prefix."""
    de = sub.add_parser("delete", parents=[common], help="delete images")
    de.add_argument("--id", type=int, action="append", help="image id (repeatable)")
    de.add_argument("--path", action="append", help="exact path (repeatable)")
    de.add_argument("--prefix", help="every path starting with this")
    de.set_defaults(func=cmd_delete)


def add_drop(sub: Sub, common: argparse.ArgumentParser) -> None:
    """imgsearch drop: a whole collection."""
    dr = sub.add_parser("drop", parents=[common], help="drop the collection")
    dr.add_argument("--yes", action="store_true", help="confirm")
    dr.set_defaults(func=cmd_drop)


def add_collections(sub: Sub, common: argparse.ArgumentParser) -> None:
    """imgsearch collections."""
    sub.add_parser("collections", parents=[common], help="list collections").set_defaults(
        func=cmd_collections
    )


def add_reconcile(sub: Sub, common: argparse.ArgumentParser) -> None:
    """imgsearch reconcile: repair what a crash left (admin)."""
    rc = sub.add_parser(
        "reconcile",
        parents=[common],
        help="find and repair what a crash or lost data left behind (admin); exit 1 when "
        "some images still need indexing again",
    )
    rc.add_argument("--all", action="store_true", help="every collection, not only --collection")
    rc.add_argument(
        "--thumbnails",
        action="store_true",
        help="also make thumbnails for images indexed before they existed, from their files",
    )
    rc.add_argument(
        "--text",
        action="store_true",
        help="also give images without a text vector one (search by words), from their files",
    )
    rc.set_defaults(func=cmd_reconcile)


def add_jobs(sub: Sub, common: argparse.ArgumentParser) -> None:
    """imgsearch jobs: server-side jobs."""
    jb = sub.add_parser("jobs", parents=[common], help="server-side jobs")
    jb.add_argument(
        "action", nargs="?", default="list", choices=["list", "show", "watch", "cancel", "resume"]
    )
    jb.add_argument("job_id", nargs="?")
    jb.add_argument("--filter", help="only jobs of this collection")
    jb.set_defaults(func=cmd_jobs)


COMMANDS = (add_up, add_certs, add_secrets, add_index, add_search, add_count, add_delete, add_drop,
            add_collections, add_reconcile, add_jobs)  # fmt: skip


def parser() -> argparse.ArgumentParser:
    common = common_options()
    p = argparse.ArgumentParser(prog="imgsearch", description="Reverse image search client.")
    sub = p.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub, common)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except UsageError as exc:
        print(f"imgsearch: {exc}", file=sys.stderr)
        return 2
    except ImageSearchError as exc:
        hint = (
            f" (is the gateway running at {args.gateway}? try `imgsearch up`)"
            if exc.code == grpc.StatusCode.UNAVAILABLE
            else ""
        )
        print(f"imgsearch: {exc.code.name}: {exc.message}{hint}", file=sys.stderr)
        return 1
    except StoppedWatching as exc:
        print(
            f"imgsearch: stopped watching; job {exc.job_id} keeps running on the gateway. "
            f"Watch it again with: imgsearch jobs watch {exc.job_id}",
            file=sys.stderr,
        )
        return 130
    except KeyboardInterrupt:
        print("imgsearch: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `imgsearch search … | head`: the reader has gone
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
