"""Database side of search on clustered, correlated data: ``catalog.vector_search.nearest`` per filter case.

Run:  .venv/bin/python bench/search_db.py [--rows 100000] [--queries 50] [--seed 0]
      .venv/bin/python bench/search_db.py --rows 100000 --sweep      # HNSW parameters (m, ef_construction, ef_search)
      .venv/bin/python bench/search_db.py --rows 100000 --halfvec    # halfvec against full-precision vector

It uses its own data folder (IMAGESEARCH_DATA_DIR, default var/bench), never a user's collection.
The first run for a --rows/--seed loads ``bench.clustered.make_collection`` (clusters of photos
sharing a home city, a camera and dates, near-duplicate bursts) into the real tables with COPY and
builds the space's HNSW index, then its value graphs (``manage.py models graphs``: a graph per city,
orientation and year holding from 15,000 rows to half of the space); later runs reuse them (the
collection itself is regenerated from the seed, in seconds, for the ground truth).
``--no-value-graphs`` searches without them.

For every case of ``bench.clustered.filter_cases``: the matching rows, the plan ``nearest`` picks,
p50/p95 of ``nearest(..., offset=0, limit=k)`` for k=10 and k=100 (each query run twice, the second
timed), recall@k against exact numpy ranking for k in 1, 10, 30, 100, whether every result is in
ascending distance order, and whether pages of 100 down to the deepest allowed depth are one
contiguous ranking (and its recall at that depth).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "imagesearch.settings")
os.environ.setdefault("IMAGESEARCH_DATA_DIR", str(ROOT / "var" / "bench"))
os.environ.setdefault("CLIP_MODEL", "ViT-S-32")
os.environ.setdefault("CLIP_RANDOM_INIT", "1")
os.environ.setdefault("IMAGESEARCH_LOG_LEVEL", "WARNING")

import django  # noqa: E402

django.setup()

import numpy as np  # noqa: E402
from django.conf import settings  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection, transaction  # noqa: E402

from bench.clustered import (all_scores, exact_neighbours, filter_cases, load_collection,  # noqa: E402
                             make_collection, make_queries, recall)
from catalog import vector_search  # noqa: E402
from catalog.models import Embedding, EmbeddingSpace, FilterGraph  # noqa: E402

DIMS = 512
K_VALUES = (1, 10, 30, 100)
PAGE = 100
COLD_QUERIES = 5  # a filter's first search, timed after its counts are forgotten
SWEEP_M = (16, 24, 32)
SWEEP_EF_CONSTRUCTION = (64, 128, 200)
SWEEP_EF_SEARCH = (40, 64, 100, 150, 200, 300, 400)


def log(message: str) -> None:
    print(message, flush=True)


def note(message: str) -> None:
    log(message)


def space_name(rows: int, seed: int) -> str:
    return f"bench/clustered-{rows}-seed{seed}-{DIMS}d"


def _info_path(rows: int, seed: int) -> Path:
    return Path(settings.DATA_DIR) / f"search_db-{rows}-seed{seed}.json"


def _scalar(sql: str, params=()):
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchone()[0]


def _index_exists(name: str) -> bool:
    return bool(_scalar("SELECT count(*) FROM pg_indexes WHERE indexname = %s", [name]))


def _table_rows(name: str) -> int:
    if not _scalar("SELECT count(*) FROM pg_tables WHERE tablename = %s", [name]):
        return -1
    return _scalar(f"SELECT count(*) FROM {name}")


def prewarm(space) -> str:
    """Read the space's rows and graphs into shared_buffers (as much as fits), as a server that has
    run a while holds them (or autoprewarm restores after a restart), rather than timing the first
    walks of each graph reading its pages one by one."""
    started = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute("CREATE EXTENSION IF NOT EXISTS pg_prewarm")
        # The table, its btree indexes (the counts) and this space's graphs, not other spaces'.
        graphs = [space.index_name, *(graph.index_name for graph in FilterGraph.objects.filter(space=space))]
        cursor.execute("SELECT coalesce(sum(pg_prewarm(c.oid)), 0) FROM pg_class c JOIN pg_am am ON am.oid = c.relam "
                       "WHERE c.oid = 'catalog_embedding'::regclass OR c.oid IN ("
                       "SELECT indexrelid FROM pg_index WHERE indrelid = 'catalog_embedding'::regclass) "
                       "AND (am.amname <> 'hnsw' OR c.relname = ANY(%s))", [graphs])
        blocks = cursor.fetchone()[0]
    return f" (prewarmed: {blocks * 8 / 2**20:.1f} GB read in {time.perf_counter() - started:.0f} s)"


def ensure_space(collection, rows: int, seed: int):
    """The space holding this collection, loaded and indexed once; (space, image ids, build info)."""
    call_command("migrate", verbosity=0)
    name, info_path = space_name(rows, seed), _info_path(rows, seed)
    space = EmbeddingSpace.objects.filter(name=name).first()
    if (space is not None and info_path.exists() and _index_exists(space.index_name)
            and Embedding.objects.filter(space=space).count() == rows):
        info = json.loads(info_path.read_text())
        log(f"reusing {rows:,} vectors in {name!r} and its HNSW index")
        return space, info["first_id"] + np.arange(rows, dtype=np.int64), info
    if space is not None:  # a half-finished earlier load
        log(f"removing the incomplete {name!r} ...")
        with connection.cursor() as cursor:
            cursor.execute("CREATE TEMP TABLE bench_gone AS SELECT image_id FROM catalog_embedding "
                           "WHERE space_id = %s", [space.pk])
            cursor.execute("DELETE FROM catalog_embedding WHERE space_id = %s", [space.pk])
            cursor.execute("DELETE FROM catalog_image WHERE id IN (SELECT image_id FROM bench_gone)")
            cursor.execute("DROP TABLE bench_gone")
        space.delete()
    log(f"loading {rows:,} clustered vectors into {name!r} ...")
    timings: dict = {}
    with transaction.atomic():
        space, image_ids = load_collection(collection, space_name=name, build_index=False, timings=timings)
    log(f"  images {timings['images_s']:.1f} s, embeddings {timings['embeddings_s']:.1f} s (COPY, triggers)")
    started = time.perf_counter()
    with connection.cursor() as cursor:
        # The whole graph in memory (a fast build); one parallel worker besides the leader on 2 cores.
        cursor.execute("SET maintenance_work_mem = '3GB'")
        cursor.execute("SET max_parallel_maintenance_workers = 1")
        with connection.schema_editor() as editor:
            editor.add_index(Embedding, space.hnsw_index())
        cursor.execute("RESET maintenance_work_mem")
        cursor.execute("RESET max_parallel_maintenance_workers")
    index_s = time.perf_counter() - started
    log(f"  HNSW index (m={space.HNSW_M}, ef_construction={space.HNSW_EF_CONSTRUCTION}) built in {index_s:.1f} s")
    with connection.cursor() as cursor:  # what autovacuum does later: statistics and the visibility map
        cursor.execute("VACUUM ANALYZE catalog_image")
        cursor.execute("VACUUM ANALYZE catalog_embedding")
    vector_search.refresh_planner_statistics()
    info = {"first_id": int(image_ids[0]), "index_s": index_s, **timings, "m": space.HNSW_M,
            "ef_construction": space.HNSW_EF_CONSTRUCTION}
    info_path.write_text(json.dumps(info))
    return space, image_ids, info


def ensure_value_graphs(space) -> None:
    """``manage.py models graphs`` for the space: built on the first run (minutes at 1M), kept after."""
    from catalog import spaces

    started = time.perf_counter()
    changes = spaces.refresh_filter_graphs(name=space.name, report=lambda change: log(
        f"  value graph {change.column}={change.value} ({change.rows:,} rows): {change.action} "
        f"at {time.perf_counter() - started:.0f} s") if change.action != "kept" else None)
    names = [FilterGraph(space=space, column=c.column, value=c.value).index_name for c in changes if c.action != "dropped"]
    size = _scalar("SELECT coalesce(sum(pg_relation_size(to_regclass(n))), 0) FROM unnest(%s::text[]) AS n", [names])
    log(f"{len(names)} value graphs ({sum(c.rows for c in changes if c.action != 'dropped'):,} rows, "
        f"{size / 2**20:.0f} MB) ready in {time.perf_counter() - started:.0f} s")


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000


def pct(values, q) -> float:
    return float(np.percentile(values, q)) if len(values) else float("nan")


def _sorted(neighbours) -> bool:
    keys = [(n.distance, n.image_id) for n in neighbours]
    return all(a[0] <= b[0] for a, b in zip(keys, keys[1:]))


def mixed_cases(space, collection, queries, args) -> None:
    """Every case's query j, then every case's query j + 1, ...: a server serving many filters at once,
    whose graphs compete for shared_buffers (measure_cases warms each case's pages before timing it)."""
    cases = [(case.label, case.filters.embedding_q()) for case in filter_cases(collection) if args.only in case.label]
    times: dict[str, list[float]] = {label: [] for label, _ in cases}
    for j, q in enumerate(queries):
        for label, image_filter in cases:
            started = time.perf_counter()
            vector_search.nearest(space=space, vector=q, image_filter=image_filter, offset=0, limit=10)
            if j:  # the first round warms the counts (KNOWN_TTL) and as many pages as fit
                times[label].append(_ms(started))
    log("| case (k=10, cases interleaved) | p50 ms | p95 ms |\n|---|---:|---:|")
    for label, _ in cases:
        log(f"| {label} | {pct(times[label], 50):.1f} | {pct(times[label], 95):.1f} |")
    filtered = [label for label, _ in cases if label != "no filter"]
    log(f"\ninterleaved: filtered cases with p95 <= 50 ms: "
        f"{sum(pct(times[label], 95) <= 50 for label in filtered)} of {len(filtered)}; worst p95 "
        f"{max((pct(times[label], 95) for label in filtered), default=float('nan')):.1f} ms")


def measure_cases(space, collection, image_ids, queries, scores, args) -> list[dict]:
    rows = []
    first_id = int(image_ids[0])
    for case in filter_cases(collection):
        if args.only not in case.label:
            continue
        image_filter = case.filters.embedding_q()
        matching = int(case.mask.sum())
        truths = {k: [] for k in (*K_VALUES, vector_search.MAX_DEPTH)}
        for j in range(len(queries)):
            top = exact_neighbours(collection, case.mask, queries[j], vector_search.MAX_DEPTH, scores=scores[:, j])
            for k in truths:
                truths[k].append((top[:k] + first_id).tolist())
        plan = vector_search.plan_for(space=space, image_filter=image_filter)

        def run(q, k, image_filter=image_filter):
            return vector_search.nearest(space=space, vector=q, image_filter=image_filter, offset=0, limit=k)

        for q in queries:  # warm-up: the pages this case reads, as cached as they get
            run(q, 100)
        times = {k: [] for k in K_VALUES}
        recalls = {k: [] for k in K_VALUES}
        unsorted = short = 0
        for k in K_VALUES:
            for j, q in enumerate(queries):
                started = time.perf_counter()
                found = run(q, k)
                times[k].append(_ms(started))
                unsorted += not _sorted(found)
                short += len(found) != min(k, matching)
                recalls[k].append(recall([n.image_id for n in found], truths[k][j]))
        # A filter's first search: nothing kept of its counts and estimates (vector_search.KNOWN_TTL),
        # as for a filter nobody searched in the last minute.
        cold = []
        for q in queries[:COLD_QUERIES]:
            vector_search.forget_counts()
            started = time.perf_counter()
            run(q, 10)
            cold.append(_ms(started))
        # Deep pages: pages of PAGE rows down to MAX_DEPTH are one contiguous ranking.
        contiguous = True
        deep_recall = []
        for j, q in enumerate(queries[:args.deep_queries]):
            ranking = []
            for offset in range(0, vector_search.MAX_DEPTH, PAGE):
                ranking += vector_search.nearest(space=space, vector=q, image_filter=image_filter,
                                                 offset=offset, limit=PAGE)
            whole = vector_search.nearest(space=space, vector=q, image_filter=image_filter, offset=0,
                                          limit=vector_search.MAX_DEPTH)
            contiguous &= [n.image_id for n in ranking] == [n.image_id for n in whole] and _sorted(ranking)
            deep_recall.append(recall([n.image_id for n in ranking], truths[vector_search.MAX_DEPTH][j]))
        row = {"label": case.label, "matching": matching, "plan": str(plan),
               "p50_10": pct(times[10], 50), "p95_10": pct(times[10], 95),
               "p50_100": pct(times[100], 50), "p95_100": pct(times[100], 95),
               "cold_p50": pct(cold, 50), "cold_max": max(cold),
               **{f"recall_{k}": statistics.mean(recalls[k]) for k in K_VALUES},
               **{f"min_recall_{k}": min(recalls[k]) for k in K_VALUES},
               "unsorted": unsorted, "short": short, "contiguous": contiguous,
               "deep_recall": statistics.mean(deep_recall) if deep_recall else float("nan")}
        rows.append(row)
        log(_case_line(row))
    return rows


CASE_HEADER = ("| case | matching | plan | p50 / p95 ms k=10 | p50 / p95 ms k=100 | first search of the filter: p50 / max ms "
               "| recall@1 | @10 | @30 | @100 "
               "| min @10 | sorted | pages to the depth limit contiguous (recall there) |\n"
               "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|")


def _case_line(r: dict) -> str:
    flag = "yes" if not r["unsorted"] else f"**{r['unsorted']} unsorted**"
    if r["short"]:
        flag += f", **{r['short']} short pages**"
    return (f"| {r['label']} | {r['matching']:,} | {r['plan']} | {r['p50_10']:.1f} / {r['p95_10']:.1f} "
            f"| {r['p50_100']:.1f} / {r['p95_100']:.1f} | {r['cold_p50']:.1f} / {r['cold_max']:.1f} "
            f"| {r['recall_1']:.3f} | {r['recall_10']:.3f} "
            f"| {r['recall_30']:.3f} | {r['recall_100']:.3f} | {r['min_recall_10']:.2f} | {flag} "
            f"| {'yes' if r['contiguous'] else '**no**'} ({r['deep_recall']:.3f}) |")


# --- raw SQL side tables: the parameter sweep and the full-precision comparison ---------------------

def _copy_side_table(table: str, collection, image_ids, *, column_type: str) -> None:
    """A side table (image_id, vector) with the collection's float32 vectors as ``column_type``
    (``vector`` or ``halfvec``), stored in the row, filled by binary COPY."""
    dims = collection.dims
    element = ">f4" if column_type == "vector" else ">f2"
    size = 4 if column_type == "vector" else 2
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE IF EXISTS {table}")
        cursor.execute(f"CREATE TABLE {table} (image_id bigint PRIMARY KEY, vector {column_type}({dims}))")
        cursor.execute(f"ALTER TABLE {table} ALTER COLUMN vector SET STORAGE PLAIN")
        record = np.dtype([("fields", ">i2"), ("l1", ">i4"), ("image_id", ">i8"), ("l2", ">i4"),
                           ("dim", ">i2"), ("unused", ">i2"), ("vector", element, (dims,))])
        with cursor.cursor.copy(f"COPY {table} (image_id, vector) FROM STDIN (FORMAT BINARY)") as copy:
            copy.write(b"PGCOPY\n\xff\r\n\x00" + b"\x00" * 8)
            for start in range(0, len(collection), 65536):
                stop = min(len(collection), start + 65536)
                rows = np.zeros(stop - start, dtype=record)
                rows["fields"], rows["l1"], rows["l2"], rows["dim"] = 2, 8, 4 + size * dims, dims
                rows["image_id"] = image_ids[start:stop]
                rows["vector"] = collection.vectors[start:stop]
                copy.write(rows.tobytes())
            copy.write(b"\xff\xff")
        cursor.execute(f"VACUUM ANALYZE {table}")


def _build_side_index(table: str, index: str, *, column_type: str, m: int, ef_construction: int,
                      opclass: str | None = None) -> float:
    started = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute(f"DROP INDEX IF EXISTS {index}")
        cursor.execute("SET maintenance_work_mem = '3GB'")
        cursor.execute("SET max_parallel_maintenance_workers = 1")
        cursor.execute(f"CREATE INDEX {index} ON {table} USING hnsw (vector {opclass or column_type + '_cosine_ops'}) "
                       f"WITH (m = {m}, ef_construction = {ef_construction})")
        cursor.execute("RESET maintenance_work_mem")
        cursor.execute("RESET max_parallel_maintenance_workers")
    return time.perf_counter() - started


def _side_search(table: str, column_type: str, ef_search: int, queries, k: int, operator: str = "<=>"):
    """Unfiltered top k through the table's HNSW index (``operator``: the one its operator class
    serves): (times ms of a second pass, image ids)."""
    sql = f"SELECT image_id FROM {table} ORDER BY vector {operator} %s::{column_type} LIMIT {k}"
    found, times = [], []
    with transaction.atomic(), connection.cursor() as cursor:
        # enable_sort off: the index order is then the only plan (a small table is otherwise sorted whole).
        cursor.execute("SELECT set_config('hnsw.ef_search', %s, true), set_config('hnsw.iterative_scan', 'off', true), "
                       "set_config('enable_sort', 'off', true)", [str(ef_search)])
        texts = ["[" + ",".join(f"{x:.7g}" for x in q) + "]" for q in queries]
        for text in texts:
            cursor.execute(sql, [text])
            cursor.fetchall()
        for text in texts:
            started = time.perf_counter()
            cursor.execute(sql, [text])
            found.append([r[0] for r in cursor.fetchall()])
            times.append(_ms(started))
    return times, found


def sweep(collection, image_ids, queries, scores, args) -> None:
    """recall@10 and p50 for each (m, ef_construction, ef_search), unfiltered, on halfvec side indexes."""
    table = f"bench_sweep_{len(collection)}"
    _copy_side_table(table, collection, image_ids, column_type="halfvec")
    first_id = int(image_ids[0])
    truths = [(exact_neighbours(collection, None, q, 10, scores=scores[:, j]) + first_id).tolist()
              for j, q in enumerate(queries)]
    note(f"\n### HNSW sweep, {len(collection):,} x {collection.dims}-d clustered (seed {args.seed}), halfvec, "
         f"unfiltered, {len(queries)} queries, k=10 ({time.strftime('%H:%M')}, load {os.getloadavg()[0]:.1f})\n")
    note("| m | ef_construction | build s | index MB | " + " | ".join(f"ef {ef}" for ef in SWEEP_EF_SEARCH) + " |")
    note("|---:|---:|---:|---:|" + "---:|" * len(SWEEP_EF_SEARCH))
    for m in SWEEP_M:
        for ef_construction in SWEEP_EF_CONSTRUCTION:
            index = f"{table}_m{m}_efc{ef_construction}"
            build_s = _build_side_index(table, index, column_type="halfvec", m=m, ef_construction=ef_construction)
            size_mb = _scalar("SELECT pg_relation_size(%s::regclass)", [index]) / 2**20
            cells = []
            for ef in SWEEP_EF_SEARCH:
                times, found = _side_search(table, "halfvec", ef, queries, 10)
                cells.append(f"{statistics.mean(recall(f, t) for f, t in zip(found, truths)):.3f} / "
                             f"{pct(times, 50):.1f} ms")
            note(f"| {m} | {ef_construction} | {build_s:.0f} | {size_mb:.0f} | " + " | ".join(cells) + " |")
            with connection.cursor() as cursor:
                cursor.execute(f"DROP INDEX {index}")
    note("(cells: mean recall@10 / p50 ms of the raw index query)")
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE {table}")


def graph_comparison(space, collection, image_ids, queries, scores, args) -> None:
    """Unfiltered recall@10 (mean and worst query) and p50/p95 of the raw index query at each
    ``--sweep-ef``: the space's own index against side indexes built with other ``m`` /
    ``ef_construction`` (``--graphs``, kept between runs), same operator class, one run."""
    table = f"bench_graphs_{len(collection)}"
    if _table_rows(table) != len(collection):  # absent, or a copy that was cut short
        log(f"copying {len(collection):,} vectors into the side table {table} ...")
        _copy_side_table(table, collection, image_ids, column_type="halfvec")
    first_id = int(image_ids[0])
    truths = [(exact_neighbours(collection, None, q, 10, scores=scores[:, j]) + first_id).tolist()
              for j, q in enumerate(queries)]
    graphs = [("the space's index", *space.graph_parameters(), None,
               f"(SELECT image_id, vector::halfvec({collection.dims}) AS vector FROM catalog_embedding "
               f"WHERE space_id = {space.pk}) AS e", space.index_name)]
    builds_path = Path(settings.DATA_DIR) / f"search_db-{len(collection)}-seed{args.seed}-graphs.json"
    builds = json.loads(builds_path.read_text()) if builds_path.exists() else {}
    for spec in args.graphs.split(","):
        m, efc = (int(x) for x in spec.split(":"))
        index = f"{table}_m{m}_efc{efc}"
        if not _index_exists(index) or index not in builds:
            log(f"building {index} (m={m}, ef_construction={efc}) at load {os.getloadavg()[0]:.1f} ...")
            builds[index] = _build_side_index(table, index, column_type="halfvec", m=m, ef_construction=efc,
                                              opclass="halfvec_ip_ops")
            builds_path.write_text(json.dumps(builds))
            log(f"  built in {builds[index]:.0f} s, load {os.getloadavg()[0]:.1f}")
        build_s = builds[index]
        graphs.append((f"side table, m={m}", m, efc, build_s, table, index))
    efs = [int(x) for x in args.sweep_ef.split(",")]
    note(f"\n### HNSW graphs at {len(collection):,} x {collection.dims}-d clustered (seed {args.seed}), halfvec_ip_ops, "
         f"unfiltered, {len(queries)} queries, k=10 ({time.strftime('%H:%M')}, load {os.getloadavg()[0]:.1f})\n")
    note("| graph | m | ef_construction | build s | index MB | ef_search | recall@10 mean | worst query | p50 / p95 ms |")
    note("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    side_indexes = [graph[5] for graph in graphs[1:]]
    for ef in efs:
        for label, m, efc, build_s, tbl, index in graphs:
            with transaction.atomic():
                # The side table's other graphs are dropped in a transaction that is rolled back: the
                # planner would otherwise pick any of them for every row.
                with connection.cursor() as cursor:
                    for other in side_indexes:
                        if other != index:
                            cursor.execute(f"DROP INDEX {other}")
                    cursor.execute("SELECT set_config('enable_sort', 'off', true)")
                    cursor.execute(f"EXPLAIN SELECT image_id FROM {tbl} ORDER BY vector <#> %s::halfvec LIMIT 10",
                                   ["[" + ",".join(f"{x:.7g}" for x in queries[0]) + "]"])
                    plan = "\n".join(row[0] for row in cursor.fetchall())
                assert index in plan, f"{label}: the query does not read {index}:\n{plan}"
                times, found = _side_search(tbl, "halfvec", ef, queries, 10, "<#>")
                transaction.set_rollback(True)
            recalls = [recall(f, t) for f, t in zip(found, truths)]
            size_mb = _scalar("SELECT pg_relation_size(%s::regclass)", [index]) / 2**20
            note(f"| {label} | {m} | {efc} | {'' if build_s is None else f'{build_s:.0f}'} | {size_mb:.0f} | {ef} "
                 f"| {statistics.mean(recalls):.3f} | {min(recalls):.2f} | {pct(times, 50):.1f} / {pct(times, 95):.1f} |")
    note(f"(load average at the end {os.getloadavg()[0]:.1f})")


def halfvec_comparison(space, collection, image_ids, queries, scores, info, args) -> list[str]:
    """Index size, build time and unfiltered recall@10/100: halfvec (the product) against full
    precision ``vector`` in a side table with the same m / ef_construction and ef_search."""
    table = f"bench_fullvec_{len(collection)}"
    index = f"{table}_hnsw"
    m, efc = space.HNSW_M, space.HNSW_EF_CONSTRUCTION
    info_path = _info_path(len(collection), args.seed)
    if not (_index_exists(index) and info.get("fullvec_m") == m and info.get("fullvec_efc") == efc):
        log(f"building the full-precision side table {table} and its index ...")
        _copy_side_table(table, collection, image_ids, column_type="vector")
        info.update(fullvec_index_s=_build_side_index(table, index, column_type="vector", m=m, ef_construction=efc),
                    fullvec_m=m, fullvec_efc=efc)
        info_path.write_text(json.dumps(info))
    first_id = int(image_ids[0])
    truth = {k: [(exact_neighbours(collection, None, q, k, scores=scores[:, j]) + first_id).tolist()
                 for j, q in enumerate(queries)] for k in (10, 100)}
    # Exact ranking on half-precision vectors (what an exact scan of the product ranks by) against float32.
    half = collection.vectors.astype(np.float16).astype(np.float32)
    half /= np.linalg.norm(half, axis=1, keepdims=True)
    half_scores = half @ queries.T
    exact_half = {k: statistics.mean(
        recall((exact_neighbours(collection, None, q, k, scores=half_scores[:, j]) + first_id).tolist(), truth[k][j])
        for j, q in enumerate(queries)) for k in (10, 100)}
    ef = vector_search.unfiltered_ef_search(space)
    lines = ["| storage | index size | index build | table size | HNSW recall@10 | HNSW recall@100 "
             "| p50 ms k=10 | exact-ranking recall@10 / @100 |", "|---|---:|---:|---:|---:|---:|---:|---|"]
    # The space's index may serve inner product (unit vectors: the same order as cosine distance).
    operator = "<#>" if "_ip_ops" in _scalar("SELECT indexdef FROM pg_indexes WHERE indexname = %s",
                                             [space.index_name]) else "<=>"
    for label, tbl, idx, column_type, build_s, op in (
            ("halfvec (catalog_embedding)", None, space.index_name, "halfvec", info["index_s"], operator),
            ("vector, full precision (side table)", table, index, "vector", info["fullvec_index_s"], "<=>")):
        if tbl is None:  # the product's table: a side view of this space only
            tbl = f"(SELECT image_id, vector::halfvec({collection.dims}) AS vector FROM catalog_embedding " \
                  f"WHERE space_id = {space.pk}) AS e"
            size = _scalar("SELECT pg_table_size('catalog_embedding')")
        else:
            size = _scalar("SELECT pg_table_size(%s::regclass)", [table])
        recalls = {}
        for k in (10, 100):
            times, found = _side_search(tbl, column_type, ef, queries, k, op)
            recalls[k] = statistics.mean(recall(f, t) for f, t in zip(found, truth[k]))
            if k == 10:
                p50 = pct(times, 50)
        exact = (f"{exact_half[10]:.4f} / {exact_half[100]:.4f}" if column_type == "halfvec" else "1 / 1")
        lines.append(f"| {label} | {_scalar('SELECT pg_relation_size(%s::regclass)', [idx]) / 2**20:.0f} MB "
                     f"| {build_s:.0f} s | {size / 2**20:.0f} MB | {recalls[10]:.3f} | {recalls[100]:.3f} "
                     f"| {p50:.1f} | {exact} |")
    lines.append(f"(ef_search {ef}, m={m}, ef_construction={efc}, {len(queries)} queries; halfvec index operator "
                 f"{operator}, vector index <=> (cosine; the same graph on unit vectors); the table size of "
                 f"catalog_embedding covers every bench space in it)")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--deep-queries", type=int, default=5, help="queries per case whose pages go to the depth limit")
    parser.add_argument("--sweep", action="store_true", help="only the HNSW parameter sweep (raw SQL side indexes)")
    parser.add_argument("--graphs", default="",
                        help="only: the space's index against side indexes 'M:EFC[,M:EFC]' (built once, kept), unfiltered")
    parser.add_argument("--sweep-ef", default="200,300,400,500,600,800", help="ef_search values for --graphs")
    parser.add_argument("--halfvec", action="store_true", help="only halfvec against full-precision vector (side table)")
    parser.add_argument("--mixed", action="store_true",
                        help="only: the cases' queries interleaved (k=10), p50 / p95 per case")
    parser.add_argument("--cold", action="store_true",
                        help="measure without reading the space's rows and graphs into shared_buffers first")
    parser.add_argument("--only", default="", help="only the filter cases whose label contains this")
    parser.add_argument("--load-only", action="store_true", help="load and index the collection, measure nothing")
    parser.add_argument("--no-value-graphs", action="store_true",
                        help="search without the value graphs (which are built, or kept, otherwise)")
    parser.add_argument("--ef-search", type=int, default=None,
                        help="walk unfiltered (and at least this wide filtered) at this ef_search instead of "
                             "vector_search.unfiltered_ef_search(space)")
    parser.add_argument("--without", default="", help="compare without 'year-blocks' (the graphs of blocks of "
                        "years), 'kept-counts' (vector_search.KNOWN_TTL), or both, comma separated")
    args = parser.parse_args()
    without = set(filter(None, args.without.split(",")))
    if without - {"year-blocks", "kept-counts"}:
        parser.error(f"--without: unknown {', '.join(sorted(without - {'year-blocks', 'kept-counts'}))}")
    if "kept-counts" in without:
        vector_search.KNOWN_TTL = -1.0  # every search counts and estimates again
    if "year-blocks" in without:
        graphs_of = vector_search._graphs_of
        vector_search._graphs_of = lambda space, using: {
            (column, value): rows for (column, value), rows in graphs_of(space, using).items()
            if not (column == "year" and "-" in value)}
    if args.ef_search:
        vector_search.EF_SEARCH_UNFILTERED = vector_search.EF_SEARCH_UNFILTERED_DENSE = args.ef_search
        vector_search.EF_SEARCH_FILTERED = args.ef_search

    started = time.perf_counter()
    collection = make_collection(args.rows, dims=DIMS, seed=args.seed)
    queries = make_queries(collection, args.queries, seed=args.seed + 1000)
    log(f"generated {args.rows:,} x {DIMS}-d clustered vectors in {time.perf_counter() - started:.1f} s")
    space, image_ids, info = ensure_space(collection, args.rows, args.seed)
    if args.no_value_graphs:
        vector_search._graphs_of = lambda space, using: {}  # the space's graph and exact ranking only
    else:
        ensure_value_graphs(space)
    if args.load_only:
        return
    scores = all_scores(collection, queries)
    warmed = "" if args.cold else prewarm(space)

    with connection.cursor() as cursor:
        cursor.execute("SELECT current_setting('shared_buffers'), current_setting('server_version'), "
                       "(SELECT extversion FROM pg_extension WHERE extname = 'vector'), "
                       "pg_relation_size(%s::regclass), pg_table_size('catalog_embedding')", [space.index_name])
        shared_buffers, server, pgvector, index_size, table_size = cursor.fetchone()
    graph = space.graph_parameters()
    built = (f"built in {info['index_s']:.0f} s" if graph == (info["m"], info["ef_construction"])
             else "rebuilt since the load (manage.py models reindex)")
    log(f"\n{args.rows:,} x {DIMS}-d clustered vectors (seed {args.seed}) in {space.name!r}; {args.queries} queries "
        f"per case; PostgreSQL {server.split()[0]}, pgvector {pgvector}, shared_buffers {shared_buffers}{warmed}; "
        f"HNSW m={graph[0]} ef_construction={graph[1]}: {index_size / 2**20:.0f} MB, "
        f"{built}; catalog_embedding {table_size / 2**20:.0f} MB; "
        f"SEARCH_PARALLEL {settings.SEARCH_PARALLEL}; without: {', '.join(sorted(without)) or 'nothing'}; "
        f"load average {os.getloadavg()[0]:.2f}\n")
    if args.sweep:
        sweep(collection, image_ids, queries, scores, args)
        return
    if args.graphs:
        graph_comparison(space, collection, image_ids, queries, scores, args)
        return
    if args.halfvec:
        for line in halfvec_comparison(space, collection, image_ids, queries, scores, info, args):
            log(line)
        return
    if args.mixed:
        mixed_cases(space, collection, queries, args)
        return
    log(CASE_HEADER)
    rows = measure_cases(space, collection, image_ids, queries, scores, args)
    bad = [r["label"] for r in rows if min(r[f"recall_{k}"] for k in K_VALUES) < 0.95]
    log(f"\ncases with mean recall@k < 0.95 for some k: {len(bad)} of {len(rows)} {bad if bad else ''}")
    log(f"worst p95 (k=10) of a filtered case: {max((r['p95_10'] for r in rows if r['label'] != 'no filter'), default=float('nan')):.1f} ms; "
        f"filtered cases with p95 <= 50 ms at k=10 and k=100: "
        f"{sum(max(r['p95_10'], r['p95_100']) <= 50 for r in rows if r['label'] != 'no filter')} of "
        f"{sum(r['label'] != 'no filter' for r in rows)}; worst first search of a filter: "
        f"{max((r['cold_max'] for r in rows if r['label'] != 'no filter'), default=float('nan')):.1f} ms; "
        f"unsorted results: {sum(r['unsorted'] for r in rows)}; "
        f"non-contiguous deep pages: {sum(not r['contiguous'] for r in rows)}")
    log(f"load average at the end {os.getloadavg()[0]:.2f} (the bench shares the machine's 2 cores); "
        f"{time.perf_counter() - started:.0f} s in all")


if __name__ == "__main__":
    main()
