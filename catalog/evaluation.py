"""Measure a model on the user's own pictures, in memory (``manage.py evaluate``).

Inputs: a labelled folder (one sub-folder per class) and/or a CSV of image path + caption. For each
model: zero-shot classification top-1/top-5 (prompt "a photo of a {class}"), text-to-image
recall@1/5/10 (each caption against the CSV's images), image-to-image near-duplicate recall@1 (light
variants made with a seed, each against every original) and the lowest search score that keeps 90%
precision for near-duplicates, i.e. an evidence-based ``min_score``. Nothing is imported: pictures are
decoded, embedded in batches and dropped; only one vector per picture is kept (two passes over the
files), so memory grows with the number of pictures times the dimension, never with their pixels.
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from catalog.embedder import ClipEmbedder, EmbedderConfig, EmbedderUnavailable, get_embedder

PROMPT = "a photo of a {}"
VARIANTS = ("copy", "crop", "resize", "jpeg", "flip", "jitter")
# "copy" (the unchanged picture) is a sanity check: it is reported but left out of the aggregate.
TRANSFORMS = VARIANTS[1:]
TARGET_PRECISION = 0.9
# Score histogram for the threshold: bounded memory whatever the number of pairs; 0.0005 resolution.
_BINS = np.linspace(-1.0, 1.0, 4001)
METRICS = ("zero_shot_top1", "zero_shot_top5", "text_to_image_recall@1", "text_to_image_recall@5",
           "text_to_image_recall@10", "near_duplicate_recall@1", "near_duplicate_threshold_p90",
           "near_duplicate_recall_at_threshold")


class EvaluationError(ValueError):
    """The inputs cannot be evaluated at all (the message says why)."""


@dataclass
class EvalSet:
    """Unique pictures (by content) with their class and the captions that point at them."""

    paths: list[Path] = field(default_factory=list)
    labels: list[str | None] = field(default_factory=list)  # class of each picture, None if from the CSV only
    in_csv: list[bool] = field(default_factory=list)
    captions: list[tuple[str, int]] = field(default_factory=list)  # (caption, picture index)
    classes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # one line per bad item
    unreadable: set[str] = field(default_factory=set)  # pictures already in ``problems``
    source: dict = field(default_factory=dict)


def load_eval_set(*, folder: Path | None = None, captions_csv: Path | None = None) -> EvalSet:
    """List the pictures of ``folder`` (sub-folder name = class) and ``captions_csv`` (rows of
    ``path,caption``; a header row is allowed; relative paths are relative to the CSV)."""
    from catalog.ingest.sources import looks_like_image

    if folder is None and captions_csv is None:
        raise EvaluationError("give a labelled folder, a captions CSV, or both")
    data = EvalSet(source={"folder": str(folder) if folder else None,
                           "captions": str(captions_csv) if captions_csv else None})
    by_hash: dict[str, int] = {}

    def add(path: Path, *, label: str | None, from_csv: bool) -> int | None:
        if not path.is_file():  # a device or a FIFO (/dev/zero) would be read forever
            data.problems.append(f"{path}: not a regular file")
            return None
        try:
            digest = _file_hash(path)
        except OSError as error:
            data.problems.append(f"{path}: {error.strerror or error}")
            return None
        index = by_hash.get(digest)
        if index is None:
            index = by_hash[digest] = len(data.paths)
            data.paths.append(path)
            data.labels.append(label)
            data.in_csv.append(from_csv)
        else:  # the same picture twice: one gallery entry, or near-duplicate recall would be ambiguous
            data.labels[index] = data.labels[index] or label
            data.in_csv[index] = data.in_csv[index] or from_csv
        return index

    if folder is not None:
        if not folder.is_dir():
            raise EvaluationError(f"{folder} is not a folder")
        class_dirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
        if len(class_dirs) < 2:
            raise EvaluationError(f"{folder} needs at least two class sub-folders (one per class)")
        for class_dir in class_dirs:
            data.classes.append(class_dir.name)
            for path in sorted(class_dir.rglob("*")):
                if path.is_file() and looks_like_image(path) and not any(
                        part.startswith(".") for part in path.relative_to(class_dir).parts):
                    add(path, label=class_dir.name, from_csv=False)
    if captions_csv is not None:
        try:
            handle = captions_csv.open(newline="", encoding="utf-8-sig")
        except OSError as error:
            raise EvaluationError(f"cannot read {captions_csv}: {error.strerror or error}") from None
        with handle:
            for line, row in enumerate(csv.reader(handle), start=1):
                if line == 1 and [c.strip().lower() for c in row[:2]] in (["path", "caption"], ["image", "caption"]):
                    continue
                if not row or all(not cell.strip() for cell in row):
                    continue
                if len(row) != 2 or not row[0].strip() or not row[1].strip():
                    data.problems.append(f"{captions_csv}:{line}: expected two columns, image path and caption")
                    continue
                path = Path(row[0].strip())
                index = add(path if path.is_absolute() else captions_csv.parent / path, label=None, from_csv=True)
                if index is not None:
                    data.captions.append((row[1].strip(), index))
    if not data.paths:
        raise EvaluationError("no pictures found")
    return data


def _file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --- models ---------------------------------------------------------------------------------------


def config_for_name(name: str | None) -> EmbedderConfig:
    """The model to evaluate: a space's recorded model when ``name`` is a space's name (None: the
    active space's, or the configured model on a database without one), else ``ARCH/WEIGHTS``
    parsed as space names are written (WEIGHTS: an open_clip pretrained tag, ``random-init``, or
    ``file:/path/to/weights``). CLIP_RANDOM_INIT makes every model random (tests)."""
    from django.conf import settings

    from catalog.models import EmbeddingSpace
    from catalog.spaces import active_space

    space = active_space() if name is None else EmbeddingSpace.objects.filter(name=name).first()
    if space is not None and space.has_model:
        return EmbedderConfig.for_space(space)
    if name is None:
        return EmbedderConfig.from_settings()
    arch, sep, weights = name.partition("/")
    if not sep or not arch or not weights:
        raise EmbedderUnavailable(f"--model {name!r}: expected ARCH/PRETRAINED, e.g. ViT-B-32/laion2b_s34b_b79k")
    weights_file = Path(weights[len("file:"):]) if weights.startswith("file:") else None
    random_init = settings.CLIP_RANDOM_INIT or weights == "random-init"
    return replace(EmbedderConfig.from_settings(), model=arch,
                   pretrained=None if (weights_file or random_init) else weights,
                   weights_file=None if random_init else weights_file, random_init=random_init)


def embedder_for(name: str | None) -> ClipEmbedder:
    """The loaded model for ``name`` (see config_for_name); raises EmbedderUnavailable with one line
    if it cannot be loaded."""
    config = config_for_name(name)
    if config == EmbedderConfig.from_settings():
        return get_embedder()  # the process's own, loaded once
    return ClipEmbedder(config).load()  # not cached: freed once evaluated


# --- evaluation -----------------------------------------------------------------------------------


def variants(image, *, seed: int, index: int) -> dict:
    """The near-duplicate variants of one RGB picture, the same for the same (seed, index)."""
    from PIL import Image, ImageEnhance, ImageOps

    rng = np.random.default_rng([seed, index])
    w, h = image.size
    side = rng.uniform(0.75, 0.9)  # keep 56-81% of the area, somewhere in the picture
    cw, ch = max(1, round(w * side)), max(1, round(h * side))
    left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    scale = rng.uniform(0.4, 0.6)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=int(rng.integers(20, 41)))
    jitter = image
    for enhancer in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        jitter = enhancer(jitter).enhance(float(rng.uniform(0.7, 1.3)))
    return {
        "copy": image,
        "crop": image.crop((left, top, left + cw, top + ch)),
        "resize": image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BILINEAR),
        "jpeg": Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"),
        "flip": ImageOps.mirror(image),
        "jitter": jitter,
    }


def evaluate(*, embedder: ClipEmbedder, data: EvalSet, seed: int = 0,
             on_progress: Callable[[int], None] | None = None) -> dict:
    """Every metric for one model on ``data``; pictures that cannot be decoded are added to
    ``data.problems`` (once) and left out. ``on_progress`` gets picture counts (two passes)."""
    embedder.load()
    progress = on_progress or (lambda n: None)
    decode_side = 2 * embedder.input_size  # room for the crop and resize variants
    gallery = np.zeros((len(data.paths), embedder.dimensions), dtype=np.float32)
    valid = np.zeros(len(data.paths), dtype=bool)
    batch = max(1, embedder.config.batch_size)

    # Pass 1: one vector per picture.
    for start in range(0, len(data.paths), batch):
        indexes, pictures = [], []
        for index in range(start, min(start + batch, len(data.paths))):
            picture = _decode(data.paths[index], min_side=decode_side, data=data)
            if picture is not None:
                indexes.append(index)
                pictures.append(picture)
        if pictures:
            gallery[indexes] = embedder.embed_images(pictures)
            valid[indexes] = True
        progress(min(batch, len(data.paths) - start))

    metrics: dict = dict.fromkeys(METRICS)
    metrics.update(_zero_shot(embedder, data, gallery, valid))
    metrics.update(_text_to_image(embedder, data, gallery, valid))

    # Pass 2: the variants of each picture against every original.
    hits = {name: 0 for name in VARIANTS}
    queries = {name: 0 for name in VARIANTS}
    positives = np.zeros(len(_BINS) - 1, dtype=np.int64)
    negatives = np.zeros(len(_BINS) - 1, dtype=np.int64)
    gallery_valid = gallery[valid]
    gallery_index = np.flatnonzero(valid)
    position = {int(index): pos for pos, index in enumerate(gallery_index)}
    for start in range(0, len(data.paths), batch):
        sources, pictures, kinds = [], [], []
        for index in range(start, min(start + batch, len(data.paths))):
            if not valid[index]:
                continue
            picture = _decode(data.paths[index], min_side=decode_side, data=data)
            if picture is None:
                continue
            for name, variant in variants(picture, seed=seed, index=index).items():  # "copy" first
                sources.append(position[index])
                pictures.append(variant)
                kinds.append(name)
        for chunk in range(0, len(pictures), batch):
            kinds_here = kinds[chunk:chunk + batch]
            # The unchanged copy is the picture pass 1 embedded: its vector is the gallery's own.
            vectors = np.zeros((len(kinds_here), gallery.shape[1]), dtype=np.float32)
            fresh = [i for i, kind in enumerate(kinds_here) if kind != "copy"]
            if fresh:
                vectors[fresh] = embedder.embed_images([pictures[chunk + i] for i in fresh])
            for i, kind in enumerate(kinds_here):
                if kind == "copy":
                    vectors[i] = gallery_valid[sources[chunk + i]]
            scores = vectors @ gallery_valid.T
            for row, source, kind in zip(scores, sources[chunk:chunk + batch], kinds_here, strict=True):
                queries[kind] += 1
                hits[kind] += int(np.argmax(row) == source)
                if kind != "copy":
                    positives += np.histogram(row[source:source + 1], _BINS)[0]
                    negatives += np.histogram(np.delete(row, source), _BINS)[0]
        progress(min(batch, len(data.paths) - start))

    by_variant = {name: _ratio(hits[name], queries[name]) for name in VARIANTS}
    metrics["near_duplicate_recall@1"] = _ratio(sum(hits[n] for n in TRANSFORMS), sum(queries[n] for n in TRANSFORMS))
    metrics.update(_threshold(positives, negatives))
    return {
        "model": embedder.space_name,
        "dimensions": embedder.dimensions,
        "dataset": {**data.source, "pictures": int(valid.sum()), "classes": len(data.classes),
                    "captions": len(data.captions), "skipped": int((~valid).sum()), "seed": seed},
        "metrics": metrics,
        "near_duplicate_recall@1_by_variant": by_variant,
    }


def _decode(path: Path, *, min_side: int, data: EvalSet):
    from django.conf import settings

    from catalog.imaging import ImageRejected, decode_image

    try:
        return decode_image(path, max_pixels=settings.IMAGE_MAX_PIXELS, min_side=min_side).image
    except (ImageRejected, OSError) as error:
        if str(path) not in data.unreadable:
            data.unreadable.add(str(path))
            data.problems.append(f"{path}: {error}")
        return None


def _ratio(hits: int, total: int) -> float | None:
    return round(hits / total, 4) if total else None


def _zero_shot(embedder: ClipEmbedder, data: EvalSet, gallery: np.ndarray, valid: np.ndarray) -> dict:
    labelled = [i for i, label in enumerate(data.labels) if label is not None and valid[i]]
    if not labelled or len(data.classes) < 2:
        return {}
    prompts = embedder.embed_texts([PROMPT.format(name.replace("_", " ").replace("-", " "))
                                    for name in data.classes])
    truth = np.array([data.classes.index(data.labels[i]) for i in labelled])
    k = min(5, len(data.classes))
    top1 = top5 = 0
    for start in range(0, len(labelled), 1024):
        scores = gallery[labelled[start:start + 1024]] @ prompts.T
        expected = truth[start:start + 1024]
        ranked = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        top1 += int((ranked[:, 0] == expected).sum())
        top5 += int((ranked == expected[:, None]).any(axis=1).sum())
    return {"zero_shot_top1": _ratio(top1, len(labelled)), "zero_shot_top5": _ratio(top5, len(labelled))}


def _text_to_image(embedder: ClipEmbedder, data: EvalSet, gallery: np.ndarray, valid: np.ndarray) -> dict:
    captions = [(text, index) for text, index in data.captions if valid[index]]
    targets = sorted({index for _, index in captions})
    if not captions:
        return {}
    position = {index: pos for pos, index in enumerate(targets)}
    images = gallery[targets]
    found = {1: 0, 5: 0, 10: 0}
    for start in range(0, len(captions), 256):
        chunk = captions[start:start + 256]
        scores = embedder.embed_texts([text for text, _ in chunk]) @ images.T
        own = scores[np.arange(len(chunk)), [position[index] for _, index in chunk]]
        rank = (scores > own[:, None]).sum(axis=1)  # pictures scored strictly higher than the right one
        for k in found:
            found[k] += int((rank < k).sum())
    return {f"text_to_image_recall@{k}": _ratio(n, len(captions)) for k, n in found.items()}


def _threshold(positives: np.ndarray, negatives: np.ndarray) -> dict:
    """The lowest score at which matches scoring at least that are >= 90% true near-duplicates
    (precision over every variant-original pair, as a search with ``min_score`` would return them)."""
    pos_above = np.cumsum(positives[::-1])[::-1]
    neg_above = np.cumsum(negatives[::-1])[::-1]
    total = pos_above[0] if len(pos_above) else 0
    if not total:
        return {}
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = pos_above / (pos_above + neg_above)
    # Only bins holding a true match: the threshold is then a score a true match had.
    ok = np.flatnonzero((positives > 0) & (precision >= TARGET_PRECISION))
    if not len(ok):
        return {}
    lowest = int(ok[0])
    return {"near_duplicate_threshold_p90": round(float(_BINS[lowest]), 4),
            "near_duplicate_recall_at_threshold": _ratio(int(pos_above[lowest]), int(total))}


# --- results --------------------------------------------------------------------------------------


def save_run(*, results: dict):
    """Keep ``results`` as the latest evaluation of its space (shown in the admin)."""
    from catalog.models import EvaluationRun

    return EvaluationRun.objects.create(space_name=results["model"], results=results)


def format_table(runs: list[dict]) -> str:
    """One row per metric, one column per model; "-" where the inputs do not give the metric."""
    rows = [("metric", *(run["model"] for run in runs))]
    for name in METRICS:
        rows.append((name, *(_cell(run["metrics"].get(name)) for run in runs)))
    for name in VARIANTS:
        rows.append((f"  near_duplicate_recall@1 {name}",
                     *(_cell(run["near_duplicate_recall@1_by_variant"].get(name)) for run in runs)))
    rows.append(("pictures / classes / captions",
                 *(f"{run['dataset']['pictures']} / {run['dataset']['classes']} / {run['dataset']['captions']}"
                   for run in runs)))
    widths = [max(len(row[col]) for row in rows) for col in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) if col == 0 else cell.rjust(width)
                       for col, (cell, width) in enumerate(zip(row, widths, strict=True))).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def _cell(value) -> str:
    return "-" if value is None else f"{value:.4f}"
