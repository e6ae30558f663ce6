"""Bulk row writes of the store stage: embeddings by binary COPY.

``bulk_create`` formats each half-precision vector as text, and psycopg then parses the statement
holding a batch of them: together ~1 ms a 512-d vector on the 2-core VM, more than the rest of the
rows cost (bench/ingest.py, store without the index). Binary COPY takes the vectors as numpy lays
them out. The database's triggers still fill the embeddings' copies of the image columns.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime, timedelta, timezone

import numpy as np

from django.db import connections
from django.utils import timezone as dj_timezone

_SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + b"\x00" * 8  # header of COPY ... (FORMAT BINARY), no flags, no extension
_TRAILER = b"\xff\xff"
_PG_EPOCH = datetime(2000, 1, 1, tzinfo=timezone.utc)


def _record(dims: int) -> np.dtype:
    """One row: field count, then (length, value) of image_id, space_id, vector (halfvec's binary
    form: dimensions, unused, big-endian halves) and created_at (microseconds since 2000)."""
    return np.dtype([("fields", ">i2"), ("l1", ">i4"), ("image_id", ">i8"), ("l2", ">i4"), ("space_id", ">i8"),
                     ("l3", ">i4"), ("dims", ">i2"), ("unused", ">i2"), ("vector", ">f2", (dims,)),
                     ("l4", ">i4"), ("created_at", ">i8")])


def copy_embeddings(rows: Iterable[tuple[int, int, np.ndarray]], *, using: str = "default") -> int:
    """Insert an embedding for each (image id, space id, unit vector); returns how many. Runs in the
    caller's transaction; a row the constraints refuse fails the whole COPY, like bulk_create."""
    groups: dict[int, list[tuple[int, int, np.ndarray]]] = defaultdict(list)
    for image_id, space_id, vector in rows:
        vector = np.asarray(vector, dtype=np.float32).ravel()
        groups[len(vector)].append((image_id, space_id, vector))
    count = sum(len(group) for group in groups.values())
    if not count:
        return 0
    created = (dj_timezone.now() - _PG_EPOCH) // timedelta(microseconds=1)
    db = connections[using]
    with db.wrap_database_errors, db.cursor() as cursor, cursor.cursor.copy(
            "COPY catalog_embedding (image_id, space_id, vector, created_at) FROM STDIN (FORMAT BINARY)") as copy:
        copy.write(_SIGNATURE)
        for dims, group in groups.items():
            data = np.zeros(len(group), dtype=_record(dims))
            data["fields"], data["l1"], data["l2"], data["l4"] = 4, 8, 8, 8
            data["l3"], data["dims"] = 4 + 2 * dims, dims
            data["image_id"] = [image_id for image_id, _, _ in group]
            data["space_id"] = [space_id for _, space_id, _ in group]
            data["vector"] = np.stack([vector for _, _, vector in group])
            data["created_at"] = created
            copy.write(data.tobytes())
        copy.write(_TRAILER)
    return count

