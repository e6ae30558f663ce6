"""Browse pages (``catalog.search.images_browse``) on the search bench's collection, side by side:
with the ``image_browse_*`` indexes and the capped count (as shipped), and without them, with an
exact count (as before migration 0015).

Run:  .venv/bin/python bench/browse.py [--rows 1000000]

Needs the collection of ``bench/search_db.py --rows N`` (built once, in IMAGESEARCH_DATA_DIR, default
var/bench). The indexes are dropped and rebuilt on that bench database only, never a user's.
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
os.environ.setdefault("IMAGESEARCH_LOG_LEVEL", "WARNING")

import django  # noqa: E402

django.setup()

from django.db import connection  # noqa: E402

from catalog import search  # noqa: E402
from catalog.models import Image  # noqa: E402
from catalog.search import ImageFilters, images_browse  # noqa: E402

CASES = [("everything", ImageFilters()), ("city London", ImageFilters(cities=("London",))),
         ("portrait", ImageFilters(orientation="portrait")),
         ("2015-2019", ImageFilters(taken_from=__import__("datetime").date(2015, 1, 1),
                                    taken_to=__import__("datetime").date(2019, 12, 31)))]
INDEXES = [index for index in Image._meta.indexes if index.name.startswith("image_browse_")]


def timed(filters, sort: str, page: int, repeat: int) -> float:
    images_browse(filters=filters, sort=sort, page=page)
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        images_browse(filters=filters, sort=sort, page=page)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    count = Image.objects.count()
    print(f"{count:,} images; load average {os.getloadavg()[0]:.2f}; median of {args.repeat} ms per page "
          f"(24 a page), the count included")
    rows = {}
    for shipped in (False, True):
        with connection.schema_editor(atomic=False) as editor:
            for index in INDEXES:
                editor.execute(f"DROP INDEX IF EXISTS {editor.quote_name(index.name)}")
                if shipped:
                    editor.add_index(Image, index)
        connection.cursor().execute("ANALYZE catalog_image")
        search.BROWSE_COUNT_LIMIT = 10_000 if shipped else 10**12  # as before: an exact count
        for label, filters in CASES:
            for sort in ("added", "taken"):
                for page in (1, 50):
                    rows.setdefault((label, sort, page), []).append(timed(filters, sort, page, args.repeat))
    print("| filter | sort | page | before (no index, exact count) | now | ratio |\n|---|---|---:|---:|---:|---:|")
    for (label, sort, page), (before, now) in rows.items():
        print(f"| {label} | {sort} | {page} | {before:.0f} | {now:.0f} | {before / now:.0f}x |")
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
