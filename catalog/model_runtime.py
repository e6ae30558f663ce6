"""Where the CLIP image tower runs: open_clip's torch module, or the same module exported once to
ONNX and run by ONNX Runtime (faster and leaner on CPU; bench/model_runtime.py has the figures).

The open_clip model stays the reference: the ONNX file is exported from the loaded module, cached
under the data folder by model name and a hash of the tower's weights, and any failure to export or
load it falls back to torch with one warning.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

RUNTIMES = ("auto", "torch", "onnx")
ONNX_OPSET = 17
_INPUT, _OUTPUT = "pixels", "features"


def resolve_runtime(runtime: str, *, device: str) -> str:
    """'torch' or 'onnx' for a CLIP_RUNTIME value on a device: auto means ONNX on CPU, torch on CUDA
    (ONNX Runtime's CPU package is what requirements.txt installs)."""
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown CLIP runtime {runtime!r} (one of {', '.join(RUNTIMES)})")
    if runtime == "auto":
        return "torch" if device.startswith("cuda") else "onnx"
    if runtime == "onnx" and device.startswith("cuda"):
        return "torch"  # no CUDA execution provider installed: the GPU is torch's job
    return runtime


def weights_digest(module) -> str:
    """SHA-256 over the module's parameter and buffer values (names, shapes, dtypes, bytes)."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        value = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(value.shape)}:{value.dtype};".encode())
        digest.update(memoryview(value.view(-1).view(torch.uint8).numpy()))
    return digest.hexdigest()


def onnx_path(*, cache_dir: Path, model_name: str, visual) -> Path:
    """The cache file for this tower: one per architecture, weights and exporter."""
    import torch

    key = hashlib.sha256(f"{weights_digest(visual)}|torch {torch.__version__}|opset {ONNX_OPSET}".encode())
    safe_name = "".join(c if c.isalnum() or c in "-_." else "_" for c in model_name)
    return Path(cache_dir) / f"{safe_name}-visual-{key.hexdigest()[:24]}.onnx"


def export_image_tower(visual, *, path: Path, input_size: int) -> Path:
    """Export the image tower to ``path`` (batch size dynamic); written whole or not at all."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(2, 3, input_size, input_size)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".part")
    os.close(fd)
    try:
        # Grad on: under no_grad torch's attention takes a fused fast path that ONNX cannot express.
        # The TorchScript exporter: the dynamo one needs onnxscript and is far slower on a ViT.
        with torch.inference_mode(False), torch.enable_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer and "legacy exporter" notices: expected, not actionable
            torch.onnx.export(visual.eval(), (example,), tmp, input_names=[_INPUT], output_names=[_OUTPUT],
                              dynamic_axes={_INPUT: {0: "batch"}, _OUTPUT: {0: "batch"}},
                              opset_version=ONNX_OPSET, dynamo=False)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


class OnnxImageTower:
    """The exported image tower in an ONNX Runtime session: float32 NCHW in, features out."""

    def __init__(self, path: Path, *, threads: int | None = None):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        self.path = Path(path)
        self._session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        return self._session.run([_OUTPUT], {_INPUT: np.ascontiguousarray(pixels, dtype=np.float32)})[0]


def onnx_image_tower(*, visual, model_name: str, input_size: int, cache_dir: Path,
                     release=None) -> OnnxImageTower | None:
    """The ONNX tower for ``visual`` (exported on first use), or None after one warning when it
    cannot be exported or loaded - the caller then keeps torch. ``release`` is called once the ONNX
    file is ready, before ONNX Runtime loads it (to free the torch copy of the weights first)."""
    try:
        path = onnx_path(cache_dir=cache_dir, model_name=model_name, visual=visual)
        if not path.is_file():
            logger.info("Exporting the %s image tower to ONNX (once, cached at %s)", model_name, path)
            export_image_tower(visual, path=path, input_size=input_size)
        threads = _torch_threads()
        if release is not None:
            release()
        return OnnxImageTower(path, threads=threads)
    except Exception as error:  # noqa: BLE001 - any exporter/runtime failure means "use torch"
        reason = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
        logger.warning("CLIP_RUNTIME: the ONNX image tower for %s is unavailable (%s: %s); using torch.",
                       model_name, type(error).__name__, reason)
        return None


def _torch_threads() -> int:
    # The same thread budget torch would use (it honours OMP_NUM_THREADS and torch.set_num_threads).
    import torch

    return torch.get_num_threads()
