"""The ingestion fast path: decoding in processes (same vectors as open_clip's own preprocessing, a
crashing decoder fails only its item), batch storing (exactly once across concurrent runs), the
decode-process count, and the choice between GPU and CPU JPEG decoding."""

from __future__ import annotations

import io
import threading
from pathlib import Path

import numpy as np
import pytest
from django.db import connection
from PIL import ExifTags, ImageOps
from PIL import Image as PILImage

from catalog.embedder import get_embedder
from catalog.ingest import decoding, gpu_decoding
from catalog.ingest.pipeline import IngestItem, IngestOptions, ingest_items
from catalog.models import Embedding, Image
from tests import decode_faults, hostile


def jpeg(index: int, size: tuple[int, int], orientation: int = 1, quality: int = 90, noise: float = 0.0) -> bytes:
    """A photo-like JPEG: smooth colour fields (plus noise if asked), with an EXIF orientation."""
    rng = np.random.default_rng(index)
    width, height = size
    coarse = rng.integers(0, 256, (max(2, height // 40), max(2, width // 40), 3), dtype=np.uint8)
    pixels = np.asarray(PILImage.fromarray(coarse).resize(size, PILImage.Resampling.BICUBIC), dtype=np.float32)
    if noise:
        pixels += rng.normal(0, noise, pixels.shape)
    image = PILImage.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    exif = PILImage.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality, exif=exif)
    return buffer.getvalue()


def ingest(pairs, **kwargs):
    return ingest_items([IngestItem.from_bytes(name, data) for name, data in pairs],
                        options=IngestOptions(source=Image.Source.UPLOAD), **kwargs)


@pytest.mark.slow
@pytest.mark.django_db
def test_fast_path_embeddings_match_open_clips_reference_preprocessing():
    embedder = get_embedder()
    photos = {f"{index}-o{orientation}-{w}x{h}.jpg": jpeg(index, (w, h), orientation, noise=4 if w > 1000 else 0)
              for index, ((w, h), orientation) in enumerate([
                  ((3000, 2000), 1), ((3000, 2000), 6), ((2000, 3000), 8), ((4000, 3000), 3), ((1600, 1200), 5),
                  ((1200, 1600), 2), ((640, 480), 7), ((300, 200), 4), ((150, 100), 6), ((230, 230), 1)],
                  start=1)}

    report = ingest(list(photos.items()))

    assert report.added == len(photos)
    stored = {image.original_name: np.asarray(image.embeddings.get().vector, dtype=np.float32)
              for image in Image.objects.prefetch_related("embeddings")}
    # The reference: full-size decode, EXIF transpose, open_clip's own preprocess.
    reference = embedder.embed_prepared([embedder._preprocess(ImageOps.exif_transpose(
        PILImage.open(io.BytesIO(data))).convert("RGB")) for data in photos.values()])
    for name, expected in zip(photos, reference, strict=True):
        cosine = float(stored[name] @ expected / np.linalg.norm(stored[name]) / np.linalg.norm(expected))
        assert 1 - cosine < 0.01, (name, 1 - cosine)


@pytest.mark.django_db
def test_decode_process_that_dies_fails_only_its_item_and_the_pool_recovers(monkeypatch):
    monkeypatch.setattr(decoding, "decode", decode_faults.die_on_mark)
    large = jpeg(9, (1400, 1100), quality=98, noise=40)  # over 1 MiB: sent to the child by file name
    assert len(large) > 1024 * 1024

    report = ingest([("a.jpg", hostile.photo(1)), ("dies.jpg", hostile.photo(2) + decode_faults.MARK),
                     ("b.jpg", hostile.photo(3)), ("large.jpg", large),
                     ("dies-large.jpg", jpeg(10, (1400, 1100), quality=98, noise=40) + decode_faults.MARK),
                     ("c.jpg", hostile.photo(4))], decode_workers=2)

    assert [(o.name, o.status) for o in report.outcomes] == [
        ("a.jpg", "added"), ("dies.jpg", "failed"), ("b.jpg", "added"), ("large.jpg", "added"),
        ("dies-large.jpg", "failed"), ("c.jpg", "added")]
    assert {o.reason for o in report.failed} == {decoding.CHILD_DIED}
    assert ingest([("d.jpg", hostile.photo(5))]).added == 1  # later runs decode as before


def test_decode_pool_rebuilds_once_per_breakage_and_isolates_the_culprit(monkeypatch):
    monkeypatch.setattr(decoding, "decode", decode_faults.die_on_mark)
    spec = decoding.DecodeSpec(max_pixels=10**8, min_side=224, max_aspect_ratio=20.0, thumbnail_side=64,
                               input_size=224)
    sources = [hostile.photo(i) + (decode_faults.MARK if i == 3 else b"") for i in range(8)]
    with decoding.DecodePool(2) as pool:
        results = [pool.result(pending) for pending in [pool.submit(source, spec) for source in sources]]
        generations = pool._generation
    assert [r.error for r in results] == ["", "", "", decoding.CHILD_DIED, "", "", "", ""]
    assert all(r.pixels.shape == (224, 224, 3) and r.pixels.dtype == np.uint8 for i, r in enumerate(results) if i != 3)
    assert generations == 1


def test_an_item_whose_decode_was_cancelled_by_a_pool_recycle_is_decoded_again():
    """A timeout recycles the pool, which cancels the items not started yet: they are innocent and
    decode again (under load, a stuck video failed the photo queued after it with "CancelledError")."""
    from concurrent.futures import Future

    spec = decoding.DecodeSpec(max_pixels=10**8, min_side=224, max_aspect_ratio=20.0, thumbnail_side=64,
                               input_size=224)
    with decoding.DecodePool(1, timeout=30) as pool:
        cancelled = Future()
        cancelled.cancel()  # what shutdown(cancel_futures=True) leaves for an item still waiting
        result = pool.result(decoding.Pending(cancelled, pool._generation, hostile.photo(1), spec, None))
    assert result.error == "" and result.pixels.shape == (224, 224, 3)


@pytest.mark.django_db
def test_an_image_that_decodes_forever_fails_after_the_timeout_and_the_rest_import(monkeypatch, settings):
    settings.INGEST_DECODE_TIMEOUT = 2
    monkeypatch.setattr(decoding, "decode", decode_faults.hang_on_mark)

    report = ingest([("a.jpg", hostile.photo(1)), ("loops.jpg", hostile.photo(2) + decode_faults.MARK),
                     ("b.jpg", hostile.photo(3)), ("c.jpg", hostile.photo(4))], decode_workers=2)

    assert [(o.name, o.status) for o in report.outcomes] == [
        ("a.jpg", "added"), ("loops.jpg", "failed"), ("b.jpg", "added"), ("c.jpg", "added")]
    assert report.failed[0].reason == "could not be processed: decoding took longer than 2 s"


@pytest.mark.django_db(transaction=True)
def test_batches_stored_on_several_connections_are_each_stored_once_and_the_connections_closed(media_root):
    def backends() -> int:
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()")
            return cursor.fetchone()[0]

    before = backends()
    pictures = [(f"{i}.jpg", hostile.photo(i, size=(120, 90))) for i in range(9)]
    items = [*pictures[:5], ("again.jpg", pictures[0][1]), ("bad.jpg", b"not a picture"), *pictures[5:]]
    report = ingest_items([IngestItem.from_bytes(name, data) for name, data in items],
                          options=IngestOptions(source=Image.Source.UPLOAD), decode_workers=1, store_connections=3)

    assert [o.status for o in report.outcomes] == ["added"] * 5 + ["duplicate", "failed"] + ["added"] * 4
    assert Image.objects.count() == 9 == Embedding.objects.count()
    assert sorted(Image.objects.values_list("id", flat=True)) == sorted(o.image_id for o in report.outcomes
                                                                         if o.status == "added")
    assert backends() == before


def test_store_lanes_raise_the_first_failure_and_skip_what_was_left():
    from catalog.ingest.lanes import StoreLanes

    done, gate = [], threading.Event()

    def work(n):
        gate.wait(5)
        if n == 1:
            raise RuntimeError("lost the claim")
        done.append(n)

    with pytest.raises(RuntimeError, match="lost the claim"):
        with StoreLanes(2) as lanes:
            lanes.submit(work, 1)
            gate.set()
            for n in range(2, 50):
                lanes.submit(work, n)
    assert len(done) < 48  # stopped early: calls queued after the failure never ran

    ran = []
    with StoreLanes(1) as inline:
        inline.submit(lambda: ran.append(threading.current_thread()))
    assert ran == [threading.current_thread()]  # one lane: the caller's thread (and connection)


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_two_concurrent_runs_of_the_same_files_store_each_image_once(media_root):
    get_embedder()  # loaded once, before the threads share it
    pictures = [(f"{index}.jpg", hostile.photo(index, size=(120, 90))) for index in range(24)]
    reports, errors = {}, []
    start = threading.Barrier(2)

    def run(name, order):
        try:
            start.wait()
            reports[name] = ingest(order, decode_workers=1)
        except Exception as error:  # pragma: no cover - reported below
            errors.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=("forward", pictures)),
               threading.Thread(target=run, args=("backward", pictures[::-1]))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)

    assert not errors and not any(thread.is_alive() for thread in threads)
    assert Image.objects.count() == Embedding.objects.count() == len(pictures)
    by_name = {name: [o for report in reports.values() for o in report.outcomes if o.name == name]
               for name, _ in pictures}
    for name, outcomes in by_name.items():
        assert sorted(o.status for o in outcomes) == ["added", "duplicate"], (name, outcomes)
        assert len({o.image_id for o in outcomes}) == 1  # the duplicate names the stored image
    on_disk = {str(p.relative_to(media_root)) for p in Path(media_root).rglob("*") if p.is_file()}
    assert on_disk == {name for row in Image.objects.values_list("file", "thumbnail") for name in row}


