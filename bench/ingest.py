#!/usr/bin/env python
"""Ingestion throughput, three figures side by side (printed; no asserts):

  (a) the model alone: embedding pre-decoded tensors, at a few batch sizes (the best one is used below)
  (b) our import: catalog.ingest.pipeline.ingest_items on a folder of photos (read, hash, decode with
      metadata, thumbnail, preprocess, embed, store files + rows), i.e. what every import runs
  (c) a one-image-at-a-time loop as tutorials write it: PIL open at full size, preprocess,
      encode_image with a batch of one, save the vector and the file

Photos are generated once (real-size JPEGs with EXIF: orientation, time, GPS) and kept for re-runs.
Uses ViT-B-32 with random weights (same cost as trained ones, no download) and its own data folder:

    .venv/bin/python bench/ingest.py                       # 200 photos of 12 megapixels
    .venv/bin/python bench/ingest.py --count 40 --megapixels 4    # quicker
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import shutil
import sys
import tempfile
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
    parser.add_argument("--batch-sizes", default="1,8,16,32,64", help="batch sizes tried for (a)")
    parser.add_argument("--naive-count", type=int, default=50, help="photos for the slow loop (c) (default 50)")
    parser.add_argument("--decode-workers", type=int, default=None,
                        help="decode threads for (b) (default: IMAGESEARCH_DECODE_WORKERS)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run (a) and (b) this many times and keep the best (for noisy machines)")
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


def model_throughput(embedder, tensors, batch_sizes: list[int], repeat: int) -> dict[int, float]:
    """(a): the model's own speed on pre-decoded tensors, at each batch size (what
    ClipEmbedder.embed_prepared does: stack, encode_image, normalise)."""
    results = {}
    config = embedder.config
    for batch_size in batch_sizes:
        embedder.config = dataclasses.replace(config, batch_size=batch_size)
        count = max(4 * batch_size, 128)
        work = [tensors[i % len(tensors)] for i in range(count)]
        embedder.embed_prepared(work[:batch_size])  # warm-up for this shape
        rates = []
        for _ in range(repeat):
            started = time.perf_counter()
            embedder.embed_prepared(work)
            rates.append(count / (time.perf_counter() - started))
        results[batch_size] = max(rates)
        print(f"  (a) batch {batch_size:>3}: {_rates(rates)} images/s", flush=True)
    embedder.config = config
    return results


def preparation_cost(embedder, paths: list[Path]) -> float:
    """CPU seconds one image costs outside the model (read, hash, decode + metadata, thumbnail,
    model input), measured on one thread."""
    import hashlib

    from django.conf import settings

    from catalog.imaging import decode_image, make_thumbnail

    min_side = max(embedder.input_size, settings.THUMBNAIL_MAX_SIDE)
    started = time.process_time()
    for path in paths:
        data = path.read_bytes()
        hashlib.sha256(data).hexdigest()
        decoded = decode_image(data, max_pixels=settings.IMAGE_MAX_PIXELS, min_side=min_side)
        make_thumbnail(decoded.image, max_side=settings.THUMBNAIL_MAX_SIDE)
        embedder.prepare_image(decoded.image)
    return (time.process_time() - started) / len(paths)


def _rates(rates: list[float]) -> str:
    best = f"{max(rates):7.1f}"
    return best if len(rates) == 1 else f"{best}  (runs: {', '.join(f'{r:.1f}' for r in rates)})"


def pipeline_throughput(embedder, paths: list[Path], decode_workers: int | None) -> tuple[float, object]:
    """(b): our import, end to end, into an empty collection."""
    from django.core.files.storage import default_storage

    from catalog.ingest.pipeline import IngestOptions, ingest_items
    from catalog.ingest.sources import path_items
    from catalog.models import Image

    _empty_collection(default_storage, Image)
    started = time.perf_counter()
    report = ingest_items(path_items(paths, root=paths[0].parent), options=IngestOptions(source=Image.Source.FOLDER),
                          embedder=embedder, decode_workers=decode_workers)
    elapsed = time.perf_counter() - started
    if report.failed or report.added != len(paths):
        raise SystemExit(f"import went wrong: added {report.added}, failed {report.failed[:3]}")
    return len(paths) / elapsed, report


def naive_throughput(paths: list[Path]) -> float:
    """(c): the reference loop, one photo at a time, as tutorials write it."""
    import numpy as np
    import open_clip
    import torch
    from PIL import Image

    model, _, preprocess = open_clip.create_model_and_transforms(os.environ["CLIP_MODEL"], pretrained=None)
    model.eval()
    out = Path(tempfile.mkdtemp(prefix="bench-naive-"))
    try:
        with torch.no_grad():
            model.encode_image(preprocess(Image.new("RGB", (640, 480))).unsqueeze(0))  # warm-up
            started = time.perf_counter()
            for path in paths:
                image = Image.open(path).convert("RGB")
                features = model.encode_image(preprocess(image).unsqueeze(0))
                features = features / features.norm(dim=-1, keepdim=True)
                np.save(out / f"{path.stem}.npy", features.numpy())
                shutil.copyfile(path, out / path.name)
            return len(paths) / (time.perf_counter() - started)
    finally:
        shutil.rmtree(out, ignore_errors=True)


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
    from catalog.imaging import decode_image

    call_command("migrate", verbosity=0, skip_checks=True)
    paths = photo_folder(args.count, args.megapixels, settings.DATA_DIR)
    size_mb = sum(p.stat().st_size for p in paths) / len(paths) / 1e6
    print(f"{len(paths)} photos, {args.megapixels:g} MP, {size_mb:.1f} MB each on average; "
          f"{os.cpu_count()} CPU(s), torch {torch.__version__} with {torch.get_num_threads()} thread(s), "
          f"model {settings.CLIP_MODEL} (random weights) on {settings.CLIP_DEVICE}", flush=True)

    embedder = get_embedder()
    geocode.city_at(0.0, 0.0)  # load the city table once (per process, not per image)
    min_side = max(embedder.input_size, settings.THUMBNAIL_MAX_SIDE)
    tensors = [embedder.prepare_image(decode_image(p, max_pixels=settings.IMAGE_MAX_PIXELS, min_side=min_side).image)
               for p in paths[:16]]

    print(f"load average before: {_load()}", flush=True)
    model = model_throughput(embedder, tensors, [int(b) for b in args.batch_sizes.split(",")], args.repeat)
    best_batch = max(model, key=model.get)
    embedder.config = dataclasses.replace(embedder.config, batch_size=best_batch)
    workers = args.decode_workers or settings.INGEST_DECODE_WORKERS
    print(f"  (b) importing {len(paths)} photos with batch {best_batch}, {workers} decode thread(s)...", flush=True)
    runs = [pipeline_throughput(embedder, paths, args.decode_workers)[0] for _ in range(args.repeat)]
    ours = max(runs)
    print(f"  (b) {_rates(runs)} images/s", flush=True)
    naive_paths = paths[:max(1, min(args.naive_count, len(paths)))]
    print(f"  (c) one-at-a-time loop over {len(naive_paths)} photos...", flush=True)
    naive = naive_throughput(naive_paths)

    prep = preparation_cost(embedder, paths[:16])
    print(f"load average after: {_load()}")
    print()
    print(f"{'':4}{'measure':58}{'images/s':>10}")
    print(f"{'(a)':4}{f'model alone, pre-decoded tensors, best batch ({best_batch})':58}{model[best_batch]:10.1f}")
    print(f"{'(b)':4}{'our import: ingest_items end to end':58}{ours:10.1f}")
    print(f"{'(c)':4}{'one image at a time, full-size decode (tutorial loop)':58}{naive:10.1f}")
    print()
    print(f"(b) is {100 * ours / model[best_batch]:.0f}% of (a) (target >= 85%) and {ours / naive:.1f}x (c).")
    # When the model and the preparation share the same cores, their CPU costs add up.
    cores, threads = os.cpu_count() or 1, torch.get_num_threads()
    model_cost = threads / model[best_batch]
    ceiling = min(cores / (model_cost + prep), model[best_batch])
    print(f"CPU per image: model {1000 * model_cost:.0f} ms (at {threads} thread(s)), everything else "
          f"{1000 * prep:.0f} ms (one thread). With both on the same {cores} core(s), (b) cannot exceed about "
          f"{ceiling:.1f} images/s ({100 * ceiling / model[best_batch]:.0f}% of (a)).")


def _load() -> str:
    try:
        return " ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        return "n/a"


if __name__ == "__main__":
    main()
