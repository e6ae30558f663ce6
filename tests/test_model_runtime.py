"""The image tower's runtime (catalog.model_runtime): ONNX Runtime against open_clip's own torch
output, the CLIP_RUNTIME setting, the fallback to torch, and open_clip imported without the
Hugging Face / timm stacks a model does not use."""

import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

from catalog import model_runtime
from catalog.embedder import ClipEmbedder, EmbedderConfig
from imagesearch.torch_compat import optional_stacks_needed

ROOT = Path(__file__).resolve().parent.parent


def clip_config(**overrides) -> EmbedderConfig:
    return EmbedderConfig(**{"model": "ViT-S-32", "pretrained": None, "weights_file": None, "device": "cpu",
                             "batch_size": 8, "random_init": True, **overrides})


def generated_pictures(count=12):
    """Photo-like pictures (smooth colour fields plus noise) of varied sizes and aspect ratios."""
    rng = np.random.default_rng(3)
    pictures = []
    for index in range(count):
        width, height = 160 + 37 * index, 400 - 19 * index
        coarse = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
        base = np.asarray(PILImage.fromarray(coarse).resize((width, height), PILImage.Resampling.BICUBIC),
                          np.int16) + rng.normal(0, 10, (height, width, 1)).astype(np.int16)
        pictures.append(PILImage.fromarray(np.clip(base, 0, 255).astype(np.uint8)))
    return pictures


def max_cosine_distance(a: np.ndarray, b: np.ndarray) -> float:
    return float((1 - (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).max())


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("onnx-models")


@pytest.mark.slow
def test_onnx_image_embeddings_match_open_clip_torch(onnx_cache):
    torch_side = ClipEmbedder(clip_config(runtime="torch")).load()
    onnx_side = ClipEmbedder(clip_config(runtime="onnx", cache_dir=onnx_cache)).load()
    assert (torch_side.runtime, onnx_side.runtime) == ("torch", "onnx")
    pictures = generated_pictures()
    expected, got = torch_side.embed_images(pictures), onnx_side.embed_images(pictures)
    assert got.shape == expected.shape and got.dtype == np.float32
    assert max_cosine_distance(got, expected) < 0.01
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    # Text stays on open_clip's torch module.
    np.testing.assert_allclose(onnx_side.embed_text("a harbour"), torch_side.embed_text("a harbour"), atol=1e-6)
    assert len(list(onnx_cache.glob("ViT-S-32-visual-*.onnx"))) == 1


@pytest.mark.slow
def test_exported_tower_is_reused_from_the_cache(onnx_cache, monkeypatch):
    ClipEmbedder(clip_config(runtime="onnx", cache_dir=onnx_cache)).load()  # exported here or by the test above

    def no_second_export(*args, **kwargs):
        raise AssertionError("exported again")

    monkeypatch.setattr(model_runtime, "export_image_tower", no_second_export)
    assert ClipEmbedder(clip_config(runtime="onnx", cache_dir=onnx_cache)).load().runtime == "onnx"


def test_export_failure_falls_back_to_torch_with_one_warning(tmp_path, monkeypatch, caplog):
    def broken_export(*args, **kwargs):
        raise RuntimeError("exporter exploded\nsecond line")

    monkeypatch.setattr(model_runtime, "export_image_tower", broken_export)
    with caplog.at_level(logging.WARNING):
        embedder = ClipEmbedder(clip_config(runtime="onnx", cache_dir=tmp_path)).load()
    assert embedder.runtime == "torch"
    warnings = [r for r in caplog.records if r.name == "catalog.model_runtime"]
    assert len(warnings) == 1 and "exporter exploded" in warnings[0].getMessage()
    assert "second line" not in warnings[0].getMessage()
    reference = ClipEmbedder(clip_config(runtime="torch")).load()
    pictures = generated_pictures(3)
    np.testing.assert_allclose(embedder.embed_images(pictures), reference.embed_images(pictures), atol=1e-6)
    assert not list(tmp_path.iterdir())  # nothing half-written left behind


def test_unloadable_cached_file_falls_back_to_torch(tmp_path, caplog):
    embedder = ClipEmbedder(clip_config(runtime="torch")).load()
    path = model_runtime.onnx_path(cache_dir=tmp_path, model_name="ViT-S-32", visual=embedder._model.visual)
    path.write_bytes(b"not an onnx model")
    with caplog.at_level(logging.WARNING):
        fallback = ClipEmbedder(clip_config(runtime="onnx", cache_dir=tmp_path)).load()
    assert fallback.runtime == "torch"
    assert any("using torch" in r.getMessage() for r in caplog.records)
    # torch's image tower was freed before ONNX Runtime refused the file, and is rebuilt whole.
    pictures = generated_pictures(3)
    np.testing.assert_allclose(fallback.embed_images(pictures), embedder.embed_images(pictures), atol=1e-6)


def test_runtime_resolution():
    assert model_runtime.resolve_runtime("auto", device="cpu") == "onnx"
    assert model_runtime.resolve_runtime("auto", device="cuda") == "torch"
    assert model_runtime.resolve_runtime("onnx", device="cuda:0") == "torch"
    assert model_runtime.resolve_runtime("torch", device="cpu") == "torch"
    with pytest.raises(ValueError, match="unknown CLIP runtime"):
        model_runtime.resolve_runtime("tensorrt", device="cpu")


def settings_value(name: str, **environ) -> subprocess.CompletedProcess:
    env = {**os.environ, **environ}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    return subprocess.run([sys.executable, "-c", f"import imagesearch.settings as s; print(s.{name})"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False)


def test_clip_runtime_setting_is_parsed_strictly():
    assert settings_value("CLIP_RUNTIME", CLIP_RUNTIME="").stdout.strip() == "torch"
    assert settings_value("CLIP_RUNTIME", CLIP_RUNTIME="onnx").stdout.strip() == "onnx"
    bad = settings_value("CLIP_RUNTIME", CLIP_RUNTIME="onnxx")
    assert bad.returncode != 0 and "CLIP_RUNTIME='onnxx' is invalid" in bad.stderr


def test_models_name_the_optional_stacks_they_use():
    assert optional_stacks_needed("ViT-B-32") == set()
    assert optional_stacks_needed("xlm-roberta-base-ViT-B-32") == {"transformers"}
    assert optional_stacks_needed("convnext_base") == {"timm"}
    assert optional_stacks_needed("no-such-model") is None


@pytest.mark.slow
def test_open_clip_is_imported_without_stacks_the_model_does_not_use():
    """In a fresh interpreter: a bundled-tokenizer model leaves transformers and timm unimported;
    a model with a Hugging Face text tower later in the same process still gets them."""
    script = (
        "import sys\n"
        "from imagesearch.torch_compat import import_open_clip\n"
        "open_clip = import_open_clip('ViT-S-32')\n"
        "print(sorted(m for m in ('transformers', 'timm') if m in sys.modules))\n"
        "open_clip.create_model('ViT-S-32')\n"
        "open_clip = import_open_clip('xlm-roberta-base-ViT-B-32')\n"
        "import open_clip.hf_model\n"
        "print(open_clip.hf_model.transformers is not None)\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["[]", "True"]