@pytest.mark.django_db
def test_batch_with_an_already_stored_image_adds_the_rest_and_names_the_stored_one(monkeypatch):
    first = ingest([("first.jpg", hostile.photo(1))]).outcomes[0]
    # The check before decoding misses it (a concurrent run's commit, say): the batch store sees it.
    real, calls = Image.objects.ids_by_hash, []
    monkeypatch.setattr(Image.objects, "ids_by_hash", lambda hashes: real(hashes) if calls.append(1) or
                        len(calls) > 1 else {})
    report = ingest([("a.jpg", hostile.photo(2)), ("again.jpg", hostile.photo(1)), ("b.jpg", hostile.photo(3))])
    assert [(o.status, o.image_id == first.image_id) for o in report.outcomes] == [
        ("added", False), ("duplicate", True), ("added", False)]
    assert Image.objects.count() == Embedding.objects.count() == 3


def test_default_decode_processes_leave_cores_to_the_model_and_the_store():
    assert decoding.default_workers(cuda=True, cores=16) == 14
    assert decoding.default_workers(cuda=False, cores=16) == 8
    assert decoding.default_workers(cuda=False, cores=2) == 1
    assert decoding.default_workers(cuda=True, cores=2) == 1
    assert decoding.default_workers(cuda=False, cores=1) == 1


