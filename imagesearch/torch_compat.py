"""Make ``import torchvision`` work over a CPU-only torch build.

open_clip imports torchvision. The PyPI torchvision wheel pinned in
requirements.txt ships a compiled ``_C`` extension built against the CUDA
torch of the same release; over the CPU torch build installed here that
extension does not load, and torchvision then fails at import time with
``operator torchvision::nms does not exist`` because it registers fake
kernels for ``nms``/``qnms`` unconditionally.

We never call torchvision's detection ops (CLIP only needs its transforms), so
when - and only when - that exact failure happens we declare the two operator
schemas (no kernels) and import again. On a normal install torchvision imports
on the first try and this module changes nothing.
"""

from __future__ import annotations

import sys

_MISSING_OP_ERROR = "torchvision::nms does not exist"
_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_library = None  # keeps the schema definitions alive for the process


def import_torchvision():
    """Import and return torchvision, repairing the CPU-torch mismatch if needed."""
    global _library
    try:
        import torchvision
    except RuntimeError as error:
        if _MISSING_OP_ERROR not in str(error):
            raise
        import torch

        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        _library = torch.library.Library("torchvision", "FRAGMENT")
        for op_name, schema in _SCHEMAS.items():
            if not hasattr(torch.ops.torchvision, op_name):
                _library.define(schema)
        import torchvision
    return torchvision


# open_clip imports transformers (~4 s) and timm (~3.5 s) at import time for the few architectures
# that use them. For the others we hide them during that import (open_clip treats an ImportError as
# "not installed"); a later model that needs them gets a fresh open_clip import with them visible.
_OPTIONAL_STACKS = ("transformers", "timm")


def optional_stacks_needed(model: str) -> set[str] | None:
    """Which of transformers/timm open_clip's config for ``model`` uses; None if it has no bundled config."""
    import importlib.util
    import json
    from pathlib import Path

    spec = importlib.util.find_spec("open_clip")
    for location in (spec.submodule_search_locations or []) if spec else []:
        config_file = Path(location) / "model_configs" / f"{model}.json"
        if config_file.is_file():
            config = json.loads(config_file.read_text())
            text, vision = config.get("text_cfg", {}), config.get("vision_cfg", {})
            needed = set()
            if text.get("hf_model_name") or text.get("hf_tokenizer_name") or "multimodal_cfg" in config:
                needed.add("transformers")
            if vision.get("timm_model_name"):
                needed.add("timm")
            return needed
    return None


def import_open_clip(model: str):
    """Import and return open_clip, without the optional stacks that ``model`` does not use."""
    needed = optional_stacks_needed(model)
    needed = set(_OPTIONAL_STACKS) if needed is None else needed
    loaded = sys.modules.get("open_clip")
    if loaded is not None:
        if all(getattr(sys.modules.get(f"open_clip.{m}"), stack, True) is not None
               for stack, m in (("transformers", "hf_model"), ("timm", "timm_model")) if stack in needed):
            return loaded
        for name in [m for m in sys.modules if m == "open_clip" or m.startswith("open_clip.")]:
            del sys.modules[name]  # imported with a stack hidden that this model needs: import again
    import_torchvision()
    hidden = [name for name in _OPTIONAL_STACKS if name not in needed and name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # `import name` raises ImportError while this is set
    try:
        import open_clip
    finally:
        for name in hidden:
            if sys.modules.get(name, 0) is None:
                del sys.modules[name]
    return open_clip
