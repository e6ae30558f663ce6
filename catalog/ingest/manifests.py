"""Manifests: a CSV (with a header row) or JSON Lines file whose rows each name one image (a file
path under a base folder, an archive member, or a URL) plus its own metadata.

Columns / keys: exactly one of ``path``, ``member``, ``url``; optional ``name`` (the original file
name), ``city``, ``group_key``, ``taken_at`` (ISO 8601; a naive time is UTC), ``title``, ``tags``
(a JSON list, or ``;``-separated text) and ``attributes`` (a JSON object of names to strings,
numbers or booleans; in CSV also one ``attr.<name>`` column per attribute). Empty cells and
nulls are absent.

Read row by row: one line, the rows and one row's attributes are capped (``ManifestLimits``), so
memory stays bounded whatever the file. A bad row is reported as a ``RowError`` with its line
number ("line 7: taken_at: not a date") and reading goes on; a manifest unusable as a whole
(empty, unknown column in the header) raises ``ManifestRejected``.
"""

from __future__ import annotations

import codecs
import csv
import functools
import itertools
import json
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlsplit

from django.conf import settings
from django.db.models import OuterRef, Q, Subquery
from django.db.models.functions import Coalesce
from django.utils.translation import gettext as _

from catalog.ingest.pipeline import IngestItem, ItemMetadata, ItemRejected
from catalog.ingest.remote import name_from_url
from catalog.models import TAKEN_AT_MAX, TAKEN_AT_MIN, Image

# An archive's manifest: one of these at its root (the first found wins).
ARCHIVE_MANIFEST_NAMES = ("manifest.csv", "manifest.jsonl")
SOURCES = ("path", "member", "url")
FIELDS = frozenset({*SOURCES, "name", "city", "group_key", "taken_at", "title", "tags", "attributes"})
ATTRIBUTE_PREFIX = "attr."
MAX_URL_LENGTH = 2048
MAX_TAGS = 100
MAX_TAG_LENGTH = 100  # Image.tags' items
MAX_ATTRIBUTE_NAME = 100
_LENGTHS = {"city": 120, "group_key": 120, "title": 255, "name": 255}
_DRIVE = re.compile(r"^[A-Za-z]:")
_SKIP_CHUNK = 64 * 1024


class ManifestRejected(ValueError):
    """The manifest as a whole is unusable; ``str(exc)`` says why (user-facing)."""


@dataclass(frozen=True)
class ManifestLimits:
    max_rows: int
    max_line_bytes: int
    max_attributes_bytes: int

    @classmethod
    def from_settings(cls, *, max_rows: int | None = None) -> ManifestLimits:
        return cls(max_rows=min(settings.MANIFEST_MAX_ROWS, max_rows or settings.MANIFEST_MAX_ROWS),
                   max_line_bytes=settings.MANIFEST_MAX_LINE_BYTES,
                   max_attributes_bytes=settings.MANIFEST_MAX_ATTRIBUTES_BYTES)


@dataclass(frozen=True)
class ManifestRow:
    line: int
    source: str  # "path", "member" or "url"
    target: str  # a normalised relative path (path, member) or the URL
    name: str    # the original file name to store
    metadata: ItemMetadata


@dataclass(frozen=True)
class RowError:
    line: int
    reason: str

    def __str__(self) -> str:
        return _("line %(line)d: %(reason)s") % {"line": self.line, "reason": self.reason}


class _BadRow(ValueError):
    pass


def manifest_format(name: str, head: bytes = b"") -> str:
    """"csv" or "jsonl": by the file name's suffix, else by the first character (``{``: JSON Lines)."""
    lowered = name.lower()
    if lowered.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    if lowered.endswith(".csv"):
        return "csv"
    return "jsonl" if head.lstrip(codecs.BOM_UTF8 + b" \t\r\n").startswith(b"{") else "csv"


