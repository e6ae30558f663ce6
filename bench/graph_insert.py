"""What a denser graph costs imports: the store stage (rows and vectors of a batch, one transaction,
files aside: ``pipeline._store_batch``) into a space whose HNSW index was built with each
``ef_construction``, side by side in one run, alternating batches so that both see the same load.

    .venv/bin/python bench/graph_insert.py                       # 128 against 256, 2,048 rows each
    .venv/bin/python bench/graph_insert.py --ef-construction 64 128 256 --rows 4096

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
    args = parser.parse_args()

    import django

    django.setup()
    import numpy as np
    from django.core.management import call_command
    from django.db import connection

    from catalog.imaging import ImageMetadata
    from catalog.ingest import pipeline
    from catalog.models import EmbeddingSpace, Image

    call_command("migrate", verbosity=0)
    Image.objects.all().delete()
    EmbeddingSpace.objects.filter(name__startswith="bench/graph-insert").delete()
    rng = np.random.default_rng(0)
    options = pipeline.IngestOptions(source=Image.Source.FOLDER)
    serial = iter(range(10**9))

    def batch_of(count: int) -> list:
        vectors = rng.normal(size=(count, DIMS)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        items = []
        for vector in vectors:
            n = next(serial)
            prepared = pipeline._Prepared(item=pipeline.IngestItem.from_bytes(f"g{n}.jpg", b""), index=n,
                                          sha256=hashlib.sha256(f"graph-insert-{n}".encode()).hexdigest(),
                                          held=b"", thumbnail=b"")
            prepared.metadata = ImageMetadata(width=640, height=480, format="JPEG", taken_at=None,
                                              latitude=None, longitude=None)
            items.append((prepared, vector))
        return items

    def store(space, items) -> None:
        outcomes = pipeline._store_batch([(p, [(space, v)]) for p, v in items], options=options, on_added=None,
                                         write_files=lambda batch: None)
        assert all(o.status == "added" for o in outcomes)

    spaces = []
    for efc in args.ef_construction:
        space = EmbeddingSpace.objects.create(name=f"bench/graph-insert-efc{efc}", dimensions=DIMS)
        for start in range(0, args.base, 1024):  # the base rows, then the graph over them
            store(space, batch_of(min(1024, args.base - start)))
        with connection.cursor() as cursor:
            cursor.execute("SET maintenance_work_mem = '1GB'")
            cursor.execute(f'CREATE INDEX "{space.index_name}" ON catalog_embedding USING hnsw '
                           f"((vector::halfvec({DIMS})) halfvec_ip_ops) WITH (m = {EmbeddingSpace.HNSW_M}, "
                           f"ef_construction = {efc}) WHERE space_id = {space.pk}")
        spaces.append((efc, space))
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE catalog_embedding")
    seconds = {efc: 0.0 for efc, _ in spaces}
    print(f"{len(spaces)} spaces of {args.base:,} rows; load average {os.getloadavg()[0]:.1f}", flush=True)
    for _ in range(0, args.rows, args.batch):
        for efc, space in spaces:  # alternating: both see the same load
            items = batch_of(args.batch)
            started = time.perf_counter()
            store(space, items)
            seconds[efc] += time.perf_counter() - started
    print("\n| ef_construction | store rows + vectors, images/s | relative |\n|---:|---:|---:|")
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
