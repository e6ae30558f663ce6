"""Tests for catalog.ingest.archives (safe iteration over uploaded archives).

Everything is built in memory; sizes are kept small (caps around 1 MB).
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import stat
import struct
import tarfile
import zipfile

import pytest

from catalog.ingest import archives
from catalog.ingest.archives import ArchiveLimits, ArchiveMember, ArchiveRejected, is_archive, iter_archive

JPEG = b"\xff\xd8\xff\xe0" + b"JFIF" + bytes(range(256)) * 4
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(255, -1, -1)) * 4
MB = 1024 * 1024
SMALL = ArchiveLimits(max_members=100, max_total_bytes=10 * MB, max_member_bytes=1 * MB)


@pytest.fixture(autouse=True)
def media_root():
    """Shadow tests/conftest.py's Django-only autouse fixture: no Django needed here."""
    return None


# --------------------------------------------------------------------------
# Builders
# --------------------------------------------------------------------------


def make_zip(entries, compression=zipfile.ZIP_DEFLATED) -> bytes:
    """entries: (name, data) pairs or (ZipInfo, data) pairs."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compression) as zf:
        for name, data in entries:
            if isinstance(name, zipfile.ZipInfo):
                name.compress_type = compression
            zf.writestr(name, data)
    return buf.getvalue()


def zip_symlink(name: str, target: str) -> tuple[zipfile.ZipInfo, bytes]:
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info, target.encode()


def tar_entry(name, data=b"", type_=tarfile.REGTYPE, linkname="", **pax):
    info = tarfile.TarInfo(name)
    info.type = type_
    info.linkname = linkname
    info.size = len(data) if type_ == tarfile.REGTYPE else 0
    info.mode = 0o644
    if pax:
        info.pax_headers = pax
    return info, data


def make_tar(entries, mode="w", fmt=tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode, format=fmt) as tf:
        for info, data in entries:
            tf.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buf.getvalue()


def members(data: bytes, limits: ArchiveLimits = SMALL) -> list[ArchiveMember]:
    return list(iter_archive(io.BytesIO(data), limits=limits))


def by_name(result):
    return {m.name: m for m in result}


def patch_central_directory(data: bytes, offset: int, fmt: str, value: int, local_offset: int | None = None) -> bytes:
    """Overwrite a field in the (first) central directory entry and optionally the local header."""
    out = bytearray(data)
    cd = out.index(b"PK\x01\x02")
    struct.pack_into(fmt, out, cd + offset, value)
    if local_offset is not None:
        struct.pack_into(fmt, out, local_offset, value)
    return bytes(out)


# --------------------------------------------------------------------------
# is_archive
# --------------------------------------------------------------------------


def test_is_archive_by_magic_bytes():
    assert is_archive("upload.bin", make_zip([("a.jpg", JPEG)]))
    assert is_archive("x", make_zip([]))  # empty zip starts with PK\x05\x06
    assert is_archive("x", make_tar([tar_entry("a.jpg", JPEG)])[:512])
    assert is_archive("x", make_tar([tar_entry("a.jpg", JPEG)], fmt=tarfile.GNU_FORMAT)[:512])
    assert is_archive("x", make_tar([tar_entry("a.jpg", JPEG)], mode="w:gz")[:512])
    assert is_archive("x", make_tar([tar_entry("a.jpg", JPEG)], mode="w:bz2")[:512])
    assert is_archive("x", make_tar([tar_entry("a.jpg", JPEG)], mode="w:xz")[:512])
    assert is_archive("x", b"7z\xbc\xaf\x27\x1c" + b"\x00" * 30)
    assert is_archive("x", b"Rar!\x1a\x07\x01\x00")


def test_is_archive_not_fooled_by_extension():
    assert not is_archive("photo.zip", JPEG)
    assert not is_archive("photo.tar.gz", PNG)
    assert not is_archive("photo.tar", JPEG[:512])
    assert not is_archive("photo.jpg", JPEG)
    assert not is_archive("empty.zip", b"")
    assert not is_archive("x", b"BZh")  # too short to be sure


def v7_tar(name: str, data: bytes) -> bytes:
    """A pre-POSIX tar: ustar magic removed, checksum recomputed."""
    raw = bytearray(make_tar([tar_entry(name, data)], fmt=tarfile.USTAR_FORMAT))
    raw[257:265] = b"\x00" * 8
    raw[148:156] = b" " * 8
    raw[148:156] = b"%06o\x00 " % sum(raw[:512])
    return bytes(raw)


def test_old_v7_tar_detected_with_tar_name_and_valid_checksum():
    data = v7_tar("old.jpg", JPEG)
    assert data[257:262] != b"ustar"
    assert is_archive("OLD.TAR", data[:512])
    assert not is_archive("old.jpg", data[:512])
    assert [(m.name, m.data) for m in members(data)] == [("old.jpg", JPEG)]


# --------------------------------------------------------------------------
# Happy paths
# --------------------------------------------------------------------------


def test_zip_members_and_normalised_names():
    data = make_zip(
        [
            ("photos/", b""),
            ("photos/a.jpg", JPEG),
            ("./photos/./b.png", PNG),
            ("photos//c.jpg", JPEG),
            ("win\\sub\\d.jpg", JPEG),
            ("root.jpg", JPEG),
        ]
    )
    result = members(data)
    assert [m.name for m in result] == ["photos/a.jpg", "photos/b.png", "photos/c.jpg", "win/sub/d.jpg", "root.jpg"]
    assert all(m.error is None for m in result)
    assert by_name(result)["photos/b.png"].data == PNG
    assert by_name(result)["win/sub/d.jpg"].data == JPEG


def test_stored_zip():
    result = members(make_zip([("a.jpg", JPEG)], compression=zipfile.ZIP_STORED))
    assert result == [ArchiveMember("a.jpg", JPEG, None)]


def test_empty_zip():
    assert members(make_zip([])) == []


@pytest.mark.parametrize("mode", ["w", "w:gz", "w:bz2", "w:xz"])
def test_tar_variants(mode):
    data = make_tar(
        [
            tar_entry("album", type_=tarfile.DIRTYPE),
            tar_entry("album/a.jpg", JPEG),
            tar_entry("album/b.png", PNG),
        ],
        mode=mode,
    )
    result = members(data)
    assert [(m.name, m.data, m.error) for m in result] == [("album/a.jpg", JPEG, None), ("album/b.png", PNG, None)]


def test_gnu_tar_long_names():
    long_name = "d/" + "x" * 300 + ".jpg"
    data = make_tar([tar_entry(long_name, JPEG)], mode="w:gz", fmt=tarfile.GNU_FORMAT)
    assert members(data) == [ArchiveMember(long_name, JPEG, None)]


def test_input_is_rewound_after_sniffing():
    for payload in (make_zip([("a.jpg", JPEG)]), make_tar([tar_entry("a.jpg", JPEG)], mode="w:gz")):
        upload = io.BytesIO(payload)
        assert is_archive("upload", upload.read(512))
        assert list(iter_archive(upload, limits=SMALL)) == [ArchiveMember("a.jpg", JPEG, None)]
        assert not upload.closed


def test_non_seekable_input_is_spooled():
    class Pipe:
        def __init__(self, payload):
            self._b = io.BytesIO(payload)

        def read(self, n=-1):
            return self._b.read(n)

    for payload in (make_zip([("a.jpg", JPEG)]), make_tar([tar_entry("a.jpg", JPEG)], mode="w:gz")):
        assert list(iter_archive(Pipe(payload), limits=SMALL)) == [ArchiveMember("a.jpg", JPEG, None)]


# --------------------------------------------------------------------------
# Unsafe entries -> per-item errors, the rest continues
# --------------------------------------------------------------------------

UNSAFE_NAMES = [
    "../evil.jpg",
    "a/../../evil.jpg",
    "a/b/../../../evil.jpg",
    "/etc/passwd",
    "/abs/photo.jpg",
    "C:/Windows/evil.jpg",
    "c:evil.jpg",
    "..\\..\\evil.jpg",
    "C:\\evil.jpg",
    "\\\\server\\share\\evil.jpg",
]


@pytest.mark.parametrize("bad", UNSAFE_NAMES)
def test_zip_unsafe_paths(bad):
    result = members(make_zip([("ok1.jpg", JPEG), (bad, JPEG), ("ok2.jpg", PNG)]))
    assert [m.error for m in result] == [None, "unsafe path", None]
    assert result[1].data is None
    assert result[2].data == PNG


@pytest.mark.parametrize("bad", UNSAFE_NAMES + ["bad\nname.jpg", "x" * 2000])
def test_tar_unsafe_paths(bad):
    entries = [tar_entry("ok1.jpg", JPEG), tar_entry(bad, JPEG), tar_entry("ok2.jpg", PNG)]
    result = members(make_tar(entries, mode="w:gz"))
    assert [m.error for m in result] == [None, "unsafe path", None]
    assert result[1].data is None
    assert result[2].data == PNG
    assert len(result[1].name) <= 255 and "\n" not in result[1].name


def zip_with_raw_name(raw: bytes, data: bytes) -> bytes:
    """A zip whose second member is stored under the bytes ``raw`` (zipfile cannot write a NUL)."""
    placeholder = b"Z" * len(raw)
    built = make_zip([("ok1.jpg", JPEG), (placeholder.decode(), data), ("ok2.jpg", PNG)])
    assert built.count(placeholder) == 2  # local header and central directory; no CRC covers names
    return built.replace(placeholder, raw)


@pytest.mark.parametrize("raw", [b"a/\x00nul.png", b"nul\x00.png", b"\x00\x00\x00\x00"])
def test_zip_name_with_a_nul_is_an_unsafe_path_not_a_silent_folder(raw):
    # zipfile cuts the name at the NUL: "a/\x00nul.png" became "a/", a folder, dropped uncounted.
    result = members(zip_with_raw_name(raw, JPEG))
    assert [(m.name, m.error) for m in result] == [
        ("ok1.jpg", None), (raw.decode().replace("\x00", "?"), "unsafe path"), ("ok2.jpg", None)]
    assert result[1].data is None and result[2].data == PNG


def test_zip_folder_entry_with_file_data_is_an_error_and_empty_folders_are_skipped():
    result = members(make_zip([("empty/", b""), ("ok1.jpg", JPEG), ("photos/", JPEG), ("ok2.jpg", PNG)]))
    assert [(m.name, m.error) for m in result] == [
        ("ok1.jpg", None), ("photos", "folder entry with file data"), ("ok2.jpg", None)]
    assert result[1].data is None


def test_zip_symlink_rejected():
    result = members(make_zip([zip_symlink("link.jpg", "/etc/passwd"), ("a.jpg", JPEG)]))
    assert result == [ArchiveMember("link.jpg", None, "symlink not allowed"), ArchiveMember("a.jpg", JPEG, None)]


def test_zip_special_file_rejected():
    info = zipfile.ZipInfo("fifo")
    info.create_system = 3
    info.external_attr = (stat.S_IFIFO | 0o644) << 16
    assert members(make_zip([(info, b"")])) == [ArchiveMember("fifo", None, "special file not allowed")]


def test_tar_links_and_devices_rejected():
    data = make_tar(
        [
            tar_entry("sym.jpg", type_=tarfile.SYMTYPE, linkname="/etc/passwd"),
            tar_entry("rel.jpg", type_=tarfile.SYMTYPE, linkname="../../outside.jpg"),
            tar_entry("real.jpg", JPEG),
            tar_entry("hard.jpg", type_=tarfile.LNKTYPE, linkname="real.jpg"),
            tar_entry("dev/null", type_=tarfile.CHRTYPE),
            tar_entry("dev/sda", type_=tarfile.BLKTYPE),
            tar_entry("pipe", type_=tarfile.FIFOTYPE),
            tar_entry("after.png", PNG),
        ],
        mode="w:gz",
    )
    assert [(m.name, m.error) for m in members(data)] == [
        ("sym.jpg", "symlink not allowed"),
        ("rel.jpg", "symlink not allowed"),
        ("real.jpg", None),
        ("hard.jpg", "hardlink not allowed"),
        ("dev/null", "special file not allowed"),
        ("dev/sda", "special file not allowed"),
        ("pipe", "special file not allowed"),
        ("after.png", None),
    ]
    assert all(m.data is None for m in members(data) if m.error)


def test_hidden_and_os_junk_skipped():
    names = [
        "__MACOSX/",
        "__MACOSX/._a.jpg",
        "__MACOSX/photos/._b.jpg",
        ".DS_Store",
        "photos/.DS_Store",
        "photos/._a.jpg",
        ".hidden/a.jpg",
        "photos/Thumbs.db",
        "desktop.ini",
        "photos/a.jpg",
    ]
    zip_result = members(make_zip([(n, b"" if n.endswith("/") else JPEG) for n in names]))
    tar_result = members(make_tar([tar_entry(n.rstrip("/"), JPEG) for n in names], mode="w:gz"))
    for result in (zip_result, tar_result):
        assert result == [ArchiveMember("photos/a.jpg", JPEG, None)]


# --------------------------------------------------------------------------
# Nested archives
# --------------------------------------------------------------------------


def test_nested_archives_rejected_by_content():
    inner_zip = make_zip([("x.jpg", JPEG)])
    inner_tar = make_tar([tar_entry("x.jpg", JPEG)])
    inner_tgz = make_tar([tar_entry("x.jpg", JPEG)], mode="w:gz")
    data = make_zip(
        [
            ("inner.zip", inner_zip),
            ("disguised.jpg", inner_zip),  # extension does not matter
            ("inner.tar", inner_tar),
            ("inner.tar.gz", inner_tgz),
            ("inner.tar.xz", make_tar([tar_entry("x.jpg", JPEG)], mode="w:xz")),
            ("named.zip", JPEG),  # only a name, really a JPEG
            ("tiny.gz", gzip.compress(b"")),
        ]
    )
    assert [(m.name, m.error) for m in members(data)] == [
        ("inner.zip", "nested archive not supported"),
        ("disguised.jpg", "nested archive not supported"),
        ("inner.tar", "nested archive not supported"),
        ("inner.tar.gz", "nested archive not supported"),
        ("inner.tar.xz", "nested archive not supported"),
        ("named.zip", None),
        ("tiny.gz", "nested archive not supported"),
    ]


def test_nested_archive_in_tar():
    data = make_tar([tar_entry("in.zip", make_zip([("x.jpg", JPEG)])), tar_entry("ok.jpg", JPEG)], mode="w:gz")
    assert [(m.name, m.error) for m in members(data)] == [("in.zip", "nested archive not supported"), ("ok.jpg", None)]


# --------------------------------------------------------------------------
# Size limits / bombs
# --------------------------------------------------------------------------

BOMB_LIMITS = ArchiveLimits(max_members=100, max_total_bytes=3 * MB, max_member_bytes=1 * MB)


def test_zip_bomb_member_too_large():
    data = make_zip([("bomb.jpg", b"\x00" * (5 * MB)), ("ok.jpg", JPEG)])
    assert len(data) < 100 * 1024  # highly compressible
    assert members(data, BOMB_LIMITS) == [
        ArchiveMember("bomb.jpg", None, "too large"),
        ArchiveMember("ok.jpg", JPEG, None),
    ]


def test_zip_with_lying_declared_size_never_yields_more_than_declared():
    # 5 MB of zeros whose headers claim 1000 bytes: extraction must stop early.
    data = make_zip([("liar.jpg", b"\x00" * (5 * MB)), ("ok.jpg", JPEG)])
    data = patch_central_directory(data, 24, "<I", 1000, local_offset=22)
    result = members(data, BOMB_LIMITS)
    assert result[0].name == "liar.jpg"
    assert result[0].data is None and result[0].error == "corrupt member"
    assert result[1] == ArchiveMember("ok.jpg", JPEG, None)


def test_member_reader_counts_actual_bytes_not_declared():
    class Endless:
        """A decompressor that never stops (declared sizes are irrelevant)."""

        def __init__(self):
            self.read_total = 0

        def read(self, n):
            self.read_total += n
            return b"\x00" * n

    charged = []
    stream = Endless()
    limits = ArchiveLimits(max_member_bytes=1 * MB)
    data, error = archives._read_member(stream, limits, charged.append)
    assert (data, error) == (None, "too large")
    assert stream.read_total == 1 * MB + 1  # stopped right after crossing the cap
    assert sum(charged) == stream.read_total


def test_zip_total_size_cap_raises():
    chunk = b"\x00" * (900 * 1024)
    data = make_zip([(f"m{i}.jpg", chunk) for i in range(5)])
    seen = []
    with pytest.raises(ArchiveRejected, match="archive too large"):
        for member in iter_archive(io.BytesIO(data), limits=BOMB_LIMITS):
            seen.append(member.name)
    # documented: members before the limit may already have been yielded
    assert seen == ["m0.jpg", "m1.jpg", "m2.jpg"]


def test_tar_gz_bomb_member_too_large_then_continues():
    data = make_tar([tar_entry("bomb.jpg", b"\x00" * (5 * MB)), tar_entry("ok.jpg", JPEG)], mode="w:gz")
    assert len(data) < 100 * 1024
    limits = ArchiveLimits(max_members=100, max_total_bytes=10 * MB, max_member_bytes=1 * MB)
    assert members(data, limits) == [ArchiveMember("bomb.jpg", None, "too large"), ArchiveMember("ok.jpg", JPEG, None)]


def test_tar_gz_bomb_total_cap_raises():
    data = make_tar([tar_entry("bomb.jpg", b"\x00" * (5 * MB)), tar_entry("ok.jpg", JPEG)], mode="w:gz")
    limits = ArchiveLimits(max_members=100, max_total_bytes=2 * MB, max_member_bytes=1 * MB)
    with pytest.raises(ArchiveRejected, match="archive too large"):
        members(data, limits)


def test_tar_total_size_cap_raises():
    chunk = b"\x00" * (900 * 1024)
    data = make_tar([tar_entry(f"m{i}.jpg", chunk) for i in range(5)], mode="w:gz")
    with pytest.raises(ArchiveRejected, match="archive too large"):
        members(data, BOMB_LIMITS)


def test_oversized_pax_header_rejected():
    data = make_tar([tar_entry("a.jpg", JPEG, comment="x" * (2 * MB))], mode="w:gz")
    with pytest.raises(ArchiveRejected, match="extended header"):
        members(data)


# --------------------------------------------------------------------------
# Member count
# --------------------------------------------------------------------------

COUNT_LIMITS = ArchiveLimits(max_members=10, max_total_bytes=10 * MB, max_member_bytes=1 * MB)


def test_member_count_at_limit_is_fine():
    assert len(members(make_zip([(f"{i}.jpg", JPEG) for i in range(10)]), COUNT_LIMITS)) == 10
    assert len(members(make_tar([tar_entry(f"{i}.jpg", JPEG) for i in range(10)]), COUNT_LIMITS)) == 10


def test_zip_too_many_members_rejected_before_first_member():
    data = make_zip([(f"{i}.jpg", JPEG) for i in range(11)])
    iterator = iter_archive(io.BytesIO(data), limits=COUNT_LIMITS)
    with pytest.raises(ArchiveRejected, match="too many members"):
        next(iterator)


def test_zip_member_count_includes_junk_and_directories():
    data = make_zip([("d/", b"")] + [(f"__MACOSX/._{i}", b"x") for i in range(9)] + [("a.jpg", JPEG)])
    with pytest.raises(ArchiveRejected, match="too many members"):
        members(data, COUNT_LIMITS)


def test_zip_oversized_central_directory_rejected_before_parsing(monkeypatch):
    # The end record can lie about the entry count; the central directory size cannot.
    data = make_zip([(f"{i:04d}-" + "n" * 250 + ".jpg", b"") for i in range(400)], compression=zipfile.ZIP_STORED)
    eocd = data.rindex(b"PK\x05\x06")
    patched = bytearray(data)
    struct.pack_into("<HH", patched, eocd + 8, 1, 1)  # claim a single entry

    def no_parsing(*args, **kwargs):
        raise AssertionError("central directory must not be parsed")

    monkeypatch.setattr(zipfile, "ZipFile", no_parsing)
    limits = ArchiveLimits(max_members=1, max_total_bytes=MB, max_member_bytes=MB)
    with pytest.raises(ArchiveRejected, match="too many members: central directory too large"):
        members(bytes(patched), limits)


@pytest.mark.parametrize("mode", ["w", "w:gz"])
def test_tar_too_many_members_rejected(mode):
    data = make_tar([tar_entry(f"{i}.jpg", JPEG) for i in range(11)], mode=mode)
    with pytest.raises(ArchiveRejected, match="too many members"):
        members(data, COUNT_LIMITS)


# --------------------------------------------------------------------------
# Corrupt / unsupported input
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        b"PK\x03\x04" + b"garbage" * 50,
        make_zip([("a.jpg", JPEG), ("b.jpg", PNG)])[:-30],  # truncated end record
        make_tar([tar_entry("a.jpg", JPEG)], mode="w:gz")[:60],  # truncated gzip stream
        b"\x1f\x8b\x08" + b"\xff" * 100,  # broken gzip
        gzip.compress(JPEG * 4),  # gzip, but not a tar inside
        bz2.compress(b"not a tar at all" * 100),
        lzma.compress(b"not a tar at all" * 100),
        b"\x00" * 257 + b"ustar" + b"\x00" * 250,  # ustar magic, invalid header
    ],
)
def test_corrupt_archive_rejected(payload):
    with pytest.raises(ArchiveRejected, match="corrupt archive"):
        members(payload)


def test_corrupt_zip_member_is_a_per_item_error():
    data = bytearray(make_zip([("a.jpg", JPEG), ("b.jpg", PNG)]))
    # Flip bytes inside the first member's compressed data.
    start = 30 + len("a.jpg")
    for i in range(start + 5, start + 25):
        data[i] ^= 0xFF
    result = members(bytes(data))
    assert result[0].name == "a.jpg" and result[0].error == "corrupt member" and result[0].data is None
    assert result[1] == ArchiveMember("b.jpg", PNG, None)


def test_encrypted_zip_member_is_a_per_item_error():
    data = make_zip([("secret.jpg", JPEG), ("b.jpg", PNG)])
    data = patch_central_directory(data, 8, "<H", 0x1, local_offset=6)
    result = [(m.name, m.error) for m in members(data)]
    assert result == [("secret.jpg", "encrypted member not supported"), ("b.jpg", None)]


def test_unsupported_zip_compression_is_a_per_item_error():
    data = make_zip([("odd.jpg", JPEG), ("b.jpg", PNG)])
    data = patch_central_directory(data, 10, "<H", 99, local_offset=8)
    result = [(m.name, m.error) for m in members(data)]
    assert result == [("odd.jpg", "unsupported compression method"), ("b.jpg", None)]


@pytest.mark.parametrize(
    "payload, message",
    [
        (JPEG, "unsupported archive format"),
        (b"", "unsupported archive format"),
        (b"7z\xbc\xaf\x27\x1c" + b"\x00" * 100, "unsupported archive format: 7z"),
        (b"Rar!\x1a\x07\x00" + b"\x00" * 100, "unsupported archive format: rar"),
    ],
)
def test_unsupported_formats(payload, message):
    with pytest.raises(ArchiveRejected, match=message):
        members(payload)


def test_rejections_are_value_errors():
    with pytest.raises(ValueError):
        members(b"PK\x03\x04broken")
