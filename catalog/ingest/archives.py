"""Iterate the members of an uploaded zip / tar / tar.gz (tar.bz2, tar.xz) safely.

Plain Python (no Django); limits arrive through :class:`ArchiveLimits`.
Nothing is ever extracted into the file system: a member's bytes are decompressed in chunks
into a private spool (memory up to 1 MiB, an anonymous temporary file beyond) and read back with
``member.read()`` / ``member.data``, so iterating holds no whole member in memory.

Behaviour
---------
* Per-item problems are reported as an :class:`ArchiveMember` whose ``error``
  is set and ``data`` is ``None``; iteration then continues with the next
  member.  Errors: ``"unsafe path"`` (``..`` components, absolute paths, drive
  letters, NUL/control characters, names > 1024 chars), ``"symlink not
  allowed"``, ``"hardlink not allowed"``, ``"special file not allowed"``
  (devices, fifos), ``"unsupported member type"`` (sparse/unknown tar types),
  ``"encrypted member not supported"``, ``"unsupported compression method"``,
  ``"corrupt member"`` (zip CRC/decompression failure of one member),
  ``"nested archive not supported"``, ``"too large"`` (more than
  ``max_member_bytes``) and ``"folder entry with file data"`` (a zip entry named like a
  folder, ``a/``, that carries bytes).
* Directories (without data) and OS junk (``__MACOSX/``, any path component starting with a
  dot such as ``.DS_Store`` / ``._foo`` / ``.git/``, ``Thumbs.db``,
  ``desktop.ini``) are skipped silently.
* Whole-archive problems raise :class:`ArchiveRejected`: unknown/unsupported
  format, ``"corrupt archive: ..."``, ``"too many members ..."`` and
  ``"archive too large ..."``.

  Because :func:`iter_archive` is a generator, ``ArchiveRejected`` may be
  raised *after* some members were already yielded.  Callers must treat it as
  failure of the whole archive (e.g. run the import in a transaction or
  discard what was collected).  For zip files the member count and the
  central directory are checked before the first member is yielded; tar
  formats are streamed, so there everything is detected on the way.

Size limits are enforced on bytes actually decompressed, read in chunks, never
on sizes declared in headers alone (declared sizes are only used to reject
early):

* zip: ``max_total_bytes`` bounds the sum of decompressed bytes of all members
  that were read (skipped members are never decompressed).
* tar: the archive is a single stream, so every decompressed byte counts -
  headers, data of extracted *and* skipped members - against
  ``max_total_bytes`` (plus a small allowance for tar headers).
* The member count (``max_members``) includes every entry: files,
  directories, links and skipped junk.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import re
import shutil
import stat
import tarfile
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from typing import BinaryIO, Callable, Iterator

from catalog.ingest.names import safe_text

__all__ = ["ArchiveRejected", "ArchiveLimits", "ArchiveMember", "is_archive", "iter_archive"]

_CHUNK = 64 * 1024
# A member's bytes stay in memory up to this size, beyond it in an anonymous temporary file.
_SPOOL_IN_MEMORY = 1024 * 1024
_MAX_NAME_LENGTH = 1024
_SNIFF_BYTES = 512
# tar extended headers (pax / GNU long names) are read into memory by tarfile:
# cap each one and their sum per archive.
_MAX_TAR_META_HEADER = 1024 * 1024
_MAX_TAR_META_TOTAL = 64 * 1024 * 1024
# Allowance for tar headers / padding on top of max_total_bytes.
_TAR_OVERHEAD_BASE = 64 * 1024
_TAR_OVERHEAD_PER_MEMBER = 1536
# Central directory size allowed per member before ZipFile parses it.
_ZIP_CD_BYTES_PER_MEMBER = 4096

_JUNK_NAMES = frozenset({"thumbs.db", "desktop.ini"})
_DRIVE_RE = re.compile(r"^[A-Za-z]:")


class ArchiveRejected(ValueError):
    """The archive as a whole is refused.  ``str(exc)`` is user-safe."""


@dataclass(frozen=True)
class ArchiveLimits:
    max_members: int = 10_000
    max_total_bytes: int = 2 * 1024**3  # total uncompressed
    max_member_bytes: int = 100 * 1024**2


class ArchiveMember:
    """One member: ``name`` (normalised relative path; the raw, sanitised name when ``error`` is
    set), ``error`` (None if fine) and its bytes, ``read()`` / ``data`` (None when ``error`` is set,
    or when iterated with ``keep_data=False``)."""

    __slots__ = ("name", "error", "_data", "_spool")

    def __init__(self, name: str, data: bytes | None = None, error: str | None = None, *, spool=None):
        self.name, self.error, self._data, self._spool = name, error, data, spool

    @property
    def data(self) -> bytes | None:
        if self._spool is None:
            return self._data
        self._spool.seek(0)
        return self._spool.read()

    def read(self) -> bytes | None:
        return self.data

    def open(self) -> BinaryIO | None:
        """The bytes as a file from its start, not read into memory (a manifest is read line by
        line); None as for ``data``."""
        if self._spool is None:
            return None if self._data is None else io.BytesIO(self._data)
        self._spool.seek(0)
        return self._spool

    def __eq__(self, other):
        if not isinstance(other, ArchiveMember):
            return NotImplemented
        return (self.name, self.data, self.error) == (other.name, other.data, other.error)

    def __repr__(self):
        data = self.data
        return f"ArchiveMember(name={self.name!r}, data={None if data is None else f'<{len(data)} bytes>'}, " \
               f"error={self.error!r})"


# --------------------------------------------------------------------------
# Format detection
# --------------------------------------------------------------------------


def _sniff(head: bytes) -> str | None:
    """Identify an archive/compression format by magic bytes."""
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08"):
        return "zip"
    if head[:3] == b"\x1f\x8b\x08":
        return "gzip"
    if head[:3] == b"BZh" and head[3:4] in b"123456789" and len(head) >= 4:
        return "bzip2"
    if head[:6] == b"\xfd7zXZ\x00":
        return "xz"
    if head[:6] == b"7z\xbc\xaf\x27\x1c":
        return "7z"
    if head[:6] == b"Rar!\x1a\x07":
        return "rar"
    if head[257:262] == b"ustar":
        return "tar"
    return None


def _is_v7_tar(head: bytes) -> bool:
    """Old (pre-POSIX) tar header without the ``ustar`` magic: verify its checksum."""
    if len(head) < 512 or head[0] == 0:
        return False
    try:
        return tarfile.nti(head[148:156]) in tarfile.calc_chksums(head[:512])
    except Exception:  # malformed numeric field -> not a tar header
        return False


def is_archive(name: str, head: bytes) -> bool:
    """True if ``head`` (the first bytes of an upload, >= 512 advisable) is an archive.

    Detection is by content: zip (``PK\\x03\\x04``), gzip (``1f 8b``), bzip2,
    xz, tar (``ustar`` at offset 257), and 7z/rar (recognised so that they are
    routed to :func:`iter_archive`, which rejects them with a clear message).
    The name is only used as a hint for old v7 tar files, which carry no magic
    and are accepted when the name ends in ``.tar`` and the header checksum is
    valid.  A file merely *named* ``.zip`` is not an archive.
    """
    head = bytes(head or b"")
    if _sniff(head) is not None:
        return True
    return (name or "").lower().endswith(".tar") and _is_v7_tar(head)


def _looks_nested(head: bytes) -> bool:
    return _sniff(head) is not None or _is_v7_tar(head)


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


def _display_name(raw: str) -> str:
    cleaned = "".join(c if c.isprintable() else "?" for c in raw.replace("\\", "/"))
    return cleaned[:255] or "?"


def _normalise(raw: str) -> tuple[str | None, str | None]:
    """Return ``(name, error)``; ``(None, None)`` means "skip silently"."""
    # Bytes that were not UTF-8 (surrogate escapes) -> U+FFFD. safe_text drops NULs; in a member
    # name one is a forgery ("a/\x00x.png"), refused below like any control character.
    raw = safe_text(raw.replace("\x00", "\x01"))
    if len(raw) > _MAX_NAME_LENGTH or any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in raw):
        return _display_name(raw), "unsafe path"
    path = raw.replace("\\", "/")
    if path.startswith("/") or _DRIVE_RE.match(path):
        return _display_name(raw), "unsafe path"
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        return _display_name(raw), "unsafe path"
    if not parts:  # nothing left of the name: "." is not a folder, "/" an absolute path
        return _display_name(raw), "unsafe path"
    if any(p.startswith(".") or p == "__MACOSX" for p in parts) or parts[-1].lower() in _JUNK_NAMES:
        return None, None
    return "/".join(parts), None


class _Budget:
    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0

    def charge(self, n: int) -> None:
        self.used += n
        if self.used > self.limit:
            raise ArchiveRejected(f"archive too large: more than {self.limit} bytes uncompressed")


def _read_member(fh, limits: ArchiveLimits, charge: Callable[[int], None] | None,
                 keep: bool = True) -> tuple[tempfile.SpooledTemporaryFile | None, str | None]:
    """Read one member in chunks into a spool (or nowhere, without ``keep``), stopping as soon as a
    limit is exceeded."""
    spool = tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY) if keep else None
    head = b""
    size = 0
    try:
        while True:
            chunk = fh.read(min(_CHUNK, limits.max_member_bytes + 1 - size))
            if not chunk:
                break
            if charge is not None:
                charge(len(chunk))
            size += len(chunk)
            if size > limits.max_member_bytes:
                return _discard(spool), "too large"
            if len(head) < _SNIFF_BYTES:
                head += chunk[:_SNIFF_BYTES - len(head)]
                if len(head) >= _SNIFF_BYTES and _looks_nested(head):
                    return _discard(spool), "nested archive not supported"
            if spool is not None:
                spool.write(chunk)
        if len(head) < _SNIFF_BYTES and _looks_nested(head):
            return _discard(spool), "nested archive not supported"
    except BaseException:
        _discard(spool)
        raise
    return spool, None


def _discard(spool) -> None:
    if spool is not None:
        spool.close()
    return None


def _member(name: str, spool, error: str | None) -> ArchiveMember:
    if error is not None:
        return ArchiveMember(name, None, error)
    return ArchiveMember(name, spool=spool) if spool is not None else ArchiveMember(name)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:120]


# --------------------------------------------------------------------------
# zip
# --------------------------------------------------------------------------


def _zip_precheck(src: BinaryIO, limits: ArchiveLimits) -> None:
    """Bound the central directory before zipfile parses it into memory."""
    try:
        endrec = zipfile._EndRecData(src)  # private but stable since Python 2
        cd_size = endrec[zipfile._ECD_SIZE]
        declared_entries = endrec[zipfile._ECD_ENTRIES_TOTAL]
    except Exception:
        # API missing or no end record: ZipFile below reports "corrupt archive"
        # (and the member count is still checked after parsing).
        return
    finally:
        src.seek(0)
    if declared_entries > limits.max_members:
        raise ArchiveRejected(f"too many members: {declared_entries} (limit {limits.max_members})")
    if cd_size > _ZIP_CD_BYTES_PER_MEMBER * limits.max_members + _CHUNK:
        raise ArchiveRejected(f"too many members: central directory too large (limit {limits.max_members} members)")


def _zip_name(info: zipfile.ZipInfo) -> str:
    # The name as stored: zipfile cuts ``filename`` at a NUL ("a/\x00x.png" -> "a/", a folder,
    # silently dropped); ``orig_filename`` keeps it, so _normalise refuses it as an unsafe path.
    # Without the UTF-8 flag zipfile decodes names as cp437 (the spec); many tools write UTF-8
    # there anyway, so prefer that when the raw bytes are valid UTF-8.
    raw = info.orig_filename
    if info.flag_bits & 0x800:
        return raw
    try:
        return raw.encode("cp437").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return raw


def _iter_zip(src: BinaryIO, limits: ArchiveLimits, keep: bool) -> Iterator[ArchiveMember]:
    _zip_precheck(src, limits)
    try:
        zf = zipfile.ZipFile(src)
    except ArchiveRejected:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError, NotImplementedError) as exc:
        raise ArchiveRejected(f"corrupt archive: {_short(exc)}") from None
    with zf:
        infos = zf.infolist()
        if len(infos) > limits.max_members:
            raise ArchiveRejected(f"too many members: {len(infos)} (limit {limits.max_members})")
        budget = _Budget(limits.max_total_bytes)
        for info in infos:
            mode = (info.external_attr >> 16) & 0xFFFF
            ftype = stat.S_IFMT(mode)
            raw = _zip_name(info)
            name, error = _normalise(raw)
            if name is None:
                continue
            if raw.endswith("/") or ftype == stat.S_IFDIR:
                if not info.file_size:
                    continue  # a folder; its files are members of their own
                error = error or "folder entry with file data"
            data = None
            if error is None:
                if ftype == stat.S_IFLNK:
                    error = "symlink not allowed"
                elif ftype not in (0, stat.S_IFREG):
                    error = "special file not allowed"
                elif info.flag_bits & 0x1:
                    error = "encrypted member not supported"
                elif info.file_size > limits.max_member_bytes:
                    error = "too large"  # declared size: reject without decompressing
                else:
                    try:
                        with zf.open(info) as fh:
                            data, error = _read_member(fh, limits, budget.charge, keep)
                    except ArchiveRejected:
                        raise
                    except NotImplementedError:
                        data, error = None, "unsupported compression method"
                    except (zipfile.BadZipFile, zlib.error, lzma.LZMAError, EOFError, OSError, ValueError):
                        data, error = None, "corrupt member"
            yield _member(name, data, error)


# --------------------------------------------------------------------------
# tar (optionally gzip / bzip2 / xz compressed)
# --------------------------------------------------------------------------


class _GuardedTarInfo(tarfile.TarInfo):
    """Refuse oversized pax / GNU long-name headers before tarfile buffers them."""

    _META_TYPES = (
        tarfile.GNUTYPE_LONGNAME,
        tarfile.GNUTYPE_LONGLINK,
        tarfile.XHDTYPE,
        tarfile.XGLTYPE,
        tarfile.SOLARIS_XHDTYPE,
    )

    def _proc_member(self, tarfile_obj):
        if self.type in self._META_TYPES:
            if self.size > _MAX_TAR_META_HEADER:
                raise ArchiveRejected("corrupt archive: oversized extended header")
            used = getattr(tarfile_obj, "_ingest_meta_bytes", 0) + self.size
            tarfile_obj._ingest_meta_bytes = used
            if used > _MAX_TAR_META_TOTAL:
                raise ArchiveRejected("corrupt archive: too much extended header data")
        return super()._proc_member(tarfile_obj)


class _CountingReader:
    """Read-only stream wrapper that caps the number of decompressed bytes."""

    def __init__(self, fileobj, cap: int, limit_for_message: int):
        self._f = fileobj
        self._cap = cap
        self._limit = limit_for_message
        self.used = 0

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            parts = []
            while chunk := self.read(_CHUNK):
                parts.append(chunk)
            return b"".join(parts)
        data = self._f.read(n)
        self.used += len(data)
        if self.used > self._cap:
            raise ArchiveRejected(f"archive too large: more than {self._limit} bytes uncompressed")
        return data


_TAR_STREAM_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError, ValueError)


def _iter_tar(src: BinaryIO, kind: str, limits: ArchiveLimits, keep: bool) -> Iterator[ArchiveMember]:
    if kind == "gzip":
        decompressed = gzip.GzipFile(fileobj=src, mode="rb")
    elif kind == "bzip2":
        decompressed = bz2.BZ2File(src, "rb")
    elif kind == "xz":
        decompressed = lzma.LZMAFile(src, "rb")
    else:
        decompressed = None
    cap = limits.max_total_bytes + _TAR_OVERHEAD_BASE + _TAR_OVERHEAD_PER_MEMBER * limits.max_members
    reader = _CountingReader(decompressed if decompressed is not None else src, cap, limits.max_total_bytes)
    try:
        try:
            # "r|": sequential stream mode; decompression is done above so
            # that the counting wrapper sees decompressed bytes.
            tf = tarfile.open(fileobj=reader, mode="r|", tarinfo=_GuardedTarInfo)
        except ArchiveRejected:
            raise
        except _TAR_STREAM_ERRORS as exc:
            raise ArchiveRejected(f"corrupt archive: {_short(exc)}") from None
        with tf:
            yield from _iter_tar_members(tf, limits, keep)
    finally:
        if decompressed is not None:
            decompressed.close()


def _iter_tar_members(tf: tarfile.TarFile, limits: ArchiveLimits, keep: bool) -> Iterator[ArchiveMember]:
    count = 0
    while True:
        try:
            ti = tf.next()
        except ArchiveRejected:
            raise
        except _TAR_STREAM_ERRORS as exc:
            raise ArchiveRejected(f"corrupt archive: {_short(exc)}") from None
        if ti is None:
            return
        tf.members.clear()  # stream mode: no need to remember past headers
        count += 1
        if count > limits.max_members:
            raise ArchiveRejected(f"too many members: more than {limits.max_members}")
        if ti.isdir():
            continue
        name, error = _normalise(ti.name)
        if name is None:
            continue
        data = None
        if error is None:
            if ti.issym():
                error = "symlink not allowed"
            elif ti.islnk():
                error = "hardlink not allowed"
            elif ti.ischr() or ti.isblk() or ti.isfifo():
                error = "special file not allowed"
            elif ti.issparse() or not ti.isreg():
                error = "unsupported member type"
            elif ti.size > limits.max_member_bytes:
                error = "too large"  # its bytes are still streamed past (and counted)
            else:
                try:
                    fh = tf.extractfile(ti)
                    data, error = _read_member(fh, limits, None, keep)
                except ArchiveRejected:
                    raise
                except _TAR_STREAM_ERRORS as exc:
                    raise ArchiveRejected(f"corrupt archive: {_short(exc)}") from None
        yield _member(name, data, error)


# --------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------


def iter_archive(fileobj: BinaryIO, *, limits: ArchiveLimits, keep_data: bool = True) -> Iterator[ArchiveMember]:
    """Yield the members of a zip / tar / tar.gz / tar.bz2 / tar.xz archive.

    ``fileobj`` is rewound and read from its beginning (so a caller may first
    read a head for :func:`is_archive`); a non-seekable stream is spooled to a
    temporary file from its current position instead.  ``fileobj`` is not
    closed.  See the module docstring for the error model.  With ``keep_data=False`` every
    member is still read through (limits, nesting) but its bytes are not kept.
    """
    spool = None
    src = fileobj
    seekable = getattr(fileobj, "seekable", None)
    if not (callable(seekable) and seekable()):
        spool = tempfile.SpooledTemporaryFile(max_size=16 * 1024 * 1024)
        shutil.copyfileobj(fileobj, spool, _CHUNK)
        spool.seek(0)
        src = spool
    try:
        src.seek(0)
        head = src.read(_SNIFF_BYTES)
        src.seek(0)
        kind = _sniff(head)
        if kind is None and _is_v7_tar(head):
            kind = "tar"
        if kind is None:
            raise ArchiveRejected("unsupported archive format: expected zip or tar")
        if kind in ("7z", "rar"):
            raise ArchiveRejected(f"unsupported archive format: {kind}")
        if kind == "zip":
            yield from _iter_zip(src, limits, keep_data)
        else:
            yield from _iter_tar(src, kind, limits, keep_data)
    finally:
        if spool is not None:
            spool.close()
