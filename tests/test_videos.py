"""Videos as searchable key frames: scene-change choice against known cuts, storage (one
transaction, duplicates), every entry point, hostile videos, the API and the detail page.

Videos are generated here with PyAV: a few seconds of synthetic scenes at 160x120, 10 fps, each
scene a different random pattern that drifts sideways, so a cut is at a known time."""

from __future__ import annotations

import io
import itertools
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import SimpleUploadedFile

from catalog.ingest import video as videos
from catalog.ingest.pipeline import IngestItem, IngestOptions, ingest_items, video_spec
from catalog.jobs import requests as jobs
from catalog.jobs import tasks
from catalog.models import DeletedContent, Embedding, Image, ImportItem, ImportJob, Video
from tests.conftest import import_folder, make_image_bytes

FPS = 10


def make_video(scenes: list[float], *, fmt: str = "mp4", codec: str = "libx264", size=(160, 120), seed: int = 0,
               streams: int = 1, metadata: dict | None = None, drift: int = 1, block: int = 40) -> bytes:
    """A video of ``scenes`` (their lengths in seconds): a cut at each scene's start; the picture
    moves ``drift`` pixels a frame within a scene (random squares of ``block`` pixels)."""
    import av

    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=fmt) as out:
        out.metadata.update(metadata or {})
        outs = []
        for _ in range(streams):
            stream = out.add_stream(codec, rate=FPS)
            stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
            outs.append(stream)
        for seconds in scenes:
            base = rng.integers(0, 256, size=(-(-size[1] // block), -(-size[0] // block), 3), dtype=np.uint8)
            base = base.repeat(block, 0).repeat(block, 1)[:size[1], :size[0]]
            for step in range(round(seconds * FPS)):
                frame = av.VideoFrame.from_ndarray(np.roll(base, step * drift, axis=1), format="rgb24")
                for stream in outs:
                    out.mux(stream.encode(frame))
        for stream in outs:
            out.mux(stream.encode())
    return buffer.getvalue()


def spec(**changes) -> videos.VideoSpec:
    fields = {**video_spec().__dict__, **changes}
    return videos.VideoSpec(**fields)


def times(data: bytes, **changes) -> list[float]:
    return videos.key_frames(data, spec(**changes), keep=lambda t, image: t)[1]


# --- choosing key frames --------------------------------------------------------------------------


def test_key_frames_are_the_first_frame_and_one_after_each_known_cut():
    interval = video_spec().sample_interval
    cuts = [1.3, 3.7]  # between sampling instants: found at the next sample
    chosen = times(make_video([1.3, 2.4, 1.8]))
    assert chosen[0] == 0.0 and len(chosen) == 3, chosen
    for found, cut in zip(chosen[1:], cuts):
        assert cut <= found <= cut + interval, (chosen, cuts)


def test_min_gap_drops_cuts_too_close_to_the_last_key_frame():
    chosen = times(make_video([0.5] * 8), min_gap=1.5, sample_interval=0.1)  # a cut every 0.5 s
    assert len(chosen) >= 2
    assert all(later - earlier >= 1.5 for earlier, later in itertools.pairwise(chosen)), chosen


def test_max_gap_keeps_a_frame_in_long_shots():
    chosen = times(make_video([5.0]), max_gap=2.0, sample_interval=0.1)  # one shot, no cut
    assert chosen == [0.0, 2.0, 4.0]


def test_a_fast_pan_is_not_a_cut_at_every_sample_but_a_cut_in_it_is():
    # The picture moves 15 px (a tenth of its width) a sample: every sample differs about as much
    # as at a cut, yet only the cut (at 4 s) and the pan's first moment count.
    chosen = times(make_video([4.0, 4.0], drift=3, block=40, seed=20))
    assert len(chosen) <= 3 and any(4.0 <= t <= 4.5 for t in chosen), chosen


def make_pan(scenes: list[float], *, speed: int, size=(160, 120), block: int = 40, seed: int = 0) -> bytes:
    """A camera panning ``speed`` pixels a frame across a wide picture (new content comes in at the
    edge; nothing wraps around), a new picture at each scene's start: a hard cut."""
    import av

    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for seconds in scenes:
            frames = round(seconds * FPS)
            wide = size[0] + speed * frames
            scene = rng.integers(0, 256, size=(-(-size[1] // block), -(-wide // block), 3), dtype=np.uint8)
            scene = scene.repeat(block, 0).repeat(block, 1)[:size[1], :wide]
            for step in range(frames):
                window = np.ascontiguousarray(scene[:, step * speed:step * speed + size[0]])
                out.mux(stream.encode(av.VideoFrame.from_ndarray(window, format="rgb24")))
        out.mux(stream.encode())
    return buffer.getvalue()


# Pixels a frame; at 10 fps and a sample every 0.5 s, 12 is 60 px (3/8 of the width) between samples.
@pytest.mark.parametrize("speed", [4, 8, 12])
def test_a_cut_inside_a_fast_pan_is_found_and_a_fast_pan_alone_is_no_cut(speed):
    interval = video_spec().sample_interval
    chosen = times(make_pan([4.0, 4.0], speed=speed, seed=30))
    assert len(chosen) == 2 and chosen[0] == 0.0 and 4.0 <= chosen[1] <= 4.0 + interval, chosen
    assert times(make_pan([8.0], speed=speed, seed=31)) == [0.0]


def test_max_frames_caps_the_key_frames():
    assert len(times(make_video([0.5] * 6), min_gap=0, max_frames=2)) == 2


@pytest.mark.parametrize(("head", "kind"), [
    (b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00", "mp4"),
    (b"\x00\x00\x00\x14ftypqt  \x00\x00\x00\x00", "mov"),
    (b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01\x42\xf7\x81\x01\x42\x82\x88matroska", "mkv"),
    (b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01\x42\xf7\x81\x01\x42\x82\x84webm", "webm"),
    (b"\x00\x00\x00\x1cftypheic\x00\x00\x00\x00", None),  # a HEIC picture
    (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00", None),
])
def test_sniff_tells_videos_from_pictures_by_their_first_bytes(head, kind):
    assert videos.sniff(head) == kind


# --- storing --------------------------------------------------------------------------------------


def ingest(*items: tuple[str, bytes], **options):
    return ingest_items([IngestItem.from_bytes(name, data) for name, data in items],
                        options=IngestOptions(source=Image.Source.UPLOAD, **options))


@pytest.mark.django_db
def test_a_video_is_stored_with_its_key_frames_as_images_and_once_only(media_root):
    data = make_video([2.0, 2.0], seed=1, metadata={"creation_time": "2024-05-01T10:20:30.000000Z"})
    report = ingest(("clip.mp4", data), ("photo.jpg", make_image_bytes()), city="Oslo", group_key="G1")
    clip, photo = report.outcomes
    assert (clip.status, clip.frames, photo.status, photo.frames) == ("added", 2, "added", 0)
    video = Video.objects.get()
    assert (video.original_name, video.width, video.height, round(video.duration)) == ("clip.mp4", 160, 120, 4)
    assert default_storage.open(video.file.name).read() == data
    frames = list(video.frames.order_by("video_time"))
    assert [f.video_time for f in frames] == [0.0, 2.0] and clip.image_id == frames[0].pk
    assert all((f.city, f.group_key, f.width, f.height) == ("Oslo", "G1", 160, 120) for f in frames)
    assert [f.taken_at.isoformat() for f in frames] == ["2024-05-01T10:20:30+00:00", "2024-05-01T10:20:32+00:00"]
    assert Embedding.objects.filter(image__in=frames).count() == 2
    assert all(default_storage.exists(f.file.name) and default_storage.exists(f.thumbnail.name) for f in frames)

    again = ingest(("copy.mov", data))
    assert [(o.status, o.image_id) for o in again.outcomes] == [("duplicate", frames[0].pk)]
    assert Video.objects.count() == 1 and Image.objects.count() == 3


@pytest.mark.django_db
def test_a_video_whose_frames_cannot_all_be_stored_leaves_nothing(monkeypatch, media_root):
    from catalog.ingest import pipeline

    real = pipeline._frame_row
    calls = []

    def failing(prepared, frame, video, options):
        calls.append(frame.time)
        if len(calls) == 2:
            raise RuntimeError("disk on fire")
        return real(prepared, frame, video, options)

    monkeypatch.setattr(pipeline, "_frame_row", failing)
    report = ingest(("clip.mp4", make_video([2.0, 2.0], seed=2)))
    assert report.outcomes[0].status == "failed" and "disk on fire" in report.outcomes[0].reason
    assert not Video.objects.exists() and not Image.objects.exists()
    assert not [name for folder in ("videos", "images", "thumbnails") for name in _files(folder)]


def _files(folder: str) -> list[str]:
    if not default_storage.exists(folder):
        return []
    found, pending = [], [folder]
    while pending:
        current = pending.pop()
        dirs, files = default_storage.listdir(current)
        pending += [f"{current}/{d}" for d in dirs]
        found += [f"{current}/{f}" for f in files]
    return found


@pytest.mark.django_db
def test_deleting_frames_or_the_video_leaves_no_orphan(media_root, django_capture_on_commit_callbacks):
    from catalog.derived_files import delete_images

    ingest(("a.mp4", make_video([2.0, 2.0], seed=3)), ("b.mkv", make_video([2.0, 2.0], seed=4, fmt="matroska")),
           ("c.mp4", make_video([2.0], seed=5)))
    first, second, third = Video.objects.order_by("original_name")
    with django_capture_on_commit_callbacks(execute=True):  # as the admin deletes: rows, then files
        delete_images(first.frames.filter(video_time=0))
    assert Video.objects.filter(pk=first.pk).exists() and default_storage.exists(first.file.name)  # a frame left
    assert not DeletedContent.objects.exists()  # the video is still stored
    with django_capture_on_commit_callbacks(execute=True):
        delete_images(first.frames.all())
    assert not Video.objects.filter(pk=first.pk).exists()  # went with its last frame (trigger)
    assert not default_storage.exists(first.file.name)
    # Its bytes are remembered as deleted (a watched folder skips them), not its frames' derived keys.
    assert list(DeletedContent.objects.values_list("sha256", "original_name")) == [(first.sha256, "a.mp4")]
    second.frames.all().delete()  # any other way (shell, SQL): the trigger still removes the row
    assert not Video.objects.filter(pk=second.pk).exists()
    third.delete()  # the video: its frames and their vectors go with it
    assert not Image.objects.exists() and not Embedding.objects.exists() and not Video.objects.exists()


@pytest.mark.django_db
def test_a_deleted_video_is_skipped_by_a_watch_run_and_re_added_by_an_import(media_root):
    from catalog.derived_files import delete_images

    data = make_video([1.0], seed=22)
    ingest(("clip.mp4", data))
    delete_images(Image.objects.all())
    watched = ingest_items([IngestItem.from_bytes("clip.mp4", data)],
                           options=IngestOptions(source=Image.Source.FOLDER, skip_deleted=True))
    assert [o.status for o in watched.outcomes] == ["deleted"] and not Video.objects.exists()
    assert [o.status for o in ingest(("again.mp4", data)).outcomes] == ["added"]
    assert Video.objects.get().original_name == "again.mp4" and not DeletedContent.objects.exists()


# --- hostile videos -------------------------------------------------------------------------------


@pytest.mark.django_db
def test_each_hostile_video_gets_its_own_error_in_bounded_time(settings, media_root):
    settings.VIDEO_MAX_PIXELS = 100 * 100
    settings.VIDEO_MAX_DURATION = 5
    settings.VIDEO_MAX_STREAMS = 3
    small = make_video([1.0], size=(96, 64), seed=5)
    truncated = make_video([2.0], size=(96, 64), seed=6)
    items = {
        "empty.mp4": (b"", "empty"),
        "truncated.mp4": (truncated[: len(truncated) // 2], "not a readable video"),
        "notes.mp4": (b"just some text, not a video at all", "not an image"),
        "fake-header.mkv": (b"\x1a\x45\xdf\xa3" + bytes(200), "not a readable video"),
        "huge.mp4": (make_video([0.5], size=(160, 120), seed=7), "frames too large: 160x120"),
        "streams.mkv": (make_video([0.5], size=(96, 64), fmt="matroska", streams=5, seed=8), "too many streams"),
        "long.mp4": (make_video([6.0], size=(96, 64), seed=9), "too long: 6 s"),
        "good.mp4": (small, None),
    }
    started = time.monotonic()
    report = ingest(*((name, data) for name, (data, _) in items.items()))
    assert time.monotonic() - started < 60
    outcomes = {o.name: o for o in report.outcomes}
    for name, (_, expected) in items.items():
        outcome = outcomes[name]
        if expected is None:
            assert outcome.status == "added", outcome
        else:
            assert outcome.status == "failed" and expected in outcome.reason, (name, outcome)
    assert Video.objects.count() == 1


def _size_changing_video(first: tuple[int, int], then: tuple[int, int], *, seconds: float = 3.0) -> bytes:
    """An MJPEG video in Matroska whose frames are ``first`` large for the first half and ``then``
    after it (each packet is a JPEG of its own, so the size may change at any frame); its header
    says ``first``."""
    import fractions

    import av

    halves = [make_image_bytes(size=first, color=(200, 30, 30)), make_image_bytes(size=then, color=(30, 200, 30))]
    count = round(seconds * FPS)
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="matroska") as out:
        stream = out.add_stream("mjpeg", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = first[0], first[1], "yuvj420p"
        for index in range(count):
            packet = av.Packet(halves[index >= count // 2])
            packet.stream, packet.pts, packet.dts = stream, index, index
            packet.time_base = fractions.Fraction(1, FPS)
            out.mux(packet)
    return buffer.getvalue()


@pytest.mark.django_db
def test_a_frame_size_change_past_the_pixel_cap_mid_stream_refuses_the_whole_video(settings, media_root):
    settings.VIDEO_MAX_PIXELS = 100 * 100
    growing = _size_changing_video((96, 64), (400, 300))  # the header's 96x64 passes; frames from 1.5 s do not
    assert len(times(_size_changing_video((96, 64), (64, 48)), max_pixels=100 * 100)) >= 2  # a change under the cap is fine
    started = time.monotonic()
    report = ingest(("growing.mkv", growing), ("photo.jpg", make_image_bytes()))
    assert time.monotonic() - started < 60
    growing_outcome, photo = report.outcomes
    assert growing_outcome.status == "failed", growing_outcome
    assert growing_outcome.reason.startswith("frames too large: the frame size changes after 1.4 s to more than "
                                             "10000 pixels (IMAGESEARCH_VIDEO_MAX_PIXELS)"), growing_outcome.reason
    assert photo.status == "added"
    # Not a video cut short at the change: nothing of it is stored (the frames before it included).
    assert not Video.objects.exists() and list(Image.objects.values_list("original_name", flat=True)) == ["photo.jpg"]


def _oriented_video(rotation: int, *, fmt: str = "mp4") -> bytes:
    """A 160x120 video, red above and blue below, whose display matrix turns it ``rotation``
    degrees counter-clockwise (a phone held upright records landscape frames and such a turn)."""
    import av

    picture = np.zeros((120, 160, 3), dtype=np.uint8)
    picture[:60, :, 0] = 255
    picture[60:, :, 2] = 255
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=fmt) as out:
        stream = out.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = 160, 120, "yuv420p"
        stream.set_display_rotation(rotation)
        for _ in range(FPS):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")))
        out.mux(stream.encode())
    return buffer.getvalue()


def _red_side(image) -> str:
    """Which side of a picture is red: "top", "bottom", "left" or "right"."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.int16)
    height, width = pixels.shape[:2]
    sides = {"top": pixels[: height // 4], "bottom": pixels[-height // 4:],
             "left": pixels[:, : width // 4], "right": pixels[:, -width // 4:]}
    return max(sides, key=lambda side: float((sides[side][..., 0] - sides[side][..., 2]).mean()))


@pytest.mark.django_db
def test_a_phone_video_is_stored_upright_with_its_displayed_size(media_root):
    from PIL import Image as PILImage

    report = ingest(("portrait.mp4", _oriented_video(-90)))  # shown turned a quarter clockwise: red on the right
    assert report.outcomes[0].status == "added", report.outcomes
    video = Video.objects.get()
    assert (video.width, video.height) == (120, 160)
    frame = video.frames.get()
    assert (frame.width, frame.height) == (120, 160)
    with default_storage.open(frame.file.name) as handle, PILImage.open(handle) as stored:
        assert stored.size == (120, 160) and _red_side(stored) == "right"


@pytest.mark.parametrize(("rotation", "size", "red"), [(0, (160, 120), "top"), (90, (120, 160), "left"),
                                                       (180, (160, 120), "bottom"), (270, (120, 160), "right")])
def test_key_frames_are_turned_as_the_display_matrix_says(rotation, size, red):
    info, images = videos.key_frames(_oriented_video(rotation, fmt="mov"), spec(), keep=lambda t, image: image)
    assert ((info.width, info.height), images[0].size, _red_side(images[0])) == (size, size, red)


@pytest.mark.django_db
def test_a_video_past_the_video_timeout_fails_alone_and_stores_nothing(monkeypatch, settings, media_root):
    from catalog.ingest import decoding
    from tests import decode_faults

    settings.VIDEO_TIMEOUT = 1  # the videos' own limit, not the pictures' (left long)
    settings.INGEST_DECODE_TIMEOUT = 600
    monkeypatch.setattr(decoding, "decode", decode_faults.hang_on_mark)  # in the decode processes
    stuck = make_video([1.0], size=(96, 64), seed=23) + decode_faults.MARK
    started = time.monotonic()
    report = ingest(("stuck.mp4", stuck), ("fine.mp4", make_video([1.0], size=(96, 64), seed=24)),
                    ("photo.jpg", make_image_bytes()))
    assert time.monotonic() - started < 60  # the stuck one is given up on, not waited for
    assert [(o.name, o.status) for o in report.outcomes] == [
        ("stuck.mp4", "failed"), ("fine.mp4", "added"), ("photo.jpg", "added")]
    assert report.outcomes[0].reason == "could not be processed: decoding took longer than 1 s"
    assert list(Video.objects.values_list("original_name", flat=True)) == ["fine.mp4"]
    assert Image.objects.filter(video=None).count() == 1


def test_a_video_with_thousands_of_streams_is_refused_from_its_header():
    data = make_video([0.1], size=(16, 16), fmt="matroska", codec="mpeg4", streams=1000)
    started = time.monotonic()
    with pytest.raises(videos.VideoRejected, match="too many streams"):
        videos.key_frames(data, spec(max_streams=16), keep=lambda t, image: t)
    assert time.monotonic() - started < 10


# --- entry points ---------------------------------------------------------------------------------


@pytest.mark.django_db
def test_folder_import_takes_videos_by_extension(tmp_path, media_root):
    (tmp_path / "a.mp4").write_bytes(make_video([1.0, 1.0], seed=10))
    (tmp_path / "b.webm").write_bytes(make_video([1.0], seed=11, fmt="webm", codec="libvpx"))
    out, err, error = import_folder(tmp_path)
    assert error is None, (out, err)
    assert "Videos added: 2, as 3 key frame(s)." in out
    assert Video.objects.count() == 2
    a = Video.objects.get(original_name="a.mp4")  # without a group key of its own: one group per video
    assert {f.group_key for f in a.frames.all()} == {f"video-{a.sha256[:16]}"}
    from catalog.search import SearchParams, images_search

    def frames_of_a(collapse: bool) -> int:
        hits = images_search(params=SearchParams(text="a harbour", top_k=10, collapse_groups=collapse)).hits
        return [hit.image.video_id for hit in hits].count(a.pk)

    assert (frames_of_a(False), frames_of_a(True)) == (2, 1)


class _VideoHandler(BaseHTTPRequestHandler):
    body = b""

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "video/quicktime")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


@pytest.mark.django_db
def test_upload_archive_member_and_url_each_import_a_video(settings, media_root):
    settings.FETCH_ALLOWED_HOSTS = ["127.0.0.1"]
    settings.IMPORT_LEASE_SECONDS = 600
    _VideoHandler.body = make_video([1.0, 1.0], seed=12, codec="mpeg4", fmt="mov")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _VideoHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("inside/member.mkv", make_video([1.0, 1.0], seed=13, fmt="matroska"))
    try:
        job = jobs.create_job(files=[SimpleUploadedFile("up.mp4", make_video([1.0, 1.0], seed=14)),
                                     SimpleUploadedFile("set.zip", archive.getvalue())],
                              urls=[f"http://127.0.0.1:{server.server_address[1]}/clip.mov"],
                              via=ImportJob.Via.API)
        assert tasks.run_job(job.pk) == "done"
    finally:
        server.shutdown()
        server.server_close()
    job.refresh_from_db()
    assert (job.added, job.failed) == (3, 0), list(job.items.values_list("name", "error"))
    assert sorted(Video.objects.values_list("original_name", flat=True)) == ["clip.mov", "inside/member.mkv", "up.mp4"]
    for item in job.items.filter(state=ImportItem.State.ADDED):  # each item names its video's first frame
        assert item.image.video_time == 0.0 and item.image.video.frames.count() == 2


@pytest.mark.django_db
def test_api_and_page_uploads_accept_a_video(client, writer, media_root):
    client.force_login(writer)
    response = client.post("/api/images/", {"file": SimpleUploadedFile("api.mp4", make_video([1.0], seed=15))})
    assert response.status_code == 202, response.content
    response = client.post("/imports/", {"files": [SimpleUploadedFile("page.webm", make_video(
        [1.0], seed=16, fmt="webm", codec="libvpx"))]})
    assert response.status_code == 302, response.content
    for job in ImportJob.objects.all():
        assert tasks.run_job(job.pk) == "done"
    assert sorted(Video.objects.values_list("original_name", flat=True)) == ["api.mp4", "page.webm"]


# --- API and detail page --------------------------------------------------------------------------


@pytest.mark.django_db
def test_api_returns_the_video_and_time_of_a_key_frame(client, writer, media_root):
    client.force_login(writer)
    ingest(("clip.mp4", make_video([2.0, 2.0], seed=17)), ("photo.jpg", make_image_bytes()))
    frame = Image.objects.get(video_time=2.0)
    body = client.get(f"/api/images/{frame.pk}/").json()
    assert (body["video"], body["video_time"]) == (frame.video_id, 2.0)
    photo = client.get(f"/api/images/{Image.objects.get(video=None).pk}/").json()
    assert (photo["video"], photo["video_time"]) == (None, None)


@pytest.mark.django_db
def test_detail_page_of_a_key_frame_plays_the_video_from_its_moment(client, writer, media_root):
    client.force_login(writer)
    ingest(("clip.mp4", make_video([2.0, 2.0], seed=18)))
    frame = Image.objects.get(video_time=2.0)
    page = client.get(f"/images/{frame.pk}/").content.decode()
    assert f'src="{frame.video.file.url}#t=2.000"' in page and "<video" in page
    assert f'href="{frame.video.file.url}"' in page
    data = default_storage.open(frame.video.file.name).read()
    ranged = client.get(frame.video.file.url, HTTP_RANGE="bytes=100-199")  # a player seeking
    assert ranged.status_code == 206 and ranged["Content-Type"] == "video/mp4"
    assert b"".join(ranged.streaming_content) == data[100:200]
    assert ranged["Content-Range"] == f"bytes 100-199/{len(data)}"
    assert client.get(frame.video.file.url, HTTP_RANGE=f"bytes={len(data)}-").status_code == 416


@pytest.mark.django_db
def test_admin_lists_videos_and_deleting_one_removes_its_frames_and_files(admin_client, media_root,
                                                                           django_capture_on_commit_callbacks):
    ingest(("clip.mp4", make_video([2.0, 2.0], seed=21)))
    video = Video.objects.get()
    names = [video.file.name, *(name for f in video.frames.all() for name in (f.file.name, f.thumbnail.name))]
    page = admin_client.get("/admin/catalog/video/")
    assert page.status_code == 200 and "clip.mp4" in page.content.decode()
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(f"/admin/catalog/video/{video.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    assert not Video.objects.exists() and not Image.objects.exists()
    assert not any(default_storage.exists(name) for name in names)
