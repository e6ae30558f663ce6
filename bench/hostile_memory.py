#!/usr/bin/env python
"""Peak memory (RSS) of an import over the project's hostile set (tests/hostile.py) against
good images only and against the loaded model alone (printed; no asserts).

Each figure is one fresh process, measured by the kernel (wait4's ru_maxrss):

  model        load the model, embed one batch: the floor every import starts from
  good folder  manage.py import_images over a folder of good photos
  hostile folder   the same over the hostile files (extreme shapes, bombs, huge headers, ...) plus the good ones
  hostile job  the worker path (catalog.jobs.tasks.run_job) over the same files uploaded, plus a
               zip of zeros (16 x 60 MB of zeros, ~1 MB zipped) and a zip of good photos

Uses ViT-B-32 with random weights (no download) and its own data folder:

    .venv/bin/python bench/hostile_memory.py
    .venv/bin/python bench/hostile_memory.py --max-aspect-ratio 1000000   # extreme shapes reach the model

``--decode-cost`` instead measures what decoding costs per pixel in each format (the figures behind
catalog.imaging.DECODE_COST): a flat 4000x4000 picture of each, decoded as a query picture is and as
the pipeline does, one fresh process each, peak RSS (VmHWM) growth over the pixel count:

    .venv/bin/python bench/hostile_memory.py --decode-cost
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

os.environ.setdefault("CLIP_MODEL", "ViT-B-32")
os.environ.setdefault("CLIP_RANDOM_INIT", "1")
os.environ.setdefault("IMAGESEARCH_DATA_DIR", str(ROOT / "var" / "bench-hostile"))
os.environ.setdefault("IMAGESEARCH_LOG_LEVEL", "ERROR")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "imagesearch.settings")

MODEL_ONLY = """
import django; django.setup()
from PIL import Image
from catalog.embedder import get_embedder
get_embedder().embed_images([Image.new("RGB", (640, 480))] * 32)
"""
RUN_JOB = """
import sys, uuid, django; django.setup()
from catalog.jobs import tasks
print(tasks.run_job(uuid.UUID(sys.argv[1])))
"""


DECODE_COST = r"""
import sys
from catalog.imaging import decode_image

def high_water_mark():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM"))

path, mode, pixels = sys.argv[1], sys.argv[2], int(sys.argv[3])
with open(path, "rb") as file:
    data = file.read()
with open("/proc/self/clear_refs", "w") as clear:
    clear.write("5")  # peak := current: what came before (imports, the parent's peak) is not counted
before = high_water_mark()
if mode == "query":  # as catalog.search_input.decode_query_image
    decode_image(data, max_pixels=10**9, min_side=256)
else:
    from catalog.ingest.decoding import DecodeSpec, decode
    spec = DecodeSpec(max_pixels=10**9, min_side=320, max_aspect_ratio=None, thumbnail_side=320, input_size=224)
    assert not decode(path, spec).error
