"""What a chaos run found: every photo stored exactly once (SQL, Milvus, and
a search by its id through the gateways), every job's end, the searches and
their failures against the fault windows, recovery per fault, memory."""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import MetaData, create_engine, select

from imagesearch.client import Client, ImageSearchError
from tools.chaos.nemesis import Fault
from tools.chaos.stack import Stack
from tools.chaos.workload import COLLECTION, Ingest, Photo, SearchRecord

GRACE_S = 10.0  # searches may fail this long after a fault (or a part with no replica is back)


@dataclass
class Storage:
    photos: int
    lost: list[str] = field(default_factory=list)
    doubled: list[str] = field(default_factory=list)
    count: int = -1  # the gateway's Count
    sql_ready: int = 0
    milvus_entities: int = 0


def check_storage(stack: Stack, photos: Sequence[Photo], target: str) -> Storage:
    """Each photo: one ready row in SQL, one path, one vector in Milvus, and a
    search by its id through the gateways finds it."""
    from pymilvus import MilvusClient

    from index_service.rows import READY
    from index_service.schema import define_tables
    from index_service.settings import IndexSettings

    defaults = IndexSettings()  # the stack runs the index on its default names
    tables = define_tables(MetaData(), defaults.table_prefix)
    img, pt = tables.images, tables.paths
    vectors_of = f"{defaults.milvus_prefix}{COLLECTION}"
    found = Storage(len(photos))
    engine = create_engine(stack.database_url("root"))
    with engine.connect() as conn:
        ready = set(
            conn.execute(
                select(img.c.image_id).where(img.c.collection == COLLECTION, img.c.status == READY)
            ).scalars()
        )
        paths = Counter(
            conn.execute(select(pt.c.image_id).where(pt.c.collection == COLLECTION)).scalars()
        )
    engine.dispose()
    found.sql_ready = len(ready)
    milvus = MilvusClient(uri=stack.milvus_uri, token=stack.milvus_token, timeout=30)
    vectors: Counter[int] = Counter()
    ids = [p.image_id for p in photos]
    for start in range(0, len(ids), 500):
        rows = milvus.query(
            vectors_of,
            filter=f"id in {ids[start : start + 500]}",
            output_fields=["id"],
            consistency_level="Strong",
        )
        vectors.update(int(r["id"]) for r in rows)
    total = milvus.query(vectors_of, output_fields=["count(*)"], consistency_level="Strong")
    found.milvus_entities = int(total[0]["count(*)"])
    milvus.close()

    with Client(target, timeout=30) as client:
        found.count = client.count(collection=COLLECTION).count

        def searched(photo: Photo) -> bool:
            try:
                hits = client.search(image_id=photo.image_id, collection=COLLECTION, top_k=3)
            except ImageSearchError:
                return False
            return any(h.image_id == photo.image_id for h in hits)

        with ThreadPoolExecutor(4) as pool:
            by_search = list(pool.map(searched, photos))
    for photo, seen in zip(photos, by_search, strict=True):
        name = photo.path.name
        if photo.image_id not in ready or vectors[photo.image_id] == 0 or not seen:
            found.lost.append(name)
        elif paths[photo.image_id] > 1 or vectors[photo.image_id] > 1:
            found.doubled.append(name)
    extra = found.milvus_entities - len(vectors)
    if extra > 0:  # vectors of no photo of ours, or one stored twice that query folds
        found.doubled.append(f"{extra} Milvus entities beyond the photos")
    return found


def excused(record: SearchRecord, faults: Sequence[Fault]) -> bool:
    """A failed search is excused when it started in the first GRACE_S after a
    fault, or while a part with no replica was down (or in the GRACE_S after it
    served again)."""
    for f in faults:
        end = f.at + GRACE_S if f.replicated else (f.ready or float("inf")) + GRACE_S
        if f.at <= record.started + record.seconds and record.started <= end:
            return True
    return False


def in_fault(record: SearchRecord, faults: Sequence[Fault]) -> bool:
    return any(f.at <= record.started <= (f.ready or float("inf")) + GRACE_S for f in faults)


def _last_fault(record: SearchRecord, faults: Sequence[Fault]) -> str:
    """The part:kind of the last fault before the search began ('none')."""
    before = [f for f in faults if f.at <= record.started]
    return f"{before[-1].part}:{before[-1].kind}" if before else "none"


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return 0.0
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def latency_ms(seconds: Sequence[float]) -> dict[str, int]:
    """p50 and p99 in ms of sorted latencies in seconds, and how many."""
    return {
        "p50": round(percentile(seconds, 50) * 1000),
        "p99": round(percentile(seconds, 99) * 1000),
        "n": len(seconds),
    }


def recovery(fault: Fault, records: Sequence[SearchRecord], until: float) -> float | None:
    """Seconds from the part's return until searches succeed again: the end of
    its last failed search before ``until`` (the next fault), 0 when none failed."""
    if not fault.back:
        return None
    failed = [
        r.started + r.seconds
        for r in records
        if not r.ok and fault.at <= r.started and r.started + r.seconds < until
    ]
    return round(max(0.0, max(failed) - fault.back), 1) if failed else 0.0