def read_manifest(stream: BinaryIO, *, fmt: str, limits: ManifestLimits) -> Iterator[ManifestRow | RowError]:
    """The rows of a manifest (``fmt``: "csv" or "jsonl"), good ones and bad ones, in file order."""
    lines = _Lines(stream, limits.max_line_bytes)
    rows = _csv_rows(lines) if fmt == "csv" else _jsonl_rows(lines)
    count = 0
    for line, fields in rows:
        count += 1
        if count > limits.max_rows:
            yield RowError(line, _("more than %(max)d rows: this row and the rest are not imported")
                           % {"max": limits.max_rows})
            return
        if isinstance(fields, str):
            yield RowError(line, fields)
            continue
        try:
            yield _row(line, fields, limits)
        except _BadRow as bad:
            yield RowError(line, str(bad))
    if not lines.number:
        raise ManifestRejected(_("the manifest is empty"))
    if not count:
        raise ManifestRejected(_("the manifest has no rows"))


class _Lines:
    """The stream's lines as text, each at most ``max_bytes``; a longer one, or one that is not
    UTF-8, comes as None and its reason is kept in ``bad``, so the row it belongs to can be reported."""

    def __init__(self, stream: BinaryIO, max_bytes: int):
        self.stream, self.max_bytes = stream, max_bytes
        self.number = 0
        self.bad: dict[int, str] = {}

    def __iter__(self) -> Iterator[str | None]:
        while True:
            raw = self.stream.readline(self.max_bytes + 1)
            if not raw:
                return
            self.number += 1
            if len(raw) > self.max_bytes and not raw.endswith(b"\n"):
                while (rest := self.stream.readline(_SKIP_CHUNK)) and not rest.endswith(b"\n"):
                    pass  # the rest of the long line, unread into memory
                self.bad[self.number] = _("longer than %(max)d bytes") % {"max": self.max_bytes}
                yield None
                continue
            if self.number == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8):]
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError:
                self.bad[self.number] = _("not UTF-8 text")
                yield None


def _jsonl_rows(lines: _Lines) -> Iterator[tuple[int, dict | str]]:
    for text in lines:
        if text is None:
            yield lines.number, lines.bad.pop(lines.number)
            continue
        if not text.strip():
            continue
        try:
            value = json.loads(text, parse_constant=_no_constant)
        except (ValueError, RecursionError):
            yield lines.number, _("not valid JSON")
            continue
        if not isinstance(value, dict):
            yield lines.number, _("not a JSON object")
            continue
        unknown = sorted(key for key in value if key not in FIELDS)
        if unknown:
            yield lines.number, _("unknown field \"%(name)s\"") % {"name": unknown[0][:100]}
            continue
        yield lines.number, {key: item for key, item in value.items() if item is not None and item != ""}


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number")


def _csv_rows(lines: _Lines) -> Iterator[tuple[int, dict | str]]:
    # The csv module bounds a field at csv.field_size_limit() (128 KiB), so an unclosed quote
    # cannot swallow the rest of the file into memory.
    reader = csv.reader(("\n" if text is None else text for text in lines), strict=True)
    header: list[str] | None = None
    end = 0
    while True:
        start = end + 1
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            end = reader.line_num
            if header is None:
                raise ManifestRejected(_("line %(line)d: not valid CSV (%(error)s)")
                                       % {"line": end, "error": error}) from None
            yield end, _("not valid CSV (%(error)s)") % {"error": error}
            continue
        end = reader.line_num
        bad = [number for number in range(start, end + 1) if number in lines.bad]
        if bad:
            reason = lines.bad.pop(bad[0])
            for number in bad[1:]:
                lines.bad.pop(number)
            if header is None:
                raise ManifestRejected(_("line %(line)d: %(reason)s") % {"line": bad[0], "reason": reason})
            yield bad[0], reason
            continue
        if not any(cell.strip() for cell in cells):
            continue
        if header is None:
            header = _header(cells, end)
            continue
        if len(cells) > len(header):
            yield start, _("%(cells)d cells, but the header has %(columns)d columns") % {
                "cells": len(cells), "columns": len(header)}
            continue
        fields: dict = {}
        attributes: dict = {}
        for column, cell in zip(header, cells):
            if not cell.strip():
                continue
            cell = unguarded(cell)
            if column.startswith(ATTRIBUTE_PREFIX):
                attributes[column[len(ATTRIBUTE_PREFIX):]] = cell
            else:
                fields[column] = cell
        if attributes:
            fields["attributes"] = (attributes, fields.get("attributes"))
        yield start, fields


