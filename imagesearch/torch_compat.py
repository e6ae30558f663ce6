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
