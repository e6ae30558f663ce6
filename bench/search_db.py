"""Database side of search: exact scan vs ``catalog.vector_search.nearest`` vs naive HNSW.

Run:  .venv/bin/python bench/search_db.py [--rows 100000] [--queries 50] [--k 10] [--distribution rank32]

It uses its own data folder (IMAGESEARCH_DATA_DIR, default var/bench), never a user's collection.
The first run fills an embedding space with random 512-d unit vectors (COPY) and builds its HNSW
index; later runs with the same --rows and --distribution reuse them.

Distributions: ``rank32`` (default) draws vectors from a random 32-dimensional subspace plus a
little isotropic noise, then normalises them: random, but with the low intrinsic dimension of real
CLIP embeddings, which is what makes HNSW work at all. ``uniform`` draws them uniformly from the
512-d sphere: every point is then almost equally far from every other, and no graph index reaches
useful recall (ef_search 400 finds ~30% of the true top 10); it is there as a worst case.
Query vectors come from the same distribution and are not in the table.
"""
from __future__ import annotations

import argparse
import logging
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
from django.core.management import call_command  # noqa: E402
from django.db import connection, transaction  # noqa: E402
from django.db.models import Q  # noqa: E402
from django.utils import timezone  # noqa: E402
from pgvector.django import CosineDistance  # noqa: E402
from pgvector.psycopg import register_vector  # noqa: E402

from catalog import vector_search  # noqa: E402
from catalog.models import Embedding, EmbeddingSpace, Image  # noqa: E402

DIMS = 512
SEED = 1234
SHA_PREFIX = "b"  # the bench images' sha256 start with this
# city shares; width = 100 + u with u uniform in 0..999 (btree indexes on city and width)
CITIES = [("Reykjavik", 0.001), ("Oslo", 0.01), ("Lisbon", 0.10), ("Paris", 0.389), ("Berlin", 0.50)]
CASES = [  # label, filter, numpy mask over (cities, widths)
    ("no filter", Q(), lambda c, w: np.ones(len(c), dtype=bool)),
    ("0.1% (city, indexed)", Q(image__city__in=["Reykjavik"]), lambda c, w: c == "Reykjavik"),
    ("1% (width, indexed)", Q(image__width__lte=109), lambda c, w: w <= 109),
    ("10% (city, indexed)", Q(image__city__in=["Lisbon"]), lambda c, w: c == "Lisbon"),
    ("50% (width, indexed)", Q(image__width__lte=599), lambda c, w: w <= 599),
]


def sampler(distribution: str, rng: np.random.Generator):
    """A function drawing n unit vectors of the given distribution (its parameters drawn from rng)."""
    basis = rng.standard_normal((32, DIMS), dtype=np.float32) / np.sqrt(32)

    def draw(rng: np.random.Generator, n: int) -> np.ndarray:
        if distribution == "rank32":
            v = rng.standard_normal((n, 32), dtype=np.float32) @ basis
            v += 0.025 * rng.standard_normal((n, DIMS), dtype=np.float32)
        else:
            v = rng.standard_normal((n, DIMS), dtype=np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)
    return draw


def space_name(distribution: str) -> str:
    return f"bench/random-{DIMS}" + ("" if distribution == "uniform" else f"-{distribution}")