def _header(cells: list[str], line: int) -> list[str]:
    # Column names are case-insensitive; attribute names keep their case (as in JSON Lines).
    header = [cell.strip().lower() if not cell.strip().lower().startswith(ATTRIBUTE_PREFIX)
              else ATTRIBUTE_PREFIX + cell.strip()[len(ATTRIBUTE_PREFIX):] for cell in cells]
    for column in header:
        if column not in FIELDS and not (column.startswith(ATTRIBUTE_PREFIX) and len(column) > len(ATTRIBUTE_PREFIX)):
            raise ManifestRejected(_("line %(line)d: unknown column \"%(name)s\" (attributes go in attr.<name> "
                                     "columns)") % {"line": line, "name": column[:100]})
    duplicated = sorted({column for column in header if header.count(column) > 1})
    if duplicated:
        raise ManifestRejected(_("line %(line)d: column \"%(name)s\" appears twice")
                               % {"line": line, "name": duplicated[0][:100]})
    if not set(header) & set(SOURCES):
        raise ManifestRejected(_("line %(line)d: the header needs a path, member or url column") % {"line": line})
    return header


def _row(line: int, fields: dict, limits: ManifestLimits) -> ManifestRow:
    for name, value in fields.items():
        if not _storable(value):
            raise _BadRow(_("%(field)s: holds a null character or an invalid code point") % {"field": name})
    given = [source for source in SOURCES if source in fields]
    if not given:
        raise _BadRow(_("no path, member or url"))
    if len(given) > 1:
        raise _BadRow(_("give only one of path, member or url (got %(given)s)") % {"given": ", ".join(given)})
    source = given[0]
    text = {name: _text(fields, name) for name in (source, "name", "city", "group_key", "title", "taken_at")}
    target = _url(text[source]) if source == "url" else _relative_path(source, text[source])
    name = text["name"] or (name_from_url(target, fallback=urlsplit(target).hostname or "download")
                            if source == "url" else target.rsplit("/", 1)[-1])
    return ManifestRow(line=line, source=source, target=target, name=name, metadata=ItemMetadata(
        city=text["city"], group_key=text["group_key"], title=text["title"] or "",
        taken_at=_taken_at(text["taken_at"]) if text["taken_at"] is not None else None,
        tags=_tags(fields.get("tags")), attributes=_attributes(fields.get("attributes"), limits)))


