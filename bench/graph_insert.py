"""What a denser graph costs imports: the store stage (rows and vectors of a batch, one transaction,
files aside: ``pipeline._store_batch``) into a space whose HNSW index was built with each
``ef_construction``, side by side in one run, alternating batches so that both see the same load.

    .venv/bin/python bench/graph_insert.py                       # 128 against 256, 2,048 rows each
    .venv/bin/python bench/graph_insert.py --ef-construction 64 128 256 --rows 4096
    .venv/bin/python bench/graph_insert.py --value-graphs         # the space's graph alone against it
                                                                 # plus value graphs (manage.py models graphs)

With ``--value-graphs`` the images carry a collection's metadata (a batch is one trip: one city, 60%
of them in one of four cities with graphs; 61% landscape, 32% portrait, 7% square; a year among 18),
and the second space gets the value graphs ``refresh_filter_graphs`` builds over its base rows (a
value needs 1.5% of them, as 15,000 of 1,000,000 images): most rows then enter three or four graphs.

Each space starts with ``--base`` rows (the graph's depth matters: an insert walks it), then the
measured rows go in. 512-d random unit vectors; its own data folder (var/bench-graph-insert).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

os.environ.setdefault("CLIP_MODEL", "ViT-S-32")
os.environ.setdefault("CLIP_RANDOM_INIT", "1")
os.environ.setdefault("IMAGESEARCH_DATA_DIR", str(ROOT / "var" / "bench-graph-insert"))
os.environ.setdefault("IMAGESEARCH_LOG_LEVEL", "WARNING")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "imagesearch.settings")

DIMS = 512


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ef-construction", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--rows", type=int, default=2048, help="measured rows per space")
    parser.add_argument("--base", type=int, default=20_000, help="rows in each space before measuring")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--value-graphs", action="store_true",
                        help="compare a space without value graphs against one with them (ef_construction 256)")
    args = parser.parse_args()
    if args.value_graphs:
        args.ef_construction = [256, 256]

    import django

    django.setup()
    from datetime import datetime, timezone

    import numpy as np
    from django.core.management import call_command
    from django.db import connection

    from catalog import spaces as space_services
    from catalog.imaging import ImageMetadata
    from catalog.ingest import pipeline
    from catalog.models import EmbeddingSpace, Image

    call_command("migrate", verbosity=0)
    Image.objects.all().delete()
    EmbeddingSpace.objects.filter(name__startswith="bench/graph-insert").delete()
    rng = np.random.default_rng(0)
    serial = iter(range(10**9))

    cities = ["Springfield", "Paris", "London", "Tokyo", *(f"town {i}" for i in range(100))]
    city_weights = np.array([0.25, 0.15, 0.12, 0.08, *[0.40 / 100] * 100])
    sizes = [(640, 480)] * 61 + [(480, 640)] * 32 + [(500, 500)] * 7

    def batch_of(count: int) -> list:
        vectors = rng.normal(size=(count, DIMS)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        items = []
        for vector in vectors:
            n = next(serial)
            prepared = pipeline._Prepared(item=pipeline.IngestItem.from_bytes(f"g{n}.jpg", b""), index=n,
                                          sha256=hashlib.sha256(f"graph-insert-{n}".encode()).hexdigest(),
                                          held=b"", thumbnail=b"")
            width, height, taken_at = 640, 480, None
            if args.value_graphs:
                width, height = sizes[rng.integers(len(sizes))]
                taken_at = datetime(int(rng.integers(2008, 2026)), 6, 1, tzinfo=timezone.utc)
            prepared.metadata = ImageMetadata(width=width, height=height, format="JPEG", taken_at=taken_at,
                                              latitude=None, longitude=None)
            items.append((prepared, vector))
        return items

    def store(space, items) -> None:
        city = str(rng.choice(cities, p=city_weights)) if args.value_graphs else ""
        outcomes = pipeline._store_batch([(p, [(space, v)]) for p, v in items],
                                         options=pipeline.IngestOptions(source=Image.Source.FOLDER, city=city),
                                         on_added=None, write_files=lambda batch: None)
        assert all(o.status == "added" for o in outcomes)

    spaces = []
    for number, efc in enumerate(args.ef_construction):
        space = EmbeddingSpace.objects.create(name=f"bench/graph-insert-{number}-efc{efc}", dimensions=DIMS)
        for start in range(0, args.base, 1024):  # the base rows, then the graph over them
            store(space, batch_of(min(1024, args.base - start)))
        with connection.cursor() as cursor:
            cursor.execute("SET maintenance_work_mem = '1GB'")
            cursor.execute(f'CREATE INDEX "{space.index_name}" ON catalog_embedding USING hnsw '
                           f"((vector::halfvec({DIMS})) halfvec_ip_ops) WITH (m = {EmbeddingSpace.HNSW_M}, "
                           f"ef_construction = {efc}) WHERE space_id = {space.pk}")
        label = efc
        if args.value_graphs:
            graphs = []
            if number:
                graphs = space_services.refresh_filter_graphs(name=space.name, min_rows=args.base * 3 // 200)
            label = f"{'with' if number else 'without'} value graphs ({len(graphs)})"
        spaces.append((label, space))
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE catalog_embedding")
    seconds = {label: 0.0 for label, _ in spaces}
    print(f"{len(spaces)} spaces of {args.base:,} rows; load average {os.getloadavg()[0]:.1f}", flush=True)
    for _ in range(0, args.rows, args.batch):
        for efc, space in spaces:  # alternating: both see the same load
            items = batch_of(args.batch)
            started = time.perf_counter()
            store(space, items)
            seconds[efc] += time.perf_counter() - started
    print(f"\n| {'graphs' if args.value_graphs else 'ef_construction'} | store rows + vectors, images/s "
          "| relative |\n|---|---:|---:|")
    first = args.rows / seconds[spaces[0][0]]
    for efc, _ in spaces:
        rate = args.rows / seconds[efc]
        print(f"| {efc} | {rate:.0f} | {rate / first:.2f} |")
    print(f"(m={EmbeddingSpace.HNSW_M}, batch {args.batch}, {args.rows:,} rows each after {args.base:,}; "
          f"load average at the end {os.getloadavg()[0]:.1f})")
    Image.objects.all().delete()
    for _, space in spaces:
        space.delete()


if __name__ == "__main__":
    main()
