"""A watched folder (``manage.py watch``): files that appear under it, in sub-folders too, are imported
through the one pipeline once they have settled (size and modification time unchanged for the settle
time), so a file still being copied or synced in is never imported half-written.

Plain polling rather than watchdog: settling needs each waiting file stat-ed again every interval,
and catching up after a restart needs the whole tree walked, which is all a polling observer does;
it also works where change notifications do not (network shares, some container bind mounts).

Restart-safe without a state file: the pipeline skips bytes already stored (SHA-256), and a file
whose path an image row already names, and that has not changed since that row was stored, is
not even read again. What failed is remembered (path, size, times) so a bad file is reported once
per run, and tried again when it changes.

A picture or video deleted in the app is not brought back while its file stays in the folder: the
delete leaves a tombstone (catalog.models.DeletedContent) that the pipeline looks up per batch of
hashes; such a file is one line per run (``include_deleted`` imports it again).
"""

from __future__ import annotations

import io
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from catalog.ingest.names import safe_text
from catalog.ingest.pipeline import IngestItem, IngestOptions, ItemOutcome, ItemRejected, ingest_items
from catalog.ingest.sources import looks_like_image

logger = logging.getLogger(__name__)

# Settled files go to the pipeline at most this many at a time, so a stop request or a new file
# waits for at most one such run.
CHUNK = 256
_LOOKUP = 500  # paths per query when asking which files are already stored

# (size, mtime, ctime in ns). The ctime too: tools that copy a file's mtime along (cp -p, rsync -t) set
# an old mtime on new bytes, but nothing sets the ctime back.
Signature = tuple[int, int, int]


@dataclass
class ScanReport:
    waiting: int = 0  # seen, not settled yet
    outcomes: list[ItemOutcome] = field(default_factory=list)
    known: int = 0  # unchanged files an image row already names: not read


