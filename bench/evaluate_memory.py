#!/usr/bin/env python
"""Peak memory of ``manage.py evaluate``'s work (catalog.evaluation.evaluate) against the number of
pictures: it should not grow with them beyond one vector each. Each size runs in a process of its own
on generated 2000x1500 JPEGs (3 classes), ViT-S-32 with random weights (no download, no database):

    .venv/bin/python bench/evaluate_memory.py                 # 16 and 64 pictures
    .venv/bin/python bench/evaluate_memory.py --sizes 16 256
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def child(count: int) -> None:
    import resource
    import time

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "imagesearch.settings")
    import django

    django.setup()
    import numpy as np
    from PIL import Image

    from catalog.embedder import get_embedder
    from catalog.evaluation import EvalSet, evaluate

    folder = Path(tempfile.mkdtemp(prefix="evaluate-memory-"))
    rng = np.random.default_rng(0)
    paths = []
    for index in range(count):
        path = folder / f"{index}.jpg"
        Image.fromarray(rng.integers(0, 255, (15, 20, 3), dtype=np.uint8)).resize(
            (2000, 1500), Image.Resampling.BILINEAR).save(path, quality=90)
        paths.append(path)
    embedder = get_embedder()
    data = EvalSet(paths=paths, labels=[("a", "b", "c")[i % 3] for i in range(count)], in_csv=[False] * count,
                   classes=["a", "b", "c"])
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    started = time.perf_counter()
    evaluate(embedder=embedder, data=data)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    print(f"| {count} | {before} | {after} | {time.perf_counter() - started:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    env = {**os.environ, "CLIP_MODEL": "ViT-S-32", "CLIP_RANDOM_INIT": "true", "CLIP_BATCH_SIZE": "8",
           "IMAGESEARCH_DATA_DIR": os.environ.get("IMAGESEARCH_DATA_DIR", str(ROOT / "var" / "bench")),
           "IMAGESEARCH_LOG_LEVEL": "ERROR", "PYTHONPATH": str(ROOT)}
    print("| pictures | peak RSS after loading the model (MB) | peak RSS after evaluating (MB) | wall (s) |")
    print("|---:|---:|---:|---:|")
    for size in args.sizes:
        subprocess.run([sys.executable, __file__, "--child", str(size)], env=env, check=True)


if __name__ == "__main__":
    main()