def build(
    *,
    seed: int,
    minutes: float,
    storage: Storage,
    ingest: Ingest,
    faults: Sequence[Fault],
    records: Sequence[SearchRecord],
    rss_start: dict[str, float],
    rss_end: dict[str, float],
    nemesis_error: str,
    machine: str,
) -> dict[str, Any]:
    failed = [r for r in records if not r.ok]
    unexcused = [r for r in failed if not excused(r, faults)]
    calm = sorted(r.seconds for r in records if r.ok and not in_fault(r, faults))
    stormy = sorted(r.seconds for r in records if r.ok and in_fault(r, faults))
    jobs = [u for u in ingest.units if u.kind == "job"]
    ends = Counter(
        (ingest.final[u.job_id].state.name if u.job_id in ingest.final else "NOT_ENDED")
        for u in jobs
    )
    fault_rows = []
    for n, f in enumerate(faults):
        until = faults[n + 1].at if n + 1 < len(faults) else float("inf")
        fault_rows.append(
            {
                "part": f.part,
                "kind": f.kind,
                "down_s": f.down_s,
                "at_s": round(f.at - faults[0].at, 1) if faults else 0,
                "ready_after_back_s": round(f.ready - f.back, 1) if f.ready else None,
                "searches_ok_after_back_s": recovery(f, records, until),
                "starts": f.starts,
                "note": f.note,
            }
        )
    return {
        "seed": seed,
        "minutes": minutes,
        "machine": machine,
        "photos": storage.photos,
        "lost": len(storage.lost),
        "doubled": len(storage.doubled),
        "lost_examples": storage.lost[:10],
        "doubled_examples": storage.doubled[:10],
        "count": storage.count,
        "sql_ready": storage.sql_ready,
        "milvus_entities": storage.milvus_entities,
        "faults": dict(Counter(f.part for f in faults)),
        "fault_kinds": dict(Counter(f"{f.part}:{f.kind}" for f in faults)),
        "fault_log": fault_rows,
        "nemesis_error": nemesis_error,
        "jobs": len(jobs),
        "job_ends": dict(ends),
        "jobs_failed": len(ingest.failed) + ends.get("NOT_ENDED", 0),
        "resumes": ingest.resumes,
        "streams": sum(u.kind == "stream" for u in ingest.units),
        "stream_retries": ingest.stream_retries,
        "job_start_retries": ingest.start_retries,
        "searches": len(records),
        "search_failures": len(failed),
        "search_failures_unexcused": len(unexcused),
        "search_failures_by_client": dict(Counter(r.client for r in failed)),
        "search_errors": dict(Counter(r.error.split(":")[0] for r in failed).most_common(6)),
        "unexcused_after": dict(Counter(_last_fault(r, faults) for r in unexcused)),
        "unexcused_examples": [
            f"{r.client} at {r.started - (faults[0].at if faults else 0):.1f}s: {r.error}"
            for r in unexcused[:5]
        ],
        "search_ms_calm": latency_ms(calm),
        "search_ms_faults": latency_ms(stormy),
        "rss_mib_start": rss_start,
        "rss_mib_end": rss_end,
    }


def passed(report: dict[str, Any]) -> bool:
    return bool(
        report["lost"] == 0
        and report["doubled"] == 0
        and report["jobs_failed"] == 0
        and report["resumes"] == 0
        and report["search_failures_unexcused"] == 0
        and not report["nemesis_error"]
    )


def table(report: dict[str, Any]) -> str:
    """The report as Markdown tables, for a terminal and bench/RESULTS.md."""
    out = [
        f"chaos run: seed {report['seed']}, {report['minutes']} min, {report['machine']}",
        "",
        "| figure | value |",
        "|---|---|",
    ]
    for key in (
        "photos",
        "lost",
        "doubled",
        "count",
        "sql_ready",
        "milvus_entities",
        "jobs",
        "job_ends",
        "jobs_failed",
        "resumes",
        "streams",
        "stream_retries",
        "searches",
        "search_failures",
        "search_failures_unexcused",
        "unexcused_after",
        "search_failures_by_client",
        "search_errors",
        "search_ms_calm",
        "search_ms_faults",
    ):
        out.append(f"| {key} | {report[key]} |")
    out += [
        "",
        "| # | part | fault | down s | ready after back s | searches ok after back s | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for n, f in enumerate(report["fault_log"], 1):
        out.append(
            f"| {n} | {f['part']} | {f['kind']} | {f['down_s']} | {f['ready_after_back_s']} "
            f"| {f['searches_ok_after_back_s']} | {f['note']} |"
        )
    out += ["", "| part | RSS MiB at start | at end |", "|---|---|---|"]
    for name, start in report["rss_mib_start"].items():
        out.append(f"| {name} | {start} | {report['rss_mib_end'].get(name, '')} |")
    if report["unexcused_examples"]:
        out += ["", "unexcused search failures: " + "; ".join(report["unexcused_examples"])]
    if report["nemesis_error"]:
        out += ["", "nemesis: " + report["nemesis_error"]]
    return "\n".join(out)
