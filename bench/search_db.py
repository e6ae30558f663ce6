"""Database-side search benchmark: exact scan vs ``catalog.vector_search.nearest`` vs naive HNSW.

Run:  .venv/bin/python bench/search_db.py [--rows 100000] [--queries 50] [--k 10]

Uses its own data folder (IMAGESEARCH_DATA_DIR, default var/bench), never the user's collection.
"""
from __future__ import annotations

import argparse
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
from pgvector.django import CosineDistance  # noqa: E402
from pgvector.psycopg import register_vector  # noqa: E402

from catalog.models import Embedding, EmbeddingSpace, Image  # noqa: E402

DIMS = 512
SPACE_NAME = f"bench/random-{DIMS}"
SHA_PREFIX = "b"  # bench images' sha256 start with this, so they are easy to tell apart

# city share per row; width = 100 + u, u uniform in 0..999 (unindexed column)
CITIES = [("Reykjavik", 0.001), ("Oslo", 0.01), ("Lisbon", 0.10), ("Paris", 0.389), ("Berlin", 0.50)]
CASES = [  # (label, filter, what it hits)
    ("no filter", Q(), "100%"),
    ("0.1% city", Q(image__city__in=["Reykjavik"]), "0.1%, city btree index"),
    ("1% width", Q(image__width__lte=109), "1%, no index"),
    ("10% city", Q(image__city__in=["Lisbon"]), "10%, city btree index"),
    ("50% width", Q(image__width__lte=599), "50%, no index"),
]


def unit_vectors(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.standard_normal((n, DIMS), dtype=np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def fill(rows: int) -> tuple[EmbeddingSpace, float | None]:
    """Fill the bench space with ``rows`` random vectors unless it already holds exactly that many."""
    call_command("migrate", verbosity=0)
    space = EmbeddingSpace.objects.ensure(name=SPACE_NAME, dimensions=DIMS)
    if Embedding.objects.filter(space=space).count() == rows and _index_exists(space):
        return space, None
    print(f"filling {rows:,} rows of {DIMS}-d vectors ...", flush=True)
    started = time.perf_counter()
    with transaction.atomic():
        with connection.schema_editor() as editor:  # build once after loading, not row by row
            if _index_exists(space):
                editor.remove_index(Embedding, space.hnsw_index())
        Embedding.objects.filter(space=space).delete()
        Image.objects.filter(sha256__startswith=SHA_PREFIX).delete()
        rng = np.random.default_rng(1234)
        cities = rng.choice([c for c, _ in CITIES], size=rows, p=[p for _, p in CITIES])
        widths = 100 + rng.integers(0, 1000, size=rows)
        heights = 100 + rng.integers(0, 1000, size=rows)
        groups = rng.integers(0, rows // 4, size=rows)
        connection.ensure_connection()
        register_vector(connection.connection)  # binary COPY of vectors; before the cursor is made
        with connection.cursor() as cursor:
            cursor.execute("SELECT coalesce(max(id), 0) FROM catalog_image")
            first_id = cursor.fetchone()[0] + 1
            pg = cursor.cursor  # the psycopg cursor, for COPY
            with pg.copy("COPY catalog_image (id, file, thumbnail, sha256, original_name, width, height, city, "
                         "group_key, source, source_ref, created_at, status, status_reason) FROM STDIN") as copy:
                for i in range(rows):
                    copy.write_row((first_id + i, f"bench/{i}.jpg", "", f"{SHA_PREFIX}{i:063x}", f"{i}.jpg",
                                    int(widths[i]), int(heights[i]), str(cities[i]), f"g{groups[i]}", "folder",
                                    "", "2025-01-01T00:00:00Z", "embedded", ""))
            cursor.execute("SELECT setval(pg_get_serial_sequence('catalog_image', 'id'), %s)",
                           [first_id + rows - 1])
            with pg.copy("COPY catalog_embedding (image_id, space_id, vector, created_at) "
                         "FROM STDIN WITH (FORMAT BINARY)") as copy:
                copy.set_types(["int8", "int8", "vector", "timestamptz"])
                created = django.utils.timezone.now()
                for start in range(0, rows, 10_000):
                    for j, vector in enumerate(unit_vectors(rng, min(10_000, rows - start))):
                        copy.write_row((first_id + start + j, space.pk, vector, created))
    print(f"  loaded in {time.perf_counter() - started:.1f} s", flush=True)
    started = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute("SET maintenance_work_mem = '1GB'")
        cursor.execute("SET max_parallel_maintenance_workers = 2")
        with connection.schema_editor() as editor:
            editor.add_index(Embedding, space.hnsw_index())
        cursor.execute("RESET maintenance_work_mem")
        cursor.execute("RESET max_parallel_maintenance_workers")
    build_s = time.perf_counter() - started
    print(f"  HNSW index built in {build_s:.1f} s", flush=True)
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE catalog_image")
        cursor.execute("VACUUM ANALYZE catalog_embedding")
    return space, build_s


def _index_exists(space: EmbeddingSpace) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_indexes WHERE indexname = %s", [space.index_name])
        return cursor.fetchone() is not None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args()
    space, build_s = fill(args.rows)


if __name__ == "__main__":
    main()
