"""JPEG decoding on the GPU (nvJPEG through torchvision), used where the model runs on CUDA.

UNMEASURED: no GPU was at hand when this was written, so whether it beats the decode processes
is not known (bench/README.md). It is used only where the model is on CUDA and torchvision can
decode there. The header and EXIF are read on the CPU (no pixels, the same checks as the CPU
path), the pixels are decoded and reduced on the GPU, and the thumbnail and model input are cut
on the CPU from the reduced image by the same code as the CPU path. Any image it does not take
or fails on is decoded by the CPU path, alone.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

from catalog.imaging import ImageRejected, read_header
from catalog.ingest.decoding import Decoded, DecodeSpec, finish, short_error

# Below this a "JPEG" is a signature and little else: not worth a trip to the GPU.
_MIN_JPEG_BYTES = 100
# Decoded pixels on the GPU at once (RGB bytes, before reduction): 40 twelve-megapixel photos,
# about 1.5 GB, whatever the batch size.
GPU_DECODE_MAX_PIXELS = 512_000_000


@functools.cache
def available() -> bool:
    """torch sees a CUDA device and torchvision can decode JPEGs on it."""
    try:
        import torch
        import torchvision.io

        return torch.cuda.is_available() and hasattr(torchvision.io, "decode_jpeg")
    except Exception:  # no torchvision, a broken CUDA install: the CPU path decodes
        return False


def wanted(head: bytes, *, device: str, available: bool) -> bool:
    """Whether an item (``head``: its first bytes, or all of them) goes to the GPU decoder."""
    return (available and device.startswith("cuda") and len(head) >= _MIN_JPEG_BYTES
            and head[:3] == b"\xff\xd8\xff")


def decode_batch(sources: Sequence[bytes], spec: DecodeSpec, *,
                 gpu_decode: Callable[[Sequence[bytes], DecodeSpec], list],
                 cpu_decode: Callable[[bytes, DecodeSpec], Decoded]) -> list[Decoded]:
    """Decode ``sources`` on the GPU in one batch; each one it fails on (an exception or None in
    its place, or the whole batch failing) is decoded by ``cpu_decode`` instead."""
    try:
        results = list(gpu_decode(sources, spec))
    except Exception:
        results = [None] * len(sources)
    return [result if isinstance(result, Decoded) else cpu_decode(source, spec)
            for source, result in zip(sources, results, strict=True)]


def decode_on_gpu(sources: Sequence[bytes], spec: DecodeSpec, *, device: str = "cuda") -> list:
    """One Decoded per source; an exception in place of those the GPU could not decode."""
    import torch
    import torchvision.io
    from PIL import Image
    from torch.nn import functional

    headers: list = []
    for source in sources:
        try:
            headers.append(read_header(source, max_pixels=spec.max_pixels, max_aspect_ratio=spec.max_aspect_ratio))
        except ImageRejected as rejected:
            headers.append(rejected)
    todo = [i for i, header in enumerate(headers) if not isinstance(header, Exception)]
    results: list = [Decoded(error=str(header)) if isinstance(header, Exception) else None for header in headers]
    for chunk in _pixel_chunks(todo, [headers[i][0] for i in todo]):
        try:
            images = torchvision.io.decode_jpeg([torch.frombuffer(bytearray(sources[i]), dtype=torch.uint8)
                                                 for i in chunk], mode=torchvision.io.ImageReadMode.RGB, device=device)
        except Exception as error:  # the chunk failed: each of its images is tried on the CPU
            for i in chunk:
                results[i] = error
            continue
        for i, pixels in zip(chunk, images, strict=True):
            try:
                metadata, transpose = headers[i]
                height, width = pixels.shape[-2:]
                scale = spec.min_side / min(height, width)
                if scale < 1:  # reduce on the GPU (area averaging, as the CPU path's box reduction)
                    size = (max(spec.min_side, round(height * scale)), max(spec.min_side, round(width * scale)))
                    pixels = functional.interpolate(pixels[None].float(), size=size, mode="area")[0]
                    pixels = pixels.round_().clamp_(0, 255).to(torch.uint8)
                image = Image.fromarray(pixels.permute(1, 2, 0).contiguous().cpu().numpy(), "RGB")
                if transpose is not None:
                    image = image.transpose(transpose)
                results[i] = finish(image, metadata, spec)
            except Exception as error:
                results[i] = RuntimeError(short_error(error))
        del images
    return results


def _pixel_chunks(indices: list[int], metadata: list) -> list[list[int]]:
    """``indices`` cut into runs whose decoded pixels stay under GPU_DECODE_MAX_PIXELS (one image
    over it on its own: the header check already capped it at IMAGESEARCH_MAX_PIXELS)."""
    chunks: list[list[int]] = []
    total = 0
    for index, meta in zip(indices, metadata, strict=True):
        pixels = meta.width * meta.height
        if not chunks or total + pixels > GPU_DECODE_MAX_PIXELS:
            chunks.append([])
            total = 0
        chunks[-1].append(index)
        total += pixels
    return chunks