def test_decode_processes_import_neither_django_nor_torch():
    import subprocess
    import sys

    code = ("import sys; import catalog.ingest.decoding; "
            "print(sorted(m for m in ('django', 'torch', 'open_clip') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parent.parent).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize(("data", "device", "available", "expected"), [
    (jpeg(1, (64, 48)), "cuda", True, True),
    (jpeg(1, (64, 48)), "cuda:0", True, True),
    (jpeg(1, (64, 48)), "cpu", True, False),  # the model on the CPU: the CPU decodes
    (jpeg(1, (64, 48)), "cuda", False, False),  # no GPU decoder in this torch/torchvision
    (hostile.photo(1, fmt="PNG"), "cuda", True, False),  # not a JPEG
    (b"\xff\xd8\xff", "cuda", True, False),  # a JPEG signature and nothing else
])
def test_gpu_decoding_is_chosen_only_for_jpegs_with_the_model_on_cuda(data, device, available, expected):
    assert gpu_decoding.wanted(data, device=device, available=available) is expected


SPEC = decoding.DecodeSpec(max_pixels=10**8, min_side=224, max_aspect_ratio=20.0, thumbnail_side=64, input_size=224)


def test_gpu_decoding_falls_back_to_the_cpu_per_image():
    def gpu_decode(batch, spec):  # decodes the first, fails on the second, skips the third
        return [decoding.decode(batch[0], spec), RuntimeError("nvjpeg: unsupported"), None]

    sources = [jpeg(1, (320, 240)), jpeg(2, (320, 240)), jpeg(3, (320, 240))]
    cpu = []
    results = gpu_decoding.decode_batch(sources, SPEC, gpu_decode=gpu_decode,
                                        cpu_decode=lambda source, spec: cpu.append(source) or decoding.decode(source, spec))
    assert cpu == sources[1:]
    assert all(not r.error and r.pixels.shape == (224, 224, 3) for r in results)


def test_gpu_decoding_that_fails_whole_falls_back_to_the_cpu_for_every_image():
    def gpu_decode(batch, spec):
        raise RuntimeError("CUDA error: out of memory")

    sources = [jpeg(1, (320, 240)), jpeg(2, (320, 240))]
    results = gpu_decoding.decode_batch(sources, SPEC, gpu_decode=gpu_decode, cpu_decode=decoding.decode)
    assert [r.error for r in results] == ["", ""]


