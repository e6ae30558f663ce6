"""End-to-end ``POST /api/search/`` latency, split into text encoding, database and API overhead.

Run:  .venv/bin/python bench/search_api.py [--queries 50]   (after bench/search_db.py has filled var/bench)

Starts gunicorn on 127.0.0.1 (loopback only) against the benchmark database, with the ViT-B-32
architecture on random weights (same cost as the real English model; the multilingual default costs
more in text encoding). The bench vectors are copied into that model's embedding space once.
Prints p50/p95 of: client-measured total, server-reported encode and database time, and the rest
(HTTP, Django, DRF, serialisation) as a share of the total.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
ENV = {
    "DJANGO_SETTINGS_MODULE": "imagesearch.settings",
    "IMAGESEARCH_DATA_DIR": str(ROOT / "var" / "bench"),
    "CLIP_MODEL": "ViT-B-32",
    "CLIP_RANDOM_INIT": "1",
    "IMAGESEARCH_LOG_LEVEL": "WARNING",
}
for key, value in ENV.items():
    os.environ.setdefault(key, value)

import django  # noqa: E402

django.setup()

from django.db import connection, transaction  # noqa: E402

from catalog.embedder import get_embedder  # noqa: E402
from catalog.models import Embedding, EmbeddingSpace  # noqa: E402
from catalog.spaces import activate, ensure_space  # noqa: E402

SOURCE_SPACE = "bench/clustered-100000-seed0-512d"  # filled by bench/search_db.py (--rows 100000)
QUERIES = ["snow-covered peaks in the sun", "一只毛茸茸的小狗在草地上奔跑", "a red car parked by the sea",
           "city lights at night", "a bowl of noodles", "old wooden boat", "family portrait", "夕阳下的海滩"]


def prepare_space() -> int:
    """Give the API's model space the bench vectors (copied once, then reused)."""
    embedder = get_embedder()
    source = EmbeddingSpace.objects.get(name=SOURCE_SPACE)
    target = ensure_space(config=embedder.config, dimensions=embedder.dimensions)
    if target.state != EmbeddingSpace.State.ACTIVE:
        activate(name=target.name, force=True)  # searches read the active space (catalog/spaces.py)
    rows = Embedding.objects.filter(space=source).count()
    if Embedding.objects.filter(space=target).count() != rows:
        print(f"copying {rows:,} vectors into {target.name} (one time) ...", flush=True)
        Embedding.objects.filter(space=target).delete()
        with transaction.atomic(), connection.schema_editor() as editor:
            editor.remove_index(Embedding, target.hnsw_index())  # build once after the copy, not row by row
            with connection.cursor() as cursor:
                # A bulk copy between two spaces; the ORM would pull 100k vectors through Python.
                cursor.execute("SET LOCAL maintenance_work_mem = '1GB'")
                cursor.execute(
                    "INSERT INTO catalog_embedding (image_id, space_id, vector, created_at) "
                    "SELECT image_id, %s, vector, now() FROM catalog_embedding WHERE space_id = %s",
                    [target.pk, source.pk])
            editor.add_index(Embedding, target.hnsw_index())
    with connection.cursor() as cursor:
        # Fresh statistics, or the planner takes the new space for a small one (exact plan).
        cursor.execute("ANALYZE catalog_embedding")
    return rows


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, payload: dict) -> tuple[float, dict]:
    request = urllib.request.Request(url, data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=60) as response:
        body = json.loads(response.read())
    return (time.perf_counter() - started) * 1000, body


def pct(values, q):
    return statistics.quantiles(values, n=100)[q - 1] if len(values) > 1 else values[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--top-k", type=int, default=10)
    args = parser.parse_args()

    rows = prepare_space()
    port = free_port()
    server = subprocess.Popen(
        [str(ROOT / ".venv/bin/gunicorn"), "imagesearch.wsgi", "--bind", f"127.0.0.1:{port}", "--workers", "1",
         "--threads", "4", "--log-level", "warning"], cwd=ROOT, env={**os.environ})
    url = f"http://127.0.0.1:{port}/api/search/"
    try:
        for _ in range(100):
            try:
                post(url, {"q": "warm up", "top_k": args.top_k})
                break
            except OSError:
                time.sleep(0.5)
        for q in QUERIES:  # warm the model and the index pages
            post(url, {"q": q, "top_k": args.top_k})
        totals, encodes, databases, rests = [], [], [], []
        for i in range(args.queries):
            total, body = post(url, {"q": f"{QUERIES[i % len(QUERIES)]} {i}", "top_k": args.top_k})
            assert len(body["results"]) == args.top_k
            encode, database = body["timing"]["encode_ms"], body["timing"]["database_ms"]
            totals.append(total), encodes.append(encode), databases.append(database)
            rests.append(total - encode - database)
    finally:
        server.terminate()
        server.wait(timeout=30)

    print(f"\nPOST /api/search/ text query, top_k={args.top_k}, {rows:,} vectors, {args.queries} queries, "
          f"model {get_embedder().space_name}, gunicorn 1 process on 127.0.0.1")
    print(f"{'part':<28}{'p50 ms':>10}{'p95 ms':>10}{'share of total (p50)':>24}")
    p50_total = statistics.median(totals)
    for label, values in (("total (client-measured)", totals), ("text encoding", encodes),
                          ("database", databases), ("API overhead (the rest)", rests)):
        print(f"{label:<28}{statistics.median(values):>10.2f}{pct(values, 95):>10.2f}"
              f"{statistics.median(values) / p50_total:>23.1%}")
    shares = sorted(r / t for r, t in zip(rests, totals))
    print(f"API overhead share per request: median {statistics.median(shares):.1%}, max {shares[-1]:.1%}")


if __name__ == "__main__":
    main()
