"""``imgsearch``: index, search and manage collections through the gateway.

Exit codes: 0 success, 1 the gateway or a backend refused or failed (the
message says why), 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc

from imagesearch.channels import make_channel
from imagesearch.images import is_image_name
from imagesearch.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc
from imgsearch.progress import Progress

CHUNK = 1024 * 1024  # bytes per stream message, under the gateway's 4 MiB default
FILES_PER_CALL = 32
CALLS_IN_FLIGHT = 3
STATES = {v: k.removeprefix("JOB_STATE_").lower() for k, v in gateway_pb2.JobState.items()}


class UsageError(Exception):
    pass


def stub(args: argparse.Namespace) -> gateway_pb2_grpc.GatewayStub:
    return gateway_pb2_grpc.GatewayStub(
        make_channel(args.gateway, ["imagesearch.v1.Gateway"], retry_attempts=3)
    )


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


def requests_for(
    collection: str, files: Sequence[Path]
) -> Iterator[gateway_pb2.IndexImagesRequest]:
    for f in files:
        data = f.read_bytes()
        parts = [data[i : i + CHUNK] for i in range(0, len(data), CHUNK)] or [b""]
        for n, part in enumerate(parts):
            yield gateway_pb2.IndexImagesRequest(
                collection=collection,
                name=str(f.resolve()) if n == 0 else "",
                data=part,
                more_chunks=n < len(parts) - 1,
            )


def cmd_index(args: argparse.Namespace) -> int:
    if args.server:
        return index_on_server(args)
    files = local_files(args.paths, not args.no_recursive)
    gw = stub(args)
    totals = {"indexed": 0, "duplicates": 0, "failed": 0}
    errors: list[dict[str, Any]] = []
    bar = Progress(len(files), "indexing", quiet=args.json)
    batches = [files[i : i + FILES_PER_CALL] for i in range(0, len(files), FILES_PER_CALL)]
    done = 0
    # A few calls in flight, so reading and uploading one batch overlaps
    # embedding the previous one on the server.
    with ThreadPoolExecutor(CALLS_IN_FLIGHT) as pool:
        replies = pool.map(
            lambda batch: (
                len(batch),
                gw.IndexImages(requests_for(args.collection, batch), timeout=args.timeout),
            ),
            batches,
        )
        for count, reply in replies:
            totals["indexed"] += reply.indexed
            totals["duplicates"] += reply.duplicates
            totals["failed"] += reply.failed
            errors += [{"path": e.path, "reason": e.reason} for e in reply.errors]
            done += count
            bar.update(done, **totals)
    text = f"{len(files)} files: {totals['indexed']} indexed, {totals['duplicates']} duplicates, {totals['failed']} failed"
    text += "".join(f"\n  failed: {e['reason']}" for e in errors)
    emit(args, {"files": len(files), **totals, "errors": errors}, text)
    return 0


def job_dict(job: gateway_pb2.Job) -> dict[str, Any]:
    return {
        "job_id": job.job_id,
        "state": STATES[job.state],
        "collection": job.collection,
        "folder": job.folder,
        "total": job.total,
        "done": job.done,
        "indexed": job.indexed,
        "duplicates": job.duplicates,
        "failed": job.failed,
        "message": job.message,
        "errors": [{"path": e.path, "reason": e.reason} for e in job.errors],
    }


def follow(
    args: argparse.Namespace, gw: gateway_pb2_grpc.GatewayStub, job: gateway_pb2.Job
) -> gateway_pb2.Job:
    bar = Progress(job.total, f"job {job.job_id}", quiet=args.json)
    last = job
    for last in gw.WatchJob(gateway_pb2.JobRef(job_id=job.job_id), timeout=args.timeout):
        bar.update(last.done, indexed=last.indexed, duplicates=last.duplicates, failed=last.failed)
    return last


def cmd_index_server(args: argparse.Namespace, folder: str) -> gateway_pb2.Job:
    gw = stub(args)
    job = gw.StartIndexJob(
        gateway_pb2.StartIndexJobRequest(
            collection=args.collection, folder=folder, recursive=not args.no_recursive
        ),
        timeout=60,
    )
    return follow(args, gw, job)


def index_on_server(args: argparse.Namespace) -> int:
    jobs = [cmd_index_server(args, folder) for folder in args.paths]
    failed = [j for j in jobs if j.state != gateway_pb2.JOB_STATE_SUCCEEDED]
    lines = []
    for j in jobs:
        lines.append(
            f"job {j.job_id} {STATES[j.state]}: {j.total} files, {j.indexed} indexed, "
            f"{j.duplicates} duplicates, {j.failed} failed {j.message}".rstrip()
        )
        lines += [f"  failed: {e.reason}" for e in j.errors]
    emit(args, [job_dict(j) for j in jobs], "\n".join(lines))
    return 1 if failed else 0


# -- search -----------------------------------------------------------------


def cmd_search(args: argparse.Namespace) -> int:
    request = gateway_pb2.SearchRequest(
        collection=args.collection,
        top_k=args.top_k,
        min_score=args.min_score,
        path_prefix=args.prefix,
    )
    query_bytes: bytes | None = None
    if args.image_id is not None:
        request.image_id = args.image_id
    elif args.server_path:
        request.path = args.image
    else:
        if not args.image:
            raise UsageError("give an image file, --image-id N, or --server-path PATH")
        path = Path(args.image).expanduser()
        if not path.is_file():
            raise UsageError(f"{args.image}: no such file")
        query_bytes = path.read_bytes()
        request.image = query_bytes
    reply = stub(args).Search(request, timeout=args.timeout)
    hits = [
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
        for n, h in enumerate(reply.hits)
    ]
    if args.sheet:
        from imgsearch.sheet import Tile, render

        tiles = [
            Tile("query", Path(args.image).name if args.image else str(args.image_id), query_bytes)
        ]
        for h in hits:
            local = Path(h["path"])
            tiles.append(
                Tile(
                    f"#{h['rank']} score {h['score']:.3f}",
                    local.name,
                    local.read_bytes() if local.is_file() else None,
                )
            )
        size = render(tiles, Path(args.sheet))
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
    reply = stub(args).Count(
        common_pb2.CountRequest(collection=args.collection), timeout=args.timeout
    )
    emit(
        args,
        {"collection": args.collection, "count": reply.count, "pending": reply.pending},
        str(reply.count),
    )
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    if not (args.id or args.path or args.prefix):
        raise UsageError("say what to delete: --id, --path or --prefix")
    reply = stub(args).Delete(
        common_pb2.DeleteRequest(
            collection=args.collection,
            image_ids=args.id or [],
            paths=args.path or [],
            path_prefix=args.prefix or "",
        ),
        timeout=args.timeout,
    )
    emit(
        args,
        {"deleted": reply.deleted, "paths_removed": reply.paths_removed},
        f"deleted {reply.deleted} images ({reply.paths_removed} paths)",
    )
    return 0


def cmd_drop(args: argparse.Namespace) -> int:
    if not args.yes:
        raise UsageError(
            f"dropping deletes every image in {args.collection!r}; add --yes to confirm"
        )
    stub(args).DropCollection(
        common_pb2.DropCollectionRequest(collection=args.collection), timeout=args.timeout
    )
    emit(args, {"dropped": args.collection}, f"dropped {args.collection}")
    return 0


def cmd_collections(args: argparse.Namespace) -> int:
    reply = stub(args).ListCollections(common_pb2.ListCollectionsRequest(), timeout=args.timeout)
    rows = [
        {
            "name": c.name,
            "count": c.count,
            "pending": c.pending,
            "dim": c.dim,
            "model": c.model,
            "metric": c.metric,
            "index_type": c.index_type,
        }
        for c in reply.collections
    ]
    text = "\n".join(f"{r['name']:<24} {r['count']:>8}  {r['dim']}-d {r['model']}" for r in rows)
    emit(args, rows, text or "no collections")
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    gw = stub(args)
    ref = gateway_pb2.JobRef(job_id=args.job_id or "")
    if args.action != "list" and not args.job_id:
        raise UsageError(f"`jobs {args.action}` needs a job id")
    if args.action == "list":
        jobs = list(
            gw.ListJobs(
                gateway_pb2.ListJobsRequest(collection=args.filter or ""), timeout=args.timeout
            ).jobs
        )
    elif args.action == "show":
        jobs = [gw.GetJob(ref, timeout=args.timeout)]
    elif args.action == "cancel":
        jobs = [gw.CancelJob(ref, timeout=args.timeout)]
    elif args.action == "resume":
        jobs = [follow(args, gw, gw.ResumeJob(ref, timeout=args.timeout))]
    else:  # watch
        jobs = [follow(args, gw, gw.GetJob(ref, timeout=args.timeout))]
    text = "\n".join(
        f"{j.job_id}  {STATES[j.state]:<9} {j.done}/{j.total}  indexed={j.indexed} "
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
    )


# -- parser -----------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
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
    common.add_argument("--json", action="store_true", help="machine-readable output")
    common.add_argument("--timeout", type=float, default=600.0, help="seconds per call")

    p = argparse.ArgumentParser(prog="imgsearch", description="Reverse image search client.")
    sub = p.add_subparsers(dest="command", required=True)

    up = sub.add_parser(
        "up", parents=[common], help="run the three services on the embedded defaults"
    )
    up.add_argument(
        "--data-dir", default="./data", help="Milvus Lite, SQLite, jobs and logs (default ./data)"
    )
    up.add_argument("--gateway-port", type=int)
    up.add_argument("--embedder-port", type=int)
    up.add_argument("--index-port", type=int)
    up.set_defaults(func=cmd_up)

    ix = sub.add_parser("index", parents=[common], help="index files or folders")
    ix.add_argument("paths", nargs="+", help="files or folders")
    ix.add_argument(
        "--server",
        action="store_true",
        help="folders are on the gateway's machine: run a job there",
    )
    ix.add_argument("--no-recursive", action="store_true", help="do not descend into sub-folders")
    ix.set_defaults(func=cmd_index)

    se = sub.add_parser("search", parents=[common], help="find images like IMAGE")
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
    se.add_argument("--sheet", help="write a contact sheet PNG of the query and its hits")
    se.set_defaults(func=cmd_search)

    sub.add_parser("count", parents=[common], help="images in the collection").set_defaults(
        func=cmd_count
    )

    de = sub.add_parser("delete", parents=[common], help="delete images")
    de.add_argument("--id", type=int, action="append", help="image id (repeatable)")
    de.add_argument("--path", action="append", help="exact path (repeatable)")
    de.add_argument("--prefix", help="every path starting with this")
    de.set_defaults(func=cmd_delete)

    dr = sub.add_parser("drop", parents=[common], help="drop the collection")
    dr.add_argument("--yes", action="store_true", help="confirm")
    dr.set_defaults(func=cmd_drop)

    sub.add_parser("collections", parents=[common], help="list collections").set_defaults(
        func=cmd_collections
    )

    jb = sub.add_parser("jobs", parents=[common], help="server-side jobs")
    jb.add_argument(
        "action", nargs="?", default="list", choices=["list", "show", "watch", "cancel", "resume"]
    )
    jb.add_argument("job_id", nargs="?")
    jb.add_argument("--filter", help="only jobs of this collection")
    jb.set_defaults(func=cmd_jobs)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except UsageError as exc:
        print(f"imgsearch: {exc}", file=sys.stderr)
        return 2
    except grpc.RpcError as exc:
        code = exc.code() if hasattr(exc, "code") else None
        detail = exc.details() if hasattr(exc, "details") else str(exc)
        name = code.name if code is not None else "ERROR"
        hint = (
            f" (is the gateway running at {args.gateway}? try `imgsearch up`)"
            if code == grpc.StatusCode.UNAVAILABLE
            else ""
        )
        print(f"imgsearch: {name}: {detail}{hint}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("imgsearch: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
