"""``manage.py export_manifest``: every image's metadata and the storage name of its file, as a
manifest that ``import_images --manifest FILE --base MEDIA_ROOT`` imports elsewhere."""

from __future__ import annotations

import csv
import json
import os
import sys
import tempfile
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from catalog.ingest.manifests import export_rows, guarded

CSV_COLUMNS = ("path", "name", "city", "group_key", "taken_at", "title", "tags", "attributes")


class Command(BaseCommand):
    help = ("Write every image's metadata (city, group key, taken-at, title, tags, attributes) and its file's "
            "storage name as a CSV or JSON Lines manifest, row by row.")

    def add_arguments(self, parser):
        parser.add_argument("--output", type=Path, help="File to write (default: standard output).")
        parser.add_argument("--format", choices=("csv", "jsonl"),
                            help="Default: from the output's suffix (.jsonl), else csv.")

    def handle(self, *args, output: Path | None, format: str | None, **options):
        fmt = format or ("jsonl" if output is not None and output.suffix.lower() in (".jsonl", ".ndjson") else "csv")
        if output is None:
            count = _write(sys.stdout, fmt)
        else:
            # Written beside the target and renamed into place: never a half-written manifest.
            folder = output.resolve().parent
            if not folder.is_dir():
                raise CommandError(f"{folder} is not a folder.")
            handle, temporary = tempfile.mkstemp(prefix=".export-", suffix=".tmp", dir=folder)
            try:
                with os.fdopen(handle, "w", encoding="utf-8", newline="") as stream:
                    count = _write(stream, fmt)
                os.replace(temporary, output)
            except BaseException:
                Path(temporary).unlink(missing_ok=True)
                raise
        self.stderr.write(f"Exported {count} image(s).")


def _write(stream, fmt: str) -> int:
    count = 0
    writer = csv.DictWriter(stream, fieldnames=CSV_COLUMNS, lineterminator="\n") if fmt == "csv" else None
    if writer is not None:
        writer.writeheader()
    for row in export_rows():
        count += 1
        if writer is None:
            stream.write(json.dumps(row, ensure_ascii=False) + "\n")
            continue
        # Tags as a JSON list: ";"-joined text would not survive a tag holding ";" or starting with "[".
        cells = {**row, "tags": json.dumps(row["tags"], ensure_ascii=False) if row.get("tags") else "",
                 "attributes": json.dumps(row["attributes"], ensure_ascii=False) if row.get("attributes") else ""}
        writer.writerow({column: guarded(str(value)) for column, value in cells.items()})
    return count
