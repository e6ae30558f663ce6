"""The CLIP service: one open_clip model per process, loaded lazily, that
embeds images and text queries into one L2-normalised vector space.

torch and open_clip are imported only when the first embedding is asked for,
so management commands and web requests that never embed stay fast. On CPU the
image tower runs on ONNX Runtime, exported from the loaded open_clip model
(CLIP_RUNTIME, catalog.model_runtime); text always runs on open_clip's torch model.
"""

from __future__ import annotations

import logging
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from catalog.model_runtime import onnx_image_tower, resolve_runtime

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

logger = logging.getLogger(__name__)

RANDOM_INIT_SEED = 0
_DEFAULT_CACHE_DIR = Path(tempfile.gettempdir()) / "imagesearch-models"  # configs built without settings


class EmbedderUnavailable(RuntimeError):
    """The model could not be loaded; the message is one line saying what to set."""


@dataclass(frozen=True)
class EmbedderConfig:
    model: str
    pretrained: str | None
    weights_file: Path | None
    device: str
    batch_size: int
    random_init: bool = False
    runtime: str = "torch"  # image tower: torch, onnx or auto (catalog.model_runtime)
    cache_dir: Path | None = None  # where an exported ONNX image tower is kept

    @classmethod
    def from_settings(cls) -> "EmbedderConfig":
        from django.conf import settings

        return cls(model=settings.CLIP_MODEL, pretrained=settings.CLIP_PRETRAINED,
                   weights_file=settings.CLIP_WEIGHTS_FILE, device=settings.CLIP_DEVICE,
                   batch_size=settings.CLIP_BATCH_SIZE, random_init=settings.CLIP_RANDOM_INIT,
                   runtime=settings.CLIP_RUNTIME, cache_dir=settings.DATA_DIR / "models")

    @classmethod
    def for_space(cls, space) -> "EmbedderConfig":
        """The configuration that builds ``space``'s model (an EmbeddingSpace); device, batch size
        and runtime are this machine's settings."""
        if not space.has_model:
            raise EmbedderUnavailable(f"Embedding space {space.name!r} records no model; it cannot embed.")
        base = cls.from_settings()
        return cls(model=space.architecture, pretrained=space.pretrained or None,
                   weights_file=Path(space.weights_file) if space.weights_file else None, device=base.device,
                   batch_size=base.batch_size, random_init=space.random_init, runtime=base.runtime,
                   cache_dir=base.cache_dir)

    @property
    def space_name(self) -> str:
        """Identity of the vectors this configuration produces (model + weights)."""
        if self.random_init:
            weights = "random-init"
        elif self.weights_file is not None:
            weights = f"file:{self.weights_file.name}"
        else:
            weights = self.pretrained or "untrained"
        return f"{self.model}/{weights}"


