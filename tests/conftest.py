import io

import pytest
from PIL import Image as PILImage


@pytest.fixture(autouse=True)
def media_root(settings, tmp_path):
    """Every test writes its files under its own temporary folder."""
    settings.MEDIA_ROOT = tmp_path / "media"
    return settings.MEDIA_ROOT


def make_image_bytes(color=(200, 30, 30), size=(64, 48), fmt="JPEG", pattern: int = 0) -> bytes:
    """A small image made in memory; ``pattern`` varies the content so hashes differ."""
    image = PILImage.new("RGB", size, color)
    if pattern:
        for x in range(0, size[0], 4):
            image.putpixel((x, (x * pattern) % size[1]), (pattern % 256, 255 - pattern % 256, 90))
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture
def image_bytes():
    return make_image_bytes
