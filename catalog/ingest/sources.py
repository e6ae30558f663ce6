"""Turn where images come from (a folder, a set of files) into pipeline items."""

from __future__ import annotations

import functools

from collections.abc import Iterator
from pathlib import Path

from catalog.ingest.pipeline import IngestItem

# What a folder import tries by default: images and videos (their key frames). Other files (sidecar
# .json/.xmp, notes) are counted and left alone rather than reported as failed images.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".jpe", ".png", ".webp", ".gif", ".bmp", ".dib", ".tif", ".tiff",
                            ".heic", ".heif", ".hif", ".avif", ".mpo"})
VIDEO_SUFFIXES = frozenset({".mp4", ".m4v", ".mov", ".qt", ".webm", ".mkv", ".avi"})


def looks_like_image(path: Path) -> bool:
    """Whether a folder import tries it by default (an image or a video; the bytes decide which)."""
    return path.suffix.lower() in IMAGE_SUFFIXES or path.suffix.lower() in VIDEO_SUFFIXES


def folder_listing(root: Path, *, recursive: bool) -> tuple[list[Path], int]:
    """Regular files under ``root`` in a stable order, and how many hidden files (a name, or a
    folder on the way, starting with a dot) were left out."""
    pattern = "**/*" if recursive else "*"
    files, hidden = [], 0
    for path in root.glob(pattern):
        if not path.is_file() or path.is_symlink():
            continue
        if any(part.startswith(".") for part in path.relative_to(root).parts):
            hidden += 1
        else:
            files.append(path)
    return sorted(files), hidden


def path_items(paths: list[Path], *, root: Path | None = None) -> Iterator[IngestItem]:
    for path in paths:
        # Names that are not valid UTF-8 arrive with surrogate escapes: IngestItem makes them safe,
        # while the path itself still opens.
        name = str(path.relative_to(root)) if root else path.name
        yield IngestItem(name=name, source_ref=str(path), read=functools.partial(path.open, "rb"))
