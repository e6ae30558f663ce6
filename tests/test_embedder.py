"""The CLIP service through real open_clip code (ViT-S-32, bundled tokenizer, random init)."""

import re

import numpy as np
import pytest
from PIL import Image as PILImage

from catalog.embedder import ClipEmbedder, EmbedderConfig, EmbedderUnavailable, get_embedder


def _pictures():
    return [PILImage.new("RGB", (300, 200), color) for color in ((250, 10, 10), (10, 250, 10), (10, 10, 250))]


def test_batch_and_single_embeddings_agree():
    embedder = get_embedder()
    pictures = _pictures()
    batch = embedder.embed_images(pictures)
    singles = np.stack([embedder.embed_images([p])[0] for p in pictures])
    np.testing.assert_allclose(batch, singles, atol=1e-5)

    texts = ["snow-covered peaks in the sun", "一只毛茸茸的小狗在草地上奔跑"]
    np.testing.assert_allclose(embedder.embed_texts(texts), np.stack([embedder.embed_text(t) for t in texts]),
                               atol=1e-5)


def test_vectors_are_normalised_and_share_one_dimension():
    embedder = get_embedder()
    images = embedder.embed_images(_pictures())
    texts = embedder.embed_texts(["a red square", "草地"])
    assert images.shape == (3, embedder.dimensions)
    assert texts.shape == (2, embedder.dimensions)
    assert embedder.dimensions == 384  # ViT-S-32
    np.testing.assert_allclose(np.linalg.norm(images, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(texts, axis=1), 1.0, atol=1e-5)
    assert images.dtype == np.float32


def test_random_init_is_the_same_in_every_process():
    """Seeded, so a CLI import and a web search in another process share one space."""
    config = EmbedderConfig.from_settings()
    again = ClipEmbedder(config)
    np.testing.assert_allclose(again.embed_text("same words"), get_embedder().embed_text("same words"), atol=1e-6)


def test_space_name_identifies_model_and_weights(tmp_path):
    base = dict(model="ViT-B-32", device="cpu", batch_size=8)
    assert EmbedderConfig(pretrained="laion2b_s34b_b79k", weights_file=None, **base).space_name == \
        "ViT-B-32/laion2b_s34b_b79k"
    assert EmbedderConfig(pretrained="x", weights_file=tmp_path / "w.bin", **base).space_name == \
        "ViT-B-32/file:w.bin"
    assert EmbedderConfig(pretrained="x", weights_file=None, random_init=True, **base).space_name == \
        "ViT-B-32/random-init"


def clip_config(**overrides) -> EmbedderConfig:
    return EmbedderConfig(**{"model": "ViT-S-32", "pretrained": None, "weights_file": None, "device": "cpu",
                             "batch_size": 4, **overrides})


def load_error(**overrides) -> str:
    """Load a model that must fail; the one-line message it fails with."""
    with pytest.raises(EmbedderUnavailable) as error:
        ClipEmbedder(clip_config(**overrides)).load()
    return str(error.value)


def test_missing_weights_file_is_one_clear_line(tmp_path):
    message = load_error(weights_file=tmp_path / "nope.bin")
    assert "CLIP_WEIGHTS_FILE" in message and "does not exist" in message
    assert "\n" not in message


def test_unloadable_weights_never_fall_back_to_random(tmp_path):
    broken = tmp_path / "broken.bin"
    broken.write_bytes(b"these are not weights")
    message = load_error(weights_file=broken)
    assert message.startswith("Could not load CLIP weights for ViT-S-32")
    assert "CLIP_WEIGHTS_FILE" in message and "\n" not in message


def test_no_weights_configured_says_what_to_set():
    assert re.search("set CLIP_PRETRAINED .* or CLIP_WEIGHTS_FILE", load_error(pretrained=""))


def test_unknown_pretrained_tag_and_architecture_are_rejected():
    assert "not a pretrained tag" in load_error(pretrained="nonsense")
    assert "not an open_clip architecture" in load_error(model="ViT-Nope", pretrained="x")


def test_download_failure_is_reported_not_hidden(monkeypatch):
    """The default path (a pretrained tag) reports a failed download in one actionable line.
    The download is stubbed to fail: tests never reach the network."""
    import open_clip

    def refuse(*args, **kwargs):
        raise RuntimeError("Failed to download weights for tag 'laion2b_s34b_b79k'\nmore detail")

    monkeypatch.setattr(open_clip, "create_model_and_transforms", refuse)
    message = load_error(model="ViT-B-32", pretrained="laion2b_s34b_b79k")
    assert "Failed to download weights" in message and "CLIP_WEIGHTS_FILE" in message
    assert "\n" not in message


def test_local_weights_file_is_loaded(tmp_path):
    """The offline path: CLIP_WEIGHTS_FILE pointing at an open_clip state dict."""
    import torch

    weights = tmp_path / "open_clip_model.bin"
    random_init = ClipEmbedder(clip_config(random_init=True, runtime="torch")).load()
    torch.save(random_init._model.state_dict(), weights)
    from_file = ClipEmbedder(clip_config(weights_file=weights, runtime="torch"))
    assert from_file.space_name == "ViT-S-32/file:open_clip_model.bin"
    np.testing.assert_allclose(from_file.embed_text("a lighthouse"), get_embedder().embed_text("a lighthouse"),
                               atol=1e-5)
    pictures = _pictures()
    np.testing.assert_allclose(from_file.embed_images(pictures), random_init.embed_images(pictures), atol=1e-5)