def fill(rows: int, distribution: str) -> EmbeddingSpace:
    call_command("migrate", verbosity=0)
    if Image.objects.filter(sha256__startswith=SHA_PREFIX).count() != rows:
        print(f"creating {rows:,} images ...", flush=True)
        with transaction.atomic():
            Embedding.objects.filter(space__name__startswith="bench/").delete()
            Image.objects.filter(sha256__startswith=SHA_PREFIX).delete()
            _copy_images(rows)
    space = EmbeddingSpace.objects.ensure(name=space_name(distribution), dimensions=DIMS)
    if Embedding.objects.filter(space=space).count() == rows and _index_exists(space):
        print(f"reusing {rows:,} vectors in {space.name!r} and its HNSW index", flush=True)
        return space
    print(f"loading {rows:,} {distribution} vectors into {space.name!r} ...", flush=True)
    started = time.perf_counter()
    with transaction.atomic():
        with connection.schema_editor() as editor:  # build the index once, after loading
            if _index_exists(space):
                editor.remove_index(Embedding, space.hnsw_index())
        Embedding.objects.filter(space=space).delete()
        image_ids = _bench_image_ids()
        rng = np.random.default_rng(SEED)
        draw = sampler(distribution, rng)
        connection.ensure_connection()
        register_vector(connection.connection)  # binary COPY of vectors; before the cursor is made
        with connection.cursor() as cursor, cursor.cursor.copy(
                "COPY catalog_embedding (image_id, space_id, vector, created_at) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(["int8", "int8", "vector", "timestamptz"])
            now = timezone.now()
            for start in range(0, rows, 10_000):
                for image_id, vector in zip(image_ids[start:start + 10_000], draw(rng, min(10_000, rows - start))):
                    copy.write_row((image_id, space.pk, vector, now))
    print(f"  loaded in {time.perf_counter() - started:.1f} s", flush=True)
    started = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute("SET maintenance_work_mem = '1GB'")  # the whole graph fits: a fast in-memory build
        cursor.execute("SET max_parallel_maintenance_workers = 2")
        with connection.schema_editor() as editor:
            editor.add_index(Embedding, space.hnsw_index())
        cursor.execute("RESET maintenance_work_mem")
        cursor.execute("RESET max_parallel_maintenance_workers")
    print(f"  HNSW index (m=16, ef_construction=64) built in {time.perf_counter() - started:.1f} s", flush=True)
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE catalog_image")
        cursor.execute("VACUUM ANALYZE catalog_embedding")
    return space


def _copy_images(rows: int) -> None:
    rng = np.random.default_rng(SEED + 1)
    cities = rng.choice([c for c, _ in CITIES], size=rows, p=[p for _, p in CITIES])
    widths = 100 + rng.integers(0, 1000, size=rows)
    heights = 100 + rng.integers(0, 1000, size=rows)
    groups = rng.integers(0, rows // 4, size=rows)
    now = timezone.now()
    with connection.cursor() as cursor, cursor.cursor.copy(
            "COPY catalog_image (file, thumbnail, sha256, original_name, width, height, city, group_key, "
            "source, source_ref, created_at, status, status_reason) FROM STDIN") as copy:
        for i in range(rows):
            copy.write_row((f"bench/{i}.jpg", "", f"{SHA_PREFIX}{i:063x}", f"{i}.jpg", int(widths[i]),
                            int(heights[i]), str(cities[i]), f"g{groups[i]}", "folder", "", now, "embedded", ""))


def _bench_image_ids() -> list[int]:
    return list(Image.objects.filter(sha256__startswith=SHA_PREFIX).order_by("sha256").values_list("id", flat=True))


def _index_exists(space: EmbeddingSpace) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_indexes WHERE indexname = %s", [space.index_name])
        return cursor.fetchone() is not None


def load_vectors(space: EmbeddingSpace):
    """(image ids, vectors, cities, widths) as stored, for the ground truth."""
    connection.ensure_connection()
    register_vector(connection.connection)
    with connection.cursor() as cursor:
        cursor.execute("SELECT e.image_id, e.vector, i.city, i.width FROM catalog_embedding e "
                       "JOIN catalog_image i ON i.id = e.image_id WHERE e.space_id = %s", [space.pk])
        rows = cursor.fetchall()
    ids, vectors, cities, widths = zip(*rows)
    vectors = np.stack([v.to_numpy() if hasattr(v, "to_numpy") else v for v in vectors]).astype(np.float32)
    return np.array(ids), vectors, np.array(cities), np.array(widths)


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000


def exact_scan(space, image_filter, vector, k):
    """A plain exact query: ORDER BY the distance of the bare column (not the index expression)."""
    with transaction.atomic():
        return list(Embedding.objects.filter(space=space).filter(image_filter)
                    .annotate(distance=CosineDistance("vector", vector))
                    .order_by("distance", "image_id").values_list("image_id", flat=True)[:k])


def naive_hnsw(space, image_filter, vector, k):
    """The query before this work: ORDER BY the indexed distance with the filter, pgvector defaults."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL hnsw.ef_search = 40")
        cursor.execute("SET LOCAL hnsw.iterative_scan = off")
        return list(Embedding.objects.filter(space=space).filter(image_filter)
                    .annotate(distance=CosineDistance(space.typed_vector(), vector))
                    .order_by("distance").values_list("image_id", flat=True)[:k])


def naive_plan(space, image_filter, vector, k) -> str:
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL hnsw.ef_search = 40")
        plan = (Embedding.objects.filter(space=space).filter(image_filter)
                .annotate(distance=CosineDistance(space.typed_vector(), vector))
                .order_by("distance").values_list("image_id")[:k].explain())
    return "hnsw" if space.index_name in plan else "exact"


class FallbackCounter(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.count = 0

    def emit(self, record):
        self.count += "ran out" in record.getMessage()


def timed(fn, queries) -> tuple[list[float], list]:
    """Run every query twice and time the second pass: each method is measured with the pages it
    uses as cached as they get (with 128 MB shared_buffers, whatever ran before would otherwise
    decide how much comes from the OS cache)."""
    for q in queries:
        fn(q)
    times, results = [], []
    for q in queries:
        started = time.perf_counter()
        results.append(fn(q))
        times.append(_ms(started))
    return times, results


def pct(values, q) -> float:
    return float(np.percentile(values, q))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--distribution", choices=["rank32", "uniform"], default="rank32")
    args = parser.parse_args()

    space = fill(args.rows, args.distribution)
    ids, vectors, cities, widths = load_vectors(space)
    queries = sampler(args.distribution, np.random.default_rng(SEED))(np.random.default_rng(SEED + 2), args.queries)
    counter = FallbackCounter()
    logging.getLogger(vector_search.__name__).addHandler(counter)
    logging.getLogger(vector_search.__name__).setLevel(logging.DEBUG)

    with connection.cursor() as cursor:
        cursor.execute("SELECT current_setting('shared_buffers'), current_setting('server_version'), "
                       "(SELECT extversion FROM pg_extension WHERE extname = 'vector'), "
                       "pg_size_pretty(pg_relation_size(%s::regclass))", [space.index_name])
        shared_buffers, server, pgvector, index_size = cursor.fetchone()
    print(f"\n{len(ids):,} x {DIMS}-d {args.distribution} vectors in {space.name!r}; k={args.k}, "
          f"{args.queries} queries per case; PostgreSQL {server.split()[0]}, pgvector {pgvector}, "
          f"shared_buffers {shared_buffers}, HNSW index {index_size}; load average {os.getloadavg()[0]:.2f}\n")
    header = ("| case | matching | exact scan p50 / p95 ms | nearest() p50 / p95 ms | nearest() recall@k (min) "
              "| nearest() plan | naive HNSW rows returned (min) | naive recall@k | naive plan |")
    print(header)
    print("|---|---:|---:|---:|---:|---|---:|---:|---|")
    for label, image_filter, mask_of in CASES:
        mask = mask_of(cities, widths)
        truths = []
        for q in queries:
            distances = 1.0 - vectors[mask] @ q
            truths.append(set(ids[mask][np.argsort(distances, kind="stable")[:args.k]].tolist()))
        plan = vector_search.plan_for(space=space, image_filter=image_filter)
        def ours(q, image_filter=image_filter):
            return vector_search.nearest(space=space, vector=q, image_filter=image_filter, offset=0, limit=args.k)
        counter.count = 0
        ours_ms, results = timed(ours, queries)
        for found in results:
            assert len(found) == min(args.k, mask.sum())
        ours_recall = [len({n.image_id for n in found} & truth) / len(truth) for found, truth in zip(results, truths)]
        naive = [naive_hnsw(space, image_filter, q, args.k) for q in queries]
        naive_count = [len(found) for found in naive]
        naive_recall = [len(set(found) & truth) / len(truth) for found, truth in zip(naive, truths)]
        exact_ms, results = timed(lambda q: exact_scan(space, image_filter, q, args.k), queries)
        for found, truth in zip(results, truths):
            assert len(set(found) & truth) >= len(truth) - 1  # float32 near-ties aside, the same rows
        fallback = f", rest exact in {counter.count // 2}/{args.queries}" if counter.count else ""
        print(f"| {label} | {mask.sum():,} | {pct(exact_ms, 50):.1f} / {pct(exact_ms, 95):.1f} "
              f"| {pct(ours_ms, 50):.1f} / {pct(ours_ms, 95):.1f} "
              f"| {statistics.mean(ours_recall):.3f} ({min(ours_recall):.1f}) | {plan}{fallback} "
              f"| {statistics.mean(naive_count):.1f} ({min(naive_count)}) | {statistics.mean(naive_recall):.3f} "
              f"| {naive_plan(space, image_filter, queries[0], args.k)} |", flush=True)
    print(f"\nload average at the end {os.getloadavg()[0]:.2f} (the bench shares the machine's 2 cores)")


if __name__ == "__main__":
    main()
