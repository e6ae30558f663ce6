#!/usr/bin/env python
"""Video ingestion: key frames indexed per second of video, and wall time per minute of 1080p video
(printed; no asserts).

A 1080p H.264 video of synthetic scenes (a cut every 3 to 9 s, moving content within each shot)
is generated once with PyAV and kept for re-runs. Measured: key-frame extraction alone (decode,
choose, thumbnails and model inputs, in this process) and ``ingest_items`` end to end (extraction
in a decode process, embedding, storing the video, its frames and their vectors), each run
``--repeat`` times, the best kept. Uses ViT-B-32 with random weights (same cost as trained ones,
no download) and its own data folder:

    .venv/bin/python bench/video.py                  # 60 s of 1080p, 30 fps
    .venv/bin/python bench/video.py --seconds 20     # quicker
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

os.environ.setdefault("CLIP_MODEL", "ViT-B-32")
os.environ.setdefault("CLIP_RANDOM_INIT", "1")
os.environ.setdefault("IMAGESEARCH_DATA_DIR", str(ROOT / "var" / "bench-video"))
os.environ.setdefault("IMAGESEARCH_LOG_LEVEL", "WARNING")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "imagesearch.settings")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=60, help="length of the generated video (default 60)")
    parser.add_argument("--fps", type=int, default=30, help="frame rate (default 30)")
    parser.add_argument("--repeat", type=int, default=1, help="run each measure this many times, keep the best")
    parser.add_argument("--grain", type=int, default=6,
                        help="sensor-like noise, +- this much per pixel, so the bit rate is a camera's (~10-20 "
                             "Mbit/s) rather than a cartoon's; 0: none (default 6)")
    return parser.parse_args()


def make_video(path: Path, *, seconds: int, fps: int, grain: int, size=(1920, 1080)) -> list[float]:
    """Write the video (once); returns its cut times."""
    import av
    import numpy as np

    rng = np.random.default_rng(0)
    cuts, t = [], 0.0
    while t < seconds:
        cuts.append(t)
        t += float(rng.uniform(3, 9))
    if path.exists():
        return cuts
    tmp = path.with_suffix(".part")
    with av.open(str(tmp), "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=fps, options={"preset": "veryfast", "crf": "23"})
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        block = 120  # big flat blocks that drift: compressible, yet each shot looks different
        base = None
        for index in range(seconds * fps):
            now = index / fps
            if base is None or any(abs(now - cut) < 0.5 / fps for cut in cuts):
                base = rng.integers(0, 256, size=(size[1] // block + 1, size[0] // block + 2, 3), dtype=np.uint8)
                base = base.repeat(block, 0).repeat(block, 1)
            shift = (index * 4) % block
            frame = np.ascontiguousarray(base[:size[1], shift:shift + size[0]])
            if grain:
                noise = rng.integers(-grain, grain + 1, size=(size[1] // 2, size[0] // 2, 1), dtype=np.int16)
                frame = np.clip(frame + noise.repeat(2, 0).repeat(2, 1), 0, 255).astype(np.uint8)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        out.mux(stream.encode())
    tmp.rename(path)
    return cuts


def best(measure, repeat: int) -> float:
    return min(measure() for _ in range(repeat))


def main() -> None:
    args = parse_args()
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command

    from catalog.embedder import get_embedder
    from catalog.ingest import decoding, pipeline
    from catalog.ingest.pipeline import IngestItem, IngestOptions, ingest_items
    from catalog.models import Image, Video

    call_command("migrate", verbosity=0, skip_checks=True)
    folder = Path(settings.DATA_DIR) / "bench-video"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"synthetic-1080p-{args.seconds}s-{args.fps}fps-grain{args.grain}.mp4"
    started = time.perf_counter()
    cuts = make_video(path, seconds=args.seconds, fps=args.fps, grain=args.grain)
    print(f"video: {path.name}, {path.stat().st_size / 1e6:.1f} MB "
          f"({path.stat().st_size * 8 / 1e6 / args.seconds:.1f} Mbit/s), {len(cuts)} shots "
          f"(ready in {time.perf_counter() - started:.1f} s); {decoding.usable_cores()} CPU(s), "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)
    embedder = get_embedder()
    spec = pipeline.decode_spec(embedder)
    print(f"settings: min gap {settings.VIDEO_MIN_GAP:g} s, max gap {settings.VIDEO_MAX_GAP:g} s, sample every "
          f"{settings.VIDEO_SAMPLE_INTERVAL:g} s; model {settings.CLIP_MODEL} (random weights) on "
          f"{embedder.pixel_fit()[3]}", flush=True)

    frames = []

    def extract() -> float:
        begin = time.perf_counter()
        decoded = decoding.decode(str(path), spec)
        assert not decoded.error, decoded.error
        frames[:] = [frame.time for frame in decoded.frames]
        return time.perf_counter() - begin

    extraction = best(extract, args.repeat)
    found = sum(any(abs(t - cut) <= settings.VIDEO_SAMPLE_INTERVAL + 1e-6 for t in frames) for cut in cuts)
    print(f"extraction alone: {extraction:.1f} s for {args.seconds} s of video = "
          f"{extraction * 60 / args.seconds:.1f} s per minute of 1080p; {len(frames)} key frames "
          f"({len(frames) / args.seconds:.2f} per second of video), {found} of {len(cuts)} shots found", flush=True)

    def end_to_end() -> float:
        Image.objects.filter(video__sha256__isnull=False).delete()
        Video.objects.all().delete()
        begin = time.perf_counter()
        report = ingest_items([IngestItem(name=path.name, source_ref=str(path), read=path.read_bytes)],
                              options=IngestOptions(source=Image.Source.FOLDER), embedder=embedder)
        assert report.added == 1, report.outcomes
        return time.perf_counter() - begin

    wall = best(end_to_end, args.repeat)
    stored = Video.objects.get().frames.count()
    print(f"end to end (ingest_items): {wall:.1f} s for {args.seconds} s of video = "
          f"{wall * 60 / args.seconds:.1f} s per minute of 1080p; {stored} frames indexed = "
          f"{stored / args.seconds:.2f} per second of video, {stored / wall:.2f} per second of wall time", flush=True)


if __name__ == "__main__":
    main()