class FolderWatcher:
    """Polls ``root``; ``scan()`` once per interval (``run`` loops until ``stop`` is set)."""

    def __init__(self, root: Path, *, options: IngestOptions, settle: float, all_files: bool = False,
                 include_deleted: bool = False, on_line: Callable[[str], None] = print,
                 clock: Callable[[], float] = time.monotonic):
        self.root = root.resolve()
        self.options = replace(options, skip_deleted=not include_deleted)
        self.settle, self.all_files = settle, all_files
        self.on_line, self.clock = on_line, clock
        self._waiting: dict[Path, tuple[Signature, float]] = {}  # path -> (signature, since when unchanged)
        self._done: dict[Path, Signature] = {}  # imported, already stored or failed, as it was then

    def run(self, *, interval: float, stop: threading.Event) -> None:
        from django.db import close_old_connections

        while not stop.is_set():
            close_old_connections()  # a connection the database dropped while idle is opened again
            try:
                self.scan(stop=stop)
            except Exception as error:  # the database or the folder away for a while: try again later
                logger.exception("scanning %s failed", self.root)
                self.on_line(f"scan failed, trying again in {interval:g} s: {error}")
            stop.wait(interval)

    def scan(self, *, stop: threading.Event | None = None) -> ScanReport:
        report = ScanReport()
        now = self.clock()
        present: dict[Path, Signature] = {}
        for path, signature in self._files():
            present[path] = signature
            if self._done.get(path) == signature:
                continue
            seen = self._waiting.get(path)
            if seen is None or seen[0] != signature:  # new, or still changing: its settle time starts again
                self._waiting[path] = (signature, now)
        for path in [path for path in self._waiting if path not in present]:  # removed before it settled
            del self._waiting[path]
        for path in [path for path in self._done if path not in present]:
            del self._done[path]
        ready = sorted(path for path, (_, since) in self._waiting.items() if now - since >= self.settle)
        report.waiting = len(self._waiting) - len(ready)
        for start in range(0, len(ready), CHUNK):
            if stop is not None and stop.is_set():
                break
            chunk = {path: self._waiting[path][0] for path in ready[start:start + CHUNK]}
            known = _unchanged_since_stored(chunk)
            for path in known:
                self._settled(path, chunk.pop(path))
            report.known += len(known)
            if chunk:
                report.outcomes += self._ingest(chunk, stop=stop)
        return report

    def _ingest(self, chunk: dict[Path, Signature], *, stop: threading.Event | None) -> list[ItemOutcome]:
        def items() -> Iterator[IngestItem]:
            for path, signature in chunk.items():
                if stop is not None and stop.is_set():
                    return  # what is in flight finishes; the rest waits for the next start
                yield IngestItem(name=str(path.relative_to(self.root)), source_ref=str(path),
                                 read=lambda path=path, signature=signature: _read_unchanged(path, signature),
                                 key=path)

        def on_outcome(outcome: ItemOutcome) -> None:  # as each happens: a long catch-up logs as it goes
            self._settled(outcome.key, chunk[outcome.key])
            if outcome.status == ItemOutcome.ADDED:
                frames = f" ({outcome.frames} key frames)" if outcome.frames else ""  # a video
                self.on_line(f"added {outcome.source_ref}{frames}")
            elif outcome.status == ItemOutcome.DUPLICATE:
                self.on_line(f"skipped {outcome.source_ref}: already stored")
            elif outcome.status == ItemOutcome.DELETED:
                self.on_line(f"skipped {outcome.source_ref}: deleted in the app (watch --include-deleted "
                             "imports it again)")
            else:
                self.on_line(f"FAILED {outcome.source_ref}: {outcome.reason}")

        return ingest_items(items(), options=self.options, on_outcome=on_outcome).outcomes

    def _settled(self, path: Path, signature: Signature) -> None:
        # Kept as it was when read: if it changed meanwhile, the next scan sees it waiting again.
        self._waiting.pop(path, None)
        self._done[path] = signature

    def _files(self) -> Iterator[tuple[Path, Signature]]:
        """Regular files under the root (not symbolic links; nothing hidden: sync tools write their
        partial files under dot-names), with the extensions a folder import tries unless ``all_files``."""
        def unreadable(error: OSError) -> None:
            logger.warning("cannot read folder %s: %s", safe_text(str(error.filename)), error.strerror)

        from django.conf import settings

        media = Path(settings.MEDIA_ROOT).resolve()  # a watched data folder must not import our own files
        for folder, folders, names in os.walk(self.root, onerror=unreadable):
            folders[:] = sorted(name for name in folders
                                if not name.startswith(".") and Path(folder, name) != media)
            for name in names:
                path = Path(folder, name)
                if name.startswith(".") or not (self.all_files or looks_like_image(path)):
                    continue
                try:
                    stat = path.lstat()
                except OSError:  # gone since the listing
                    continue
                if stat.st_mode & 0o170000 == 0o100000:  # a regular file (S_ISREG)
                    yield path, (stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)


def _read_unchanged(path: Path, signature: Signature) -> BinaryIO:
    """The file, opened; refused if it changed after it settled, or (on close, once the pipeline has
    read it in chunks) while it was read: it is tried again once it settles."""
    if _signature(path) != signature:
        raise ItemRejected("changed while waiting to be imported; tried again once it settles")
    return _Unchanged(path, signature)


class _Unchanged(io.FileIO):
    def __init__(self, path: Path, signature: Signature):
        super().__init__(path, "rb")
        self._path, self._signature = path, signature

    def close(self) -> None:
        if self.closed:
            return
        super().close()
        if _signature(self._path) != self._signature:
            raise ItemRejected("changed while being read; tried again once it settles")


def _signature(path: Path) -> Signature:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns


def _unchanged_since_stored(files: dict[Path, Signature]) -> set[Path]:
    """The files an image row already names as its source and that were last changed (mtime or
    ctime) before that row was stored: not read again after a restart. Only a shortcut: the pipeline's SHA-256 check
    is what keeps anything from being stored twice."""
    from catalog.models import Image

    known: set[Path] = set()
    # Keyed as the pipeline stores it (printable, cut to the column): a raw non-UTF-8 name cannot
    # even be sent to the database.
    by_ref = {safe_text(str(path))[:1000]: path for path in files}
    refs = list(by_ref)
    for start in range(0, len(refs), _LOOKUP):
        for ref, created_at in Image.objects.filter(source_ref__in=refs[start:start + _LOOKUP]).values_list(
                "source_ref", "created_at"):
            path = by_ref[ref]
            modified = datetime.fromtimestamp(max(files[path][1:]) / 1e9, tz=UTC)
            if modified < created_at:
                known.add(path)
    return known