def _storable(value) -> bool:
    """Whether every text in ``value`` can be stored (PostgreSQL text and jsonb hold no NUL, and
    JSON's escapes can make lone surrogates)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return False
        return "\x00" not in value
    if isinstance(value, dict):
        return all(_storable(key) and _storable(item) for key, item in value.items())
    if isinstance(value, (list, tuple)):
        return all(_storable(item) for item in value)
    return True


def _text(fields: dict, name: str) -> str | None:
    value = fields.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _BadRow(_("%(field)s: must be text") % {"field": name})
    value = value.strip()
    limit = _LENGTHS.get(name)
    if limit is not None and len(value) > limit:
        raise _BadRow(_("%(field)s: longer than %(max)d characters") % {"field": name, "max": limit})
    return value or None


def _relative_path(field: str, text: str) -> str:
    """``text`` as a clean relative path; absolute paths and ``..`` are refused (no escape from the base)."""
    text = text.replace("\\", "/")
    parts = [part for part in text.split("/") if part not in ("", ".")]
    if (text.startswith("/") or _DRIVE.match(text) or "\x00" in text or ".." in parts or not parts
            or any(not part.isprintable() for part in parts)):
        raise _BadRow(_("%(field)s: must be a relative path inside the base folder (no leading /, no ..)")
                      % {"field": field})
    return "/".join(parts)


def _url(text: str) -> str:
    # The form only: where it points (private addresses, redirects, size) is checked when fetched
    # (catalog/ingest/remote.py).
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        parts = None
    if (parts is None or len(text) > MAX_URL_LENGTH or parts.scheme.lower() not in ("http", "https")
            or not parts.hostname or parts.username is not None or parts.password is not None):
        raise _BadRow(_("url: not an http(s) URL without user name or password"))
    return text


def _taken_at(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)  # Python 3.11+: ISO 8601 dates and times, "Z" included
        value = (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC)
    except (ValueError, OverflowError):
        raise _BadRow(_("taken_at: not a date (ISO 8601, e.g. 2024-05-01 or 2024-05-01T14:30:00+02:00)")) from None
    if not TAKEN_AT_MIN <= value <= TAKEN_AT_MAX:
        raise _BadRow(_("taken_at: out of range"))
    return value


def _tags(value) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):  # CSV: "a;b", or a JSON list (tags that hold ";", as export_manifest writes them)
        value = _json_list(value) if value.lstrip().startswith("[") else value.split(";")
    if not isinstance(value, list) or not all(isinstance(tag, str) for tag in value):
        raise _BadRow(_("tags: must be a list of strings or ;-separated text"))
    tags = list(dict.fromkeys(tag.strip() for tag in value if tag.strip()))
    if len(tags) > MAX_TAGS or any(len(tag) > MAX_TAG_LENGTH for tag in tags):
        raise _BadRow(_("tags: at most %(count)d tags of at most %(length)d characters each")
                      % {"count": MAX_TAGS, "length": MAX_TAG_LENGTH})
    return tuple(tags)


def _attributes(value, limits: ManifestLimits) -> dict:
    if value is None:
        return {}
    if isinstance(value, tuple):  # CSV: (attr.<name> columns, the attributes column's JSON text or None)
        columns, text = value
        value = dict(_json_object(text) if text is not None else {}, **columns)
    elif isinstance(value, str):  # CSV: the attributes column alone
        value = _json_object(value)
    if not isinstance(value, dict):
        raise _BadRow(_("attributes: must be a JSON object"))
    for name, item in value.items():
        if not name.strip() or len(name) > MAX_ATTRIBUTE_NAME:
            raise _BadRow(_("attributes: names must be 1 to %(max)d characters") % {"max": MAX_ATTRIBUTE_NAME})
        if not name.isprintable() or any(mark in name for mark in ":;"):  # a filter is name:value, ;-separated
            raise _BadRow(_("attributes: \"%(name)s\": a name holds no \":\", \";\" or control characters")
                          % {"name": name[:100].encode("unicode_escape").decode()})
        if not (isinstance(item, (str, bool, int)) or (isinstance(item, float) and math.isfinite(item))):
            raise _BadRow(_("attributes: \"%(name)s\" must be a string, a number or a boolean")
                          % {"name": name[:100]})
    if len(json.dumps(value, ensure_ascii=False).encode()) > limits.max_attributes_bytes:
        raise _BadRow(_("attributes: larger than %(max)d bytes") % {"max": limits.max_attributes_bytes})
    return value


def _json_list(text: str):
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        raise _BadRow(_("tags: not valid JSON")) from None


def _json_object(text: str):
    try:
        return json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        raise _BadRow(_("attributes: not valid JSON")) from None


# --------------------------------------------------------------------------
# metadata kept on import items (ImportItem.metadata) and written by export_manifest


def metadata_json(metadata: ItemMetadata) -> dict:
    """``metadata`` as JSON, only what is set."""
    data: dict = {}
    for name in ("city", "group_key"):
        if getattr(metadata, name) is not None:
            data[name] = getattr(metadata, name)
    if metadata.taken_at is not None:
        data["taken_at"] = metadata.taken_at.isoformat()
    if metadata.title:
        data["title"] = metadata.title
    if metadata.tags:
        data["tags"] = list(metadata.tags)
    if metadata.attributes:
        data["attributes"] = metadata.attributes
    return data


def metadata_from_json(data: dict | None) -> ItemMetadata | None:
    if not data:
        return None
    taken_at = data.get("taken_at")
    return ItemMetadata(city=data.get("city"), group_key=data.get("group_key"),
                        taken_at=datetime.fromisoformat(taken_at) if taken_at else None,
                        title=data.get("title", ""), tags=tuple(data.get("tags", ())),
                        attributes=dict(data.get("attributes", {})))


# --------------------------------------------------------------------------
# rows -> pipeline items (manage.py import_images --manifest)


def opened_rows(stream: BinaryIO, *, name: str, limits: ManifestLimits) -> Iterator[ManifestRow | RowError]:
    """``read_manifest`` with its whole-file problems raised at once (ManifestRejected), before any
    row is used: the first row is read here."""
    stream.seek(0)
    head = stream.read(512)
    stream.seek(0)
    rows = read_manifest(stream, fmt=manifest_format(name, head), limits=limits)
    first = next(rows)  # a manifest without rows raises ManifestRejected rather than stopping
    return itertools.chain([first], rows)


def file_items(rows, *, base: Path, fetch: Callable[[str], bytes],
               on_bad_row: Callable[[RowError], None]) -> Iterator[IngestItem]:
    """Pipeline items for the rows of a manifest read from the file system: ``path`` rows under
    ``base``, ``url`` rows through ``fetch`` (the guarded fetcher); bad rows go to ``on_bad_row``."""
    base = base.resolve()
    for row in rows:
        if isinstance(row, RowError):
            on_bad_row(row)
        elif row.source == "member":
            on_bad_row(RowError(row.line, _("member rows need the manifest inside an archive")))
        elif row.source == "url":
            yield IngestItem(name=row.name, source_ref=row.target, read=functools.partial(fetch, row.target),
                             metadata=row.metadata, source=Image.Source.URL)
        else:
            yield IngestItem(name=row.name, source_ref=str(base / row.target),
                             read=functools.partial(read_under, base, row.target), metadata=row.metadata,
                             source=Image.Source.FOLDER)


def read_under(base: Path, relative: str) -> BinaryIO:
    """The file at ``base/relative``, opened; one that a symbolic link leads out of ``base`` is refused."""
    path = (base / relative).resolve()
    if not path.is_relative_to(base):
        raise ItemRejected(_("the path leads outside the base folder"))
    if path.exists() and not path.is_file():  # a FIFO or a device would block the import or never end
        raise ItemRejected(_("not a regular file"))
    return path.open("rb")


# Spreadsheets run a cell that starts with one of these as a formula ("CSV injection"): the export
# puts a ' before such a cell, as OWASP advises, and reading a CSV manifest takes it off again.
_FORMULA_MARKS = ("=", "+", "-", "@", "\t", "\r")


def guarded(text: str) -> str:
    return "'" + text if text.startswith(_FORMULA_MARKS) or text.startswith("'") else text


def unguarded(text: str) -> str:
    return text[1:] if text.startswith("'") and (text[1:].startswith(_FORMULA_MARKS) or text[1:].startswith("'")) \
        else text


# --------------------------------------------------------------------------
# images -> rows (manage.py export_manifest)


def export_rows(*, chunk_size: int = 1000) -> Iterator[dict]:
    """One manifest row per stored image (``path``: its file's storage name), in id order, read in
    chunks (server-side cursor): memory stays bounded whatever the collection. A video is one row
    (its file, with its first key frame's metadata): importing it extracts its frames again."""
    first_frame = Image.objects.filter(video=OuterRef("video")).order_by("video_time", "pk").values("pk")[:1]
    images = (Image.objects.exclude(status=Image.Status.FAILED)
              .filter(Q(video__isnull=True) | Q(pk=Subquery(first_frame))).order_by("pk")
              .annotate(path=Coalesce("video__file", "file"))
              .values_list("path", "original_name", "city", "group_key", "taken_at", "title", "tags", "attributes"))
    for file, name, city, group_key, taken_at, title, tags, attributes in images.iterator(chunk_size=chunk_size):
        row = {"path": file, "name": name, "city": city, "group_key": group_key,
               "taken_at": taken_at.isoformat() if taken_at else "", "title": title, "tags": tags,
               "attributes": attributes}
        yield {key: value for key, value in row.items() if value not in ("", [], {}, None)}