@pytest.mark.django_db
@pytest.mark.parametrize("enabled", [True, False])
def test_pipeline_sends_jpegs_to_the_gpu_when_the_model_is_on_cuda_and_falls_back_per_image(monkeypatch, settings,
                                                                                            enabled):
    settings.INGEST_GPU_JPEG_DECODE = enabled
    embedder = get_embedder()
    real_fit = type(embedder).pixel_fit
    monkeypatch.setattr(type(embedder), "pixel_fit", lambda self: (*real_fit(self)[:3], "cuda"))
    monkeypatch.setattr(gpu_decoding, "available", lambda: True)
    sent = []

    def decode_on_gpu(batch, spec, device):  # a GPU that manages every other image
        sent.extend(batch)
        return [decoding.decode(data, spec) if i % 2 == 0 else RuntimeError("nvjpeg") for i, data in enumerate(batch)]

    monkeypatch.setattr(gpu_decoding, "decode_on_gpu", decode_on_gpu)
    jpegs = [(f"{i}.jpg", jpeg(i, (320, 240))) for i in range(4)]
    report = ingest([*jpegs, ("p.png", hostile.photo(9, fmt="PNG"))], decode_workers=1)

    assert [o.status for o in report.outcomes] == ["added"] * 5
    assert sent == ([data for _, data in jpegs] if enabled else [])  # the PNG went to the decode processes


_KILLED_POOL_OWNER = """
import os, signal, sys
from catalog.ingest.decoding import DecodePool, DecodeSpec
from multiprocessing import forkserver
if __name__ == "__main__":
    pool = DecodePool(2)
    spec = DecodeSpec(max_pixels=10**7, min_side=64, max_aspect_ratio=20.0, thumbnail_side=64, input_size=32)
    assert not pool.result(pool.submit(sys.stdin.buffer.read(), spec)).error
    children = list(pool._pool._processes)
    print(" ".join(map(str, [forkserver._forkserver._forkserver_pid, *children])), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_decode_processes_and_their_fork_server_exit_when_the_process_that_started_them_is_killed():
    import subprocess
    import sys
    import time

    done = subprocess.run([sys.executable, "-c", _KILLED_POOL_OWNER], input=jpeg(0, (64, 48)), capture_output=True,
                          cwd=Path(__file__).resolve().parent.parent, timeout=60)
    pids = [int(pid) for pid in done.stdout.split()]
    assert len(pids) >= 2, done.stderr.decode()[-2000:]  # the fork server and at least one child

    def alive(pid: int) -> bool:
        try:
            return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0] != "Z"
        except (FileNotFoundError, IndexError):
            return False

    deadline = time.monotonic() + 15
    while any(map(alive, pids)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in pids if alive(pid)]


def test_gpu_decoding_holds_a_bounded_number_of_pixels_at_once(monkeypatch):
    monkeypatch.setattr(gpu_decoding, "GPU_DECODE_MAX_PIXELS", 100)
    sizes = [decoding.ImageMetadata(width=w, height=h, format="JPEG", taken_at=None, latitude=None, longitude=None)
             for w, h in [(5, 10), (5, 10), (1, 10), (20, 10), (3, 3)]]  # 50, 50, 10, 200 (alone), 9

    assert gpu_decoding._pixel_chunks([0, 1, 2, 3, 4], sizes) == [[0, 1], [2], [3], [4]]


@pytest.mark.slow
def test_gpu_decoded_embeddings_match_open_clips_reference_preprocessing():
    if not gpu_decoding.available():
        pytest.skip("no CUDA device with a torchvision JPEG decoder")
    embedder = get_embedder()
    photos = [jpeg(index, size, orientation, noise=4) for index, (size, orientation) in enumerate([
        ((3000, 2000), 1), ((2000, 3000), 6), ((1600, 1200), 8), ((640, 480), 3), ((230, 230), 1)])]
    spec = decoding.DecodeSpec(max_pixels=10**8, min_side=max(embedder.input_size, 320), max_aspect_ratio=20.0,
                               thumbnail_side=320, input_size=embedder.input_size)
    decoded = gpu_decoding.decode_on_gpu(photos, spec)
    assert all(isinstance(d, decoding.Decoded) and not d.error for d in decoded), decoded
    ours = embedder.embed_prepared([embedder.tensor_from_pixels(d.pixels) for d in decoded])
    reference = embedder.embed_prepared([embedder._preprocess(ImageOps.exif_transpose(
        PILImage.open(io.BytesIO(data))).convert("RGB")) for data in photos])
    distances = 1 - np.sum(ours * reference, axis=1)
    assert (distances < 0.01).all(), distances
