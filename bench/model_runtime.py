#!/usr/bin/env python
"""CLIP image tower on CPU, runtime against runtime (printed table; no asserts):

  torch          open_clip's module as catalog.embedder runs it (float32, inference_mode)
  torch-cl       the same in channels_last memory format
  torch-bf16     the same under CPU bfloat16 autocast
  onnx           the tower exported by catalog.model_runtime and run by ONNX Runtime
  app-torch      ClipEmbedder.embed_prepared with CLIP_RUNTIME=torch (what an import runs, whole model loaded)
  app-onnx       the same with CLIP_RUNTIME=onnx (torch's copy of the image tower freed)

For each: images/s at each batch size (best of --rounds), peak RSS of a process that runs only
that runtime (the ONNX one never imports torch), and the largest cosine distance from open_clip's own
float32 output on the same generated images. Random weights (same cost as trained ones, no download):

    .venv/bin/python bench/model_runtime.py                          # ViT-B-32 and ViT-S-32, batch 32 and 64
    .venv/bin/python bench/model_runtime.py --models ViT-S-32 --rounds 1    # quicker
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

VARIANTS = ("torch", "torch-cl", "torch-bf16", "onnx", "app-torch", "app-onnx")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="ViT-B-32,ViT-S-32")
    parser.add_argument("--batch-sizes", default="32,64")
    parser.add_argument("--rounds", type=int, default=3, help="timed passes per batch size; the best is kept")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--cache-dir", type=Path, default=ROOT / "var" / "bench-model-runtime",
                        help="where the generated inputs and the exported ONNX files are kept")
    parser.add_argument("--child", nargs=2, metavar=("VARIANT", "MODEL"), help=argparse.SUPPRESS)
    return parser.parse_args()


def build_model(model_name: str, runtime: str = "torch", cache_dir: Path | None = None):
    """open_clip's model through the project's real loading code (random init, seeded)."""
    from catalog.embedder import ClipEmbedder, EmbedderConfig

    embedder = ClipEmbedder(EmbedderConfig(model=model_name, pretrained=None, weights_file=None, device="cpu",
                                           batch_size=64, random_init=True, runtime=runtime,
                                           cache_dir=cache_dir))
    return embedder.load()


def generated_images(count: int):
    """Photo-like pictures: smooth colour fields plus noise, of varied sizes."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(7)
    images = []
    for index in range(count):
        width, height = 320 + 16 * (index % 7), 240 + 16 * (index % 5)
        coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        base = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC), np.int16)
        base = base + rng.normal(0, 8, (height, width, 1)).astype(np.int16)
        images.append(Image.fromarray(np.clip(base, 0, 255).astype(np.uint8)))
    return images


def reference(model_name: str, count: int, folder: Path) -> None:
    """Inputs, open_clip's float32 features on them, and the ONNX export, written for the runs."""
    import numpy as np
    import torch

    from catalog.model_runtime import export_image_tower, onnx_path

    embedder = build_model(model_name)
    pixels = torch.stack([embedder.prepare_image(image) for image in generated_images(count)])
    with torch.inference_mode():
        features = embedder._model.encode_image(pixels)
    np.save(folder / f"{model_name}-inputs.npy", pixels.numpy())
    np.save(folder / f"{model_name}-reference.npy", features.numpy())
    path = onnx_path(cache_dir=folder, model_name=model_name, visual=embedder._model.visual)
    if not path.is_file():
        export_image_tower(embedder._model.visual, path=path, input_size=embedder.input_size)
    (folder / f"{model_name}-onnx.txt").write_text(str(path))


def child(variant: str, model_name: str, args) -> dict:
    """One runtime in a fresh process: rates, peak RSS and distance from the reference."""
    import numpy as np

    folder = args.cache_dir
    pixels = np.load(folder / f"{model_name}-inputs.npy")
    expected = np.load(folder / f"{model_name}-reference.npy")
    if variant == "onnx":
        from catalog.model_runtime import OnnxImageTower

        tower = OnnxImageTower(Path((folder / f"{model_name}-onnx.txt").read_text()), threads=os.cpu_count())
        run = tower
    elif variant.startswith("app-"):
        import torch

        embedder = build_model(model_name, runtime=variant[4:], cache_dir=folder)
        assert embedder.runtime == variant[4:], f"{variant} fell back to {embedder.runtime}"

        def run(batch):
            return embedder.embed_prepared(list(torch.from_numpy(batch)))
    else:
        import torch

        model = build_model(model_name)._model
        channels_last = variant == "torch-cl"
        if channels_last:
            model = model.to(memory_format=torch.channels_last)

        def run(batch):
            tensor = torch.from_numpy(batch)
            if channels_last:
                tensor = tensor.contiguous(memory_format=torch.channels_last)
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16,
                                                         enabled=variant == "torch-bf16"):
                return model.encode_image(tensor).float().numpy()

    got = np.concatenate([run(pixels[i:i + 32]) for i in range(0, len(pixels), 32)])
    cosine = (got * expected).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(expected, axis=1)
    rates = {}
    for batch_size in [int(b) for b in args.batch_sizes.split(",")]:
        batch = np.resize(pixels, (batch_size, *pixels.shape[1:]))
        run(batch)  # warm-up: first-call allocations and kernel selection
        best = 0.0
        for _ in range(args.rounds):
            started = time.perf_counter()
            run(batch)
            best = max(best, batch_size / (time.perf_counter() - started))
        rates[batch_size] = best
    return {"variant": variant, "model": model_name, "rates": rates,
            "max_cosine_distance": float((1 - cosine).max()),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return True  # unknown: try it
    return "avx512_bf16" in flags or "amx_bf16" in flags


def main():
    args = parse_args()
    os.environ.setdefault("IMAGESEARCH_LOG_LEVEL", "ERROR")
    if args.child and args.child[0] == "reference":
        reference(args.child[1], 64, args.cache_dir)
        return
    if args.child:
        print(json.dumps(child(*args.child, args)))
        return
    import logging
    import warnings

    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    print(f"{os.cpu_count()} CPU(s); rounds={args.rounds}; each runtime in its own process", flush=True)
    header = f"{'model':<10} {'runtime':<11}" + "".join(f" {f'b={b} img/s':>12}" for b in batch_sizes)
    print(header + f" {'peak RSS MB':>12} {'max cos dist':>13}")
    for model_name in args.models.split(","):
        started = time.perf_counter()
        subprocess.run([sys.executable, __file__, "--cache-dir", str(args.cache_dir), "--child", "reference",
                        model_name], check=True, stderr=subprocess.DEVNULL)
        print(f"# {model_name}: reference + ONNX export {time.perf_counter() - started:.0f} s", flush=True)
        for variant in args.variants.split(","):
            if variant == "torch-bf16" and not cpu_has_bf16():
                print(f"{model_name:<10} {variant:<11} skipped: this CPU has no bfloat16 instructions "
                      f"(emulated: under 0.3 img/s on the 2-core build machine)", flush=True)
                continue
            out = subprocess.run([sys.executable, __file__, "--cache-dir", str(args.cache_dir),
                                  "--batch-sizes", args.batch_sizes, "--rounds", str(args.rounds),
                                  "--child", variant, model_name],
                                 check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
            result = json.loads(out)
            rates = "".join(f" {result['rates'][str(b)]:>12.1f}" for b in batch_sizes)
            print(f"{model_name:<10} {variant:<11}{rates} {result['peak_rss_mb']:>12.0f}"
                  f" {result['max_cosine_distance']:>13.2e}", flush=True)


if __name__ == "__main__":
    main()
