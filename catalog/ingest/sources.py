"""Turn where images come from (a folder, a set of files) into pipeline items."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from catalog.ingest.pipeline import IngestItem

# What a folder import tries by default. Other files (sidecar .json/.xmp, videos, notes) are
# counted and left alone rather than reported as failed images.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".jpe", ".png", ".webp", ".gif", ".bmp", ".dib", ".tif", ".tiff",
                            ".heic", ".heif", ".hif", ".avif", ".mpo"})


def looks_like_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def folder_files(root: Path, *, recursive: bool) -> list[Path]:
    """Regular files under ``root`` in a stable order, skipping hidden files and folders."""
    pattern = "**/*" if recursive else "*"
    return sorted(
        path for path in root.glob(pattern)
        if path.is_file() and not path.is_symlink()
        and not any(part.startswith(".") for part in path.relative_to(root).parts)
    )


def path_items(paths: list[Path], *, root: Path | None = None) -> Iterator[IngestItem]:
    for path in paths:
        name = str(path.relative_to(root)) if root else path.name
        yield IngestItem(name=name, source_ref=str(path), read=path.read_bytes)