print((high_water_mark() - before) / pixels)
"""


def decode_costs(side: int = 4000) -> None:
    from PIL import Image

    import catalog.imaging  # noqa: F401 - registers the HEIF writer

    rgb, rgba = Image.new("RGB", (side, side), (1, 2, 3)), Image.new("RGBA", (side, side), (1, 2, 3, 128))
    writers = {
        "JPEG": lambda path: rgb.save(path, "JPEG", quality=50),
        "PNG (RGB)": lambda path: rgb.save(path, "PNG"),
        "PNG (RGBA)": lambda path: rgba.save(path, "PNG"),
        "GIF": lambda path: rgb.convert("P").save(path, "GIF"),
        "TIFF (deflate)": lambda path: rgb.save(path, "TIFF", compression="tiff_deflate"),
        "WEBP (lossy)": lambda path: rgb.save(path, "WEBP", quality=50),
        "WEBP (lossless)": lambda path: rgb.save(path, "WEBP", lossless=True),
        "WEBP (animated)": lambda path: rgba.save(path, "WEBP", save_all=True, lossless=True,
                                                  append_images=[Image.new("RGBA", rgba.size, (9, 2, 3, 128))]),
        "AVIF": lambda path: rgb.save(path, "AVIF", quality=10, speed=10),
        "HEIF": lambda path: rgb.save(path, "HEIF", quality=10),
    }
    work = Path(tempfile.mkdtemp(prefix="bench-decode-cost-"))
    print(f"peak RSS growth per pixel decoding a {side}x{side} picture (bytes a pixel; DECODE_COST weighs "
          f"the pixel cap by cost / 4)")
    print(f"{'format':20}{'query':>8}{'pipeline':>10}")
    try:
        for label, write in writers.items():
            path = work / "picture"
            write(path)
            costs = []
            for mode in ("query", "pipeline"):
                out = subprocess.run([sys.executable, "-c", DECODE_COST, str(path), mode, str(side * side)],
                                     cwd=ROOT, capture_output=True, text=True, check=True).stdout
                costs.append(float(out.split()[-1]))
            print(f"{label:20}{costs[0]:8.1f}{costs[1]:10.1f}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def peak_rss(argv: list[str]) -> tuple[int, str]:
    """Run ``argv`` to the end; its peak RSS in bytes and its output."""
    with tempfile.TemporaryFile() as out:
        process = subprocess.Popen(argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        return usage.ru_maxrss * 1024, out.read().decode(errors="replace")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--good", type=int, default=40, help="good photos (default 40)")
    parser.add_argument("--max-aspect-ratio", default=None, help="IMAGESEARCH_MAX_ASPECT_RATIO for the imports")
    parser.add_argument("--decode-cost", action="store_true", help="measure bytes a pixel per format instead")
    args = parser.parse_args()
    if args.decode_cost:
        return decode_costs()
    if args.max_aspect_ratio:
        os.environ["IMAGESEARCH_MAX_ASPECT_RATIO"] = args.max_aspect_ratio

    import django

    django.setup()
    from django.conf import settings
    from django.core.files.storage import default_storage
    from django.core.files.uploadedfile import SimpleUploadedFile
    from django.core.management import call_command

    from catalog.jobs import requests as jobs
    from catalog.models import Image, ImportJob
    from tests import hostile

    call_command("migrate", verbosity=0, skip_checks=True)
    cases = hostile.hostile_cases(good=args.good) + [hostile.Case("big-9000x9000.png", hostile.png(9000, 9000), None)]
    work = Path(tempfile.mkdtemp(prefix="bench-hostile-"))

    def empty_collection():
        Image.objects.all().delete()
        ImportJob.objects.all().delete()
        for folder in ("images", "thumbnails", "imports"):
            shutil.rmtree(Path(default_storage.location) / folder, ignore_errors=True)

    def folder(name, selected):
        path = work / name
        path.mkdir()
        for case in selected:
            (path / case.name).write_bytes(case.data)
        return path

    py = sys.executable
    rows = []
    try:
        rss, _ = peak_rss([py, "-c", MODEL_ONLY])
        rows.append(("model loaded, one batch embedded", rss, ""))
        good = folder("good", [c for c in cases if c.error is None and c.name.startswith("good-")])
        for label, path in (("import_images, good photos only", good), ("import_images, hostile folder",
                                                                           folder("hostile", cases))):
            empty_collection()
            rss, out = peak_rss([py, "manage.py", "import_images", str(path), "--no-progress"])
            rows.append((label, rss, next((line for line in out.splitlines() if line.startswith("Added")), "")))
        empty_collection()
        uploads = [SimpleUploadedFile(c.name, c.data) for c in cases]
        uploads += [SimpleUploadedFile("zeros.zip", hostile.zip_of_zeros()),
                    SimpleUploadedFile("good.zip", hostile.good_zip(1000, 8))]
        job = jobs.create_job(files=uploads, via=ImportJob.Via.API)
        rss, out = peak_rss([py, "-c", RUN_JOB, str(job.pk)])
        job.refresh_from_db()
        rows.append(("worker (run_job), hostile uploads + zip of zeros", rss,
                     f"{out.strip().splitlines()[-1]}: added {job.added}, failed {job.failed} of {job.total}"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
        empty_collection()

    base = rows[0][1]
    print(f"model {settings.CLIP_MODEL} (random weights), {settings.INGEST_DECODE_WORKERS} decode thread(s), "
          f"batch {settings.CLIP_BATCH_SIZE}, max aspect ratio {settings.IMAGE_MAX_ASPECT_RATIO:g}")
    print(f"{'run':52}{'peak RSS':>10}{'beyond model':>14}  result")
    for label, rss, note in rows:
        print(f"{label:52}{rss / 2**20:8.0f} MB{(rss - base) / 2**20:11.0f} MB  {note}")


if __name__ == "__main__":
    main()