class ClipEmbedder:
    def __init__(self, config: EmbedderConfig):
        self.config = config
        self._lock = threading.Lock()
        self._loaded = False

    # -- loading -------------------------------------------------------------
    def load(self) -> "ClipEmbedder":
        with self._lock:
            if not self._loaded:
                self._load()
                self._loaded = True
        return self

    def _load(self) -> None:
        from imagesearch.torch_compat import import_open_clip

        config = self.config
        open_clip = import_open_clip(config.model)
        import torch

        if config.model not in open_clip.list_models():
            raise EmbedderUnavailable(
                f"CLIP_MODEL={config.model!r} is not an open_clip architecture "
                f"(see open_clip.list_models()).")
        device = config.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        elif device == "cuda" and not torch.cuda.is_available():
            raise EmbedderUnavailable("CLIP_DEVICE=cuda but torch sees no CUDA device; set CLIP_DEVICE=cpu.")

        if config.random_init:
            logger.warning("CLIP_RANDOM_INIT is on: %s uses RANDOM weights. Search results are "
                           "meaningless. This mode exists for tests only.", config.model)
            pretrained = None
        elif config.weights_file is not None:
            if not config.weights_file.is_file():
                raise EmbedderUnavailable(f"CLIP_WEIGHTS_FILE={config.weights_file} does not exist.")
            pretrained = str(config.weights_file)
        else:
            if not config.pretrained:
                raise EmbedderUnavailable(
                    "No CLIP weights configured: set CLIP_PRETRAINED to an open_clip pretrained tag "
                    "or CLIP_WEIGHTS_FILE to a local weights file.")
            if config.pretrained not in open_clip.list_pretrained_tags_by_model(config.model):
                raise EmbedderUnavailable(
                    f"CLIP_PRETRAINED={config.pretrained!r} is not a pretrained tag of {config.model} "
                    f"(known: {', '.join(open_clip.list_pretrained_tags_by_model(config.model)) or 'none'}).")
            pretrained = config.pretrained

        def build():
            if config.random_init:
                torch.manual_seed(RANDOM_INIT_SEED)  # same random weights in every process
            model, _, preprocess = open_clip.create_model_and_transforms(
                config.model, pretrained=pretrained, device=device)
            return model.eval(), preprocess

        try:
            model, preprocess = build()
            tokenizer = open_clip.get_tokenizer(config.model)
        except Exception as error:  # network, hub, file format: all end in one actionable line
            reason = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
            raise EmbedderUnavailable(
                f"Could not load CLIP weights for {config.model} ({pretrained}): "
                f"{reason}. Allow the one-time download from Hugging Face, or set CLIP_WEIGHTS_FILE to a "
                f"local open_clip weights file (and HF_HUB_OFFLINE=1 with a pre-filled Hugging Face cache "
                f"for models with a Hugging Face text tower).") from error

        self._torch = torch
        self._model = model
        self._preprocess = preprocess
        self._tokenizer = tokenizer
        self._device = device
        self.dimensions = int(model.text_projection.shape[1] if hasattr(model, "text_projection")
                              and model.text_projection is not None else self._probe_dimensions())
        image_size = model.visual.image_size
        self.input_size = int(image_size[0] if isinstance(image_size, (tuple, list)) else image_size)
        cfg = open_clip.get_model_preprocess_cfg(model) if hasattr(open_clip, "get_model_preprocess_cfg") else {}
        self._resize_mode = cfg.get("resize_mode", "shortest")
        self._resample = _RESAMPLE.get(cfg.get("interpolation", "bicubic"), "BICUBIC")
        self._onnx_tower = None
        if resolve_runtime(config.runtime, device=device) == "onnx":
            # ONNX Runtime loads its own copy of the weights: torch's is freed first (~350 MB for
            # B-32) so the two never coexist, and rebuilt if the ONNX tower then fails to load.
            self._onnx_tower = onnx_image_tower(visual=model.visual, model_name=config.model,
                                                input_size=self.input_size,
                                                cache_dir=config.cache_dir or _DEFAULT_CACHE_DIR,
                                                release=lambda: model.visual.to("meta"))
            if self._onnx_tower is None and next(model.visual.parameters()).is_meta:
                self._model = model = build()[0]
        self.runtime = "onnx" if self._onnx_tower is not None else "torch"
        logger.info("CLIP model %s loaded on %s (%d-d, image tower on %s)", self.config.space_name, device,
                    self.dimensions, self.runtime)

    def _probe_dimensions(self) -> int:
        with self._torch.inference_mode():
            return int(self._model.encode_text(self._tokenizer(["x"]).to(self._device)).shape[-1])

    # -- embedding -----------------------------------------------------------
    @property
    def space_name(self) -> str:
        return self.config.space_name

    def prepare_image(self, image: "PILImage"):
        """Turn one RGB PIL image into the model's input tensor. Thread-safe; run it
        in decode workers so preprocessing overlaps with embedding."""
        self.load()
        return self._preprocess(self._fit_input(image))

    def _fit_input(self, image: "PILImage") -> "PILImage":
        """The model's centre crop, cut from ``image`` and resized in one step, so nothing larger
        than the model input is made (see catalog.imaging.fit_model_input)."""
        from catalog.imaging import fit_model_input

        return fit_model_input(image, size=self.input_size, resize_mode=self._resize_mode, resample=self._resample)

    def pixel_fit(self) -> tuple[int, str, str, str]:
        """(input size, open_clip resize mode, resample filter, device): what the ingestion decode
        processes need to cut the model input without torch (catalog.imaging.fit_model_input)."""
        self.load()
        return self.input_size, self._resize_mode, self._resample, self._device

    def tensor_from_pixels(self, pixels: np.ndarray):
        """The model input from uint8 HxWx3 pixels cut by catalog.imaging.fit_model_input: open_clip's
        own preprocess of that image (its resize and crop are then no-ops)."""
        from PIL import Image

        self.load()
        return self._preprocess(Image.fromarray(pixels, "RGB"))

    def embed_prepared(self, tensors: Sequence) -> np.ndarray:
        """Embed already-prepared image tensors, in batches of CLIP_BATCH_SIZE."""
        self.load()
        if self._onnx_tower is not None:
            return self._in_batches(tensors, lambda batch: self._torch.from_numpy(
                self._onnx_tower(self._torch.stack(list(batch)).numpy())))
        return self._in_batches(tensors, lambda batch: self._model.encode_image(
            self._torch.stack(list(batch)).to(self._device)))

    def embed_images(self, images: Sequence["PILImage"]) -> np.ndarray:
        return self.embed_prepared([self.prepare_image(image) for image in images])

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        self.load()
        return self._in_batches(texts, lambda batch: self._model.encode_text(
            self._tokenizer(list(batch)).to(self._device)))

    def _in_batches(self, inputs: Sequence, encode) -> np.ndarray:
        out = []
        for start in range(0, len(inputs), self.config.batch_size):
            with self._torch.inference_mode():
                out.append(self._normalised(encode(inputs[start:start + self.config.batch_size])))
        return np.concatenate(out) if out else np.zeros((0, self.dimensions), dtype=np.float32)

    def embed_text(self, text: str) -> np.ndarray:
        return self.embed_texts([text])[0]

    def _normalised(self, features) -> np.ndarray:
        features = features.float()
        features = features / features.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return features.cpu().numpy().astype(np.float32)


_RESAMPLE = {"bicubic": "BICUBIC", "bilinear": "BILINEAR", "nearest": "NEAREST", "lanczos": "LANCZOS"}

# Models kept loaded per process, most recently used last: while a space builds, a process embeds
# into two (the active one and the new one); a third evicts the least recently used.
MAX_LOADED_MODELS = 2
_embedders: OrderedDict[EmbedderConfig, ClipEmbedder] = OrderedDict()
_embedder_lock = threading.Lock()


def get_embedder(config: EmbedderConfig | None = None) -> ClipEmbedder:
    """The process-wide embedder for ``config`` (default: the configured model), loaded on first
    use; ``EmbedderConfig.for_space(space)`` gives a space's."""
    config = config or EmbedderConfig.from_settings()
    with _embedder_lock:
        embedder = _embedders.pop(config, None) or ClipEmbedder(config)
        _embedders[config] = embedder
        while len(_embedders) > MAX_LOADED_MODELS:
            _embedders.popitem(last=False)
    # Loaded outside the cache's lock: one model loading never blocks searches on another.
    return embedder.load()


def is_loaded(config: EmbedderConfig) -> bool:
    """Whether this process holds ``config``'s model loaded (a peek: never loads it)."""
    with _embedder_lock:
        embedder = _embedders.get(config)
    return embedder is not None and embedder._loaded
