"""A video's recording date at the edge of what the database stores: frames keep or lose the date,
the video is never refused for it (hostile review: 9999-12-31 made the whole item fail)."""

import dataclasses
from datetime import UTC, datetime

import pytest

from catalog.ingest import pipeline, video
from catalog.models import Image


@pytest.mark.parametrize(("raw", "expected"), [
    ("9999-12-31T23:00:00-12:00", None),  # past the column's bound once in UTC
    ("9999-12-31T23:59:58Z", datetime(9999, 12, 31, 23, 59, 58, tzinfo=UTC)),
    ("2021-05-01T10:00:00Z", datetime(2021, 5, 1, 10, tzinfo=UTC)),
    ("1970-01-01T00:00:00Z", None),  # a muxer's zero epoch
    ("not a date", None),
])
def test_creation_time_is_kept_only_within_the_stored_bounds(raw, expected):
    assert video._creation_time(raw) == expected


@pytest.mark.django_db
def test_frames_past_year_9999_lose_their_date_instead_of_failing_the_video(media_root):
    started = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)  # the last storable second
    prepared = dataclasses.make_dataclass("P", ["sha256", "item", "metadata", "video"])(
        sha256="a" * 64, item=pipeline.IngestItem.from_bytes("v.mp4", b""),
        metadata=pipeline.ImageMetadata(width=64, height=48, format="VIDEO", taken_at=started,
                                        latitude=None, longitude=None),
        video=dataclasses.make_dataclass("V", ["taken_at"])(taken_at=started))
    frame = dataclasses.make_dataclass("F", ["time", "width", "height"])
    options = pipeline.IngestOptions(source=Image.Source.UPLOAD)
    first = pipeline._frame_row(prepared, frame(time=0.0, width=64, height=48), video=None, options=options)
    later = pipeline._frame_row(prepared, frame(time=5.0, width=64, height=48), video=None, options=options)
    assert first.taken_at == started
    assert later.taken_at is None
