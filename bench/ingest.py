#!/usr/bin/env python
"""Ingestion throughput: each stage alone, then end to end (printed; no asserts).

Stages, each on its own with nothing else running: read + SHA-256 (one thread); decode +
preprocess (metadata, thumbnail, model input) in 1 and in 2 decode processes, and in the number
the import uses; embedding (the model alone, tensors ready); storing rows and vectors of a batch
(advisory locks, existence check, bulk inserts, one commit; files aside), and writing files
(parallel threads). Then ``ingest_items`` end to end over the same photos, and its rate as a
share of the slowest stage's.

Photos are generated once (real-size JPEGs with EXIF: orientation, time, GPS) and kept for re-runs.
Uses ViT-B-32 with random weights (same cost as trained ones, no download) and its own data folder:

    .venv/bin/python bench/ingest.py                              # 200 photos of 12 megapixels
    .venv/bin/python bench/ingest.py --count 40 --megapixels 4    # quicker
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import math
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

os.environ.setdefault("CLIP_MODEL", "ViT-B-32")
os.environ.setdefault("CLIP_RANDOM_INIT", "1")
os.environ.setdefault("IMAGESEARCH_DATA_DIR", str(ROOT / "var" / "bench-ingest"))
os.environ.setdefault("IMAGESEARCH_LOG_LEVEL", "WARNING")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "imagesearch.settings")

# Somewhere to pick GPS positions from (so the offline city lookup does real work).
PLACES = [(38.7223, -9.1393), (48.8566, 2.3522), (35.6762, 139.6503), (40.7128, -74.0060), (-33.8688, 151.2093),
          (59.9139, 10.7522), (31.2304, 121.4737), (19.4326, -99.1332)]


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=200, help="photos to import (default 200)")
    parser.add_argument("--megapixels", type=float, default=12.0, help="size of each photo (default 12)")
    parser.add_argument("--batch-size", type=int, default=None, help="model batch (default: CLIP_BATCH_SIZE)")
    parser.add_argument("--decode-workers", type=int, default=None,
                        help="decode processes end to end (default: IMAGESEARCH_DECODE_WORKERS, 0 = sized to the machine)")
    parser.add_argument("--store-count", type=int, default=4000, help="synthetic rows for the store stage")
    parser.add_argument("--repeat", type=int, default=1, help="run each measure this many times, keep the best")
    parser.add_argument("--store-connections", type=int, nargs="+", default=None,
                        help="store stage and end to end with each of these numbers of connections storing side "
                             "by side (default: IMAGESEARCH_STORE_CONNECTIONS)")
    parser.add_argument("--sample", type=int, default=None,
                        help="measure reading and decoding on this many of the photos (default all)")
    parser.add_argument("--gpu-decode", choices=("auto", "off", "both"), default="auto",
                        help="end to end with JPEGs decoded as IMAGESEARCH_GPU_JPEG_DECODE says (auto), only in "
                             "decode processes (off), or both ways side by side (where the model is on CUDA)")
    return parser.parse_args()


# --------------------------------------------------------------------------
# photos


def make_photo(args: tuple[Path, int, float]) -> Path:
    """A JPEG that costs what a camera photo costs to decode: smooth content plus sensor-like
    noise (a 12 MP one is ~3 MB at quality 92), with EXIF a camera writes."""
    import numpy as np
    from PIL import ExifTags, Image

    path, index, megapixels = args
    rng = np.random.default_rng(index)
    width = int(math.sqrt(megapixels * 1e6 * 4 / 3)) // 16 * 16
    height = width * 3 // 4
    coarse = rng.integers(0, 256, (max(2, height // 150), max(2, width // 150), 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC), dtype=np.int16)
    base += rng.normal(0, 5, (height, width, 1)).astype(np.int16)
    image = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    exif = Image.Exif()
    exif[ExifTags.Base.Make], exif[ExifTags.Base.Model] = "Bench", "Camera 12"
    exif[ExifTags.Base.Orientation] = 6 if index % 4 == 0 else 1
    exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.DateTimeOriginal] = f"2023:0{1 + index % 9}:1{index % 10} 12:00:00"
    lat, lon = PLACES[index % len(PLACES)]
    exif.get_ifd(ExifTags.IFD.GPSInfo).update({
        ExifTags.GPS.GPSLatitudeRef: "N" if lat >= 0 else "S", ExifTags.GPS.GPSLatitude: _dms(abs(lat)),
        ExifTags.GPS.GPSLongitudeRef: "E" if lon >= 0 else "W", ExifTags.GPS.GPSLongitude: _dms(abs(lon))})
    image.save(path, "JPEG", quality=92, exif=exif)
    return path


def _dms(value: float) -> tuple[float, float, float]:
    degrees = int(value)
    minutes = int((value - degrees) * 60)
    return float(degrees), float(minutes), round((value - degrees - minutes / 60) * 3600, 2)


def photo_folder(count: int, megapixels: float, data_dir: Path) -> list[Path]:
    folder = data_dir / "photos" / f"{megapixels:g}mp"
    folder.mkdir(parents=True, exist_ok=True)
    wanted = [folder / f"photo-{index:04d}.jpg" for index in range(count)]
    missing = [(path, index, megapixels) for index, path in enumerate(wanted) if not path.exists()]
    if missing:
        print(f"generating {len(missing)} photo(s) of {megapixels:g} MP in {folder} (kept for re-runs)...",
              flush=True)
        started = time.perf_counter()
        with ProcessPoolExecutor(max_workers=os.cpu_count()) as pool:
            list(pool.map(make_photo, missing, chunksize=4))
        print(f"  done in {time.perf_counter() - started:.0f} s", flush=True)
    return wanted


# --------------------------------------------------------------------------
# measurements


def best(measure, repeat: int) -> float:
    rates = [measure() for _ in range(repeat)]
    return max(rates)


def read_hash_rate(paths: list[Path]) -> float:
    started = time.perf_counter()
    for path in paths:
        hashlib.sha256(path.read_bytes()).hexdigest()
    return len(paths) / (time.perf_counter() - started)


def decode_rate(paths: list[Path], spec, workers: int) -> float:
    """Decode processes alone; photos sent by file name, as the pipeline sends items over 1 MiB."""
    from catalog.ingest.decoding import DecodePool

    with DecodePool(workers) as pool:
        for pending in [pool.submit(str(p), spec) for p in paths[:workers]]:  # start the processes
            pool.result(pending)
        started = time.perf_counter()
        results = [pool.result(pending) for pending in [pool.submit(str(p), spec) for p in paths]]
        elapsed = time.perf_counter() - started
    failed = [r.error for r in results if r.error]
    if failed:
        raise SystemExit(f"decoding failed: {failed[:3]}")
    return len(paths) / elapsed


def embed_rate(embedder, tensors: list, count: int) -> float:
    work = [tensors[i % len(tensors)] for i in range(count)]
    embedder.embed_prepared(work[:embedder.config.batch_size])  # warm-up for this shape
    started = time.perf_counter()
    embedder.embed_prepared(work)
    return count / (time.perf_counter() - started)


def store_rates(embedder, count: int, batch_size: int, lanes: list[int]) -> tuple[dict, float, float]:
    """Rows and vectors of synthetic items, a batch per transaction, files aside: into the model's
    space (its HNSW index updated on every insert) and into a space without an index (what the
    rest costs). Then the files of a tenth of them (a 3 MB photo and a thumbnail each), written by
    the pipeline's parallel writers."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    from django.core.files.storage import default_storage

    from catalog import spaces
    from catalog.imaging import ImageMetadata
    from catalog.ingest import pipeline
    from catalog.ingest.lanes import StoreLanes
    from catalog.models import Embedding, EmbeddingSpace, Image

    options = pipeline.IngestOptions(source=Image.Source.FOLDER)
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(count, embedder.dimensions)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    items = []
    for index in range(count):
        prepared = pipeline._Prepared(item=pipeline.IngestItem.from_bytes(f"synthetic-{index}.jpg", b""), index=index,
                                      sha256=hashlib.sha256(f"bench-{index}".encode()).hexdigest(),
                                      held=b"x" * 3_000_000 if index < count // 10 else b"", thumbnail=b"y" * 20_000)
        lat, lon = PLACES[index % len(PLACES)]
        prepared.metadata = ImageMetadata(width=4000, height=3000, format="JPEG", taken_at=None,
                                          latitude=lat, longitude=lon)
        items.append(prepared)

    def store(start: int, space) -> None:
        pairs = list(zip(items[start:start + batch_size], [[(space, v)] for v in vectors[start:start + batch_size]],
                         strict=True))
        outcomes = pipeline._store_batch(pairs, options=options, on_added=None, write_files=lambda batch: None)
        assert all(o.status == "added" for o in outcomes), outcomes[:3]

    def rows(space, connections: int = 1) -> float:
        _empty_collection(default_storage, Image)
        started = time.perf_counter()
        with StoreLanes(connections) as lanes:
            for start in range(0, count, batch_size):
                lanes.submit(store, start, space)
        return count / (time.perf_counter() - started)

    space = spaces.ensure_space(config=embedder.config, dimensions=embedder.dimensions,
                                state=EmbeddingSpace.State.RETIRED)
    indexed = {n: rows(space, n) for n in lanes}
    bare, _ = EmbeddingSpace.objects.get_or_create(name="bench: no index", dimensions=embedder.dimensions,
                                                   defaults={"state": EmbeddingSpace.State.RETIRED})
    unindexed = rows(bare)
    # The same with the embeddings inserted by bulk_create, as before catalog/ingest/rows.py.
    copy = pipeline.copy_embeddings
    pipeline.copy_embeddings = lambda rows: Embedding.objects.bulk_create(
        [Embedding(image_id=image_id, space_id=space_id, vector=vector) for image_id, space_id, vector in rows])
    try:
        unindexed_orm = rows(bare)
    finally:
        pipeline.copy_embeddings = copy
    with_files = items[:count // 10]
    with ThreadPoolExecutor(max_workers=pipeline.FILE_WRITERS) as writers:
        started = time.perf_counter()
        for start in range(0, len(with_files), batch_size):
            pipeline._write_files(with_files[start:start + batch_size], writers)
        files = len(with_files) / (time.perf_counter() - started)
    _empty_collection(default_storage, Image)
    bare.delete()
    return indexed, (unindexed, unindexed_orm), files


def pipeline_rate(embedder, paths: list[Path], decode_workers: int | None, connections: int) -> tuple[float, float]:
    """Our import, end to end, into an empty collection: the rate over the whole run, and the
    steady rate (after the first batch is stored: without filling and starting the pipeline)."""
    from django.core.files.storage import default_storage

    from catalog.ingest.pipeline import IngestOptions, ingest_items
    from catalog.ingest.sources import path_items
    from catalog.models import Image

    _empty_collection(default_storage, Image)
    times: list[float] = []
    started = time.perf_counter()
    report = ingest_items(path_items(paths, root=paths[0].parent), options=IngestOptions(source=Image.Source.FOLDER),
                          embedder=embedder, decode_workers=decode_workers, store_connections=connections,
                          on_outcome=lambda outcome: times.append(time.perf_counter()))
    elapsed = time.perf_counter() - started
    if report.failed or report.added != len(paths):
        raise SystemExit(f"import went wrong: added {report.added}, failed {report.failed[:3]}")
    times.sort()
    first = embedder.config.batch_size
    steady = (len(times) - first) / (times[-1] - times[first - 1]) if len(times) > 2 * first else float("nan")
    return len(paths) / elapsed, steady


def _empty_collection(storage, Image) -> None:
    Image.objects.all().delete()
    for folder in ("images", "thumbnails"):
        shutil.rmtree(Path(storage.location) / folder, ignore_errors=True)


# --------------------------------------------------------------------------


def main() -> None:
    args = parse_args()
    import django

    django.setup()
    import torch
    from django.conf import settings
    from django.core.management import call_command

    from catalog import geocode
    from catalog.embedder import get_embedder
    from catalog.ingest import decoding, pipeline

    call_command("migrate", verbosity=0, skip_checks=True)
    paths = photo_folder(args.count, args.megapixels, settings.DATA_DIR)
    size_mb = sum(p.stat().st_size for p in paths) / len(paths) / 1e6
    embedder = get_embedder()
    if args.batch_size:
        embedder.config = dataclasses.replace(embedder.config, batch_size=args.batch_size)
    batch = embedder.config.batch_size
    device = embedder.pixel_fit()[3]
    workers = (args.decode_workers or settings.INGEST_DECODE_WORKERS
               or decoding.default_workers(cuda=device.startswith("cuda")))
    print(f"{len(paths)} photos, {args.megapixels:g} MP, {size_mb:.1f} MB each on average; "
          f"{decoding.usable_cores()} CPU(s), torch {torch.__version__} with {torch.get_num_threads()} thread(s), "
          f"model {settings.CLIP_MODEL} (random weights) on {device}, batch {batch}, "
          f"{workers} decode process(es) end to end", flush=True)
    print(f"load average before: {_load()}", flush=True)
    geocode.city_at(0.0, 0.0)  # load the city table once (per process, not per image)
    spec = pipeline.decode_spec(embedder)

    staged = paths[:args.sample] if args.sample else paths
    rates = {}
    rates["read + SHA-256 (1 thread)"] = best(lambda: read_hash_rate(staged), args.repeat)
    print(f"  read + SHA-256: {rates['read + SHA-256 (1 thread)']:.1f}", flush=True)
    decode = {}
    for n in sorted({1, 2, workers}):
        decode[n] = best(lambda n=n: decode_rate(staged, spec, n), args.repeat)
        print(f"  decode + preprocess, {n} process(es): {decode[n]:.1f}", flush=True)
    rates[f"decode + preprocess ({workers} process(es))"] = decode[workers]
    sample = [decoding.decode(str(p), spec).pixels for p in paths[:16]]
    tensors = [embedder.tensor_from_pixels(p) for p in sample]
    rates[f"embed, the model alone (batch {batch})"] = best(
        lambda: embed_rate(embedder, tensors, max(4 * batch, 128)), args.repeat)
    print(f"  embed: {rates[f'embed, the model alone (batch {batch})']:.1f}", flush=True)
    lanes = args.store_connections or [settings.INGEST_STORE_CONNECTIONS]
    stored, (unindexed, unindexed_orm), files = store_rates(embedder, args.store_count, batch, lanes)
    for n, rate in stored.items():
        print(f"  store rows, {n} connection(s): {rate:.1f}", flush=True)
    print(f"  store rows without the HNSW index, 1 connection: {unindexed:.1f} (embeddings by bulk_create instead "
          f"of COPY: {unindexed_orm:.1f}); files: {files:.1f}", flush=True)
    rows = stored[lanes[0]]
    rates[f"store rows + vectors (batch {batch}, files aside, {lanes[0]} connection(s))"] = rows
    from catalog.ingest import gpu_decoding

    on_gpu = device.startswith("cuda") and gpu_decoding.available()
    modes = {"auto": [on_gpu and settings.INGEST_GPU_JPEG_DECODE], "off": [False],
             "both": [True, False] if on_gpu else [False]}[args.gpu_decode]
    ends, steady = {}, {}
    for gpu in modes:
        for n in lanes if not gpu else lanes[:1]:
            settings.INGEST_GPU_JPEG_DECODE = gpu  # the pipeline reads it once per import
            ends[gpu, n], steady[gpu, n] = max(pipeline_rate(embedder, paths, workers, n) for _ in range(args.repeat))
            print(f"  end to end, JPEGs decoded {'on the GPU' if gpu else 'in decode processes'}, {n} store "
                  f"connection(s): {ends[gpu, n]:.1f} (steady, after the first batch: {steady[gpu, n]:.1f})",
                  flush=True)
    end_to_end = ends[modes[0], lanes[0]]
    print(f"load average after: {_load()}")
    print()
    print(f"{'stage':60}{'images/s':>10}")
    for name, rate in rates.items():
        print(f"{name:60}{rate:10.1f}")
    print(f"{'  (the same rows into a space without an HNSW index)':60}{unindexed:10.1f}")
    print(f"{'  (write files: photo + thumbnail, 4 threads; beside the rows)':60}{files:10.1f}")
    for n, rate in list(stored.items())[1:]:
        print(f"{f'  (store rows + vectors, {n} connections)':60}{rate:10.1f}")
    for (gpu, n), rate in ends.items():
        label = f"end to end: ingest_items, {n} store conn." + (", JPEGs on the GPU" if gpu else "")
        print(f"{label:60}{rate:10.1f}")
        print(f"{'  (the same, steady: after the first batch is stored)':60}{steady[gpu, n]:10.1f}")
    print()
    slowest = min(rates, key=rates.get)
    print(f"decode scaling 1 -> 2 processes: {decode[2] / decode[1]:.2f}x (target >= 1.8)")
    print(f"store rows: {rows:.0f} images/s (target >= 2000); {unindexed:.0f} without the HNSW index")
    print(f"end to end / slowest stage ({slowest}): {100 * end_to_end / rates[slowest]:.0f}% (target >= 90%)")
    # Stages that share the same cores add their CPU costs: the bound end to end can reach here.
    cores = decoding.usable_cores()
    embed_rate_ = rates[f"embed, the model alone (batch {batch})"]
    if not device.startswith("cuda"):
        cpu_per_image = torch.get_num_threads() / embed_rate_ + 1 / decode[1] + 1 / rows
        bound = min(cores / cpu_per_image, embed_rate_)
        print(f"with the model and decoding sharing {cores} core(s) (model {1000 * torch.get_num_threads() / embed_rate_:.0f} ms "
              f"of CPU per image, decoding {1000 / decode[1]:.0f} ms), end to end cannot exceed about {bound:.1f} images/s: "
              f"measured {100 * end_to_end / bound:.0f}% of that")


def _load() -> str:
    try:
        return " ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        return "n/a"


if __name__ == "__main__":
    main()
