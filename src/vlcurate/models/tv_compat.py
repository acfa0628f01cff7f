"""Let `import torchvision` (and so `import open_clip`) work against a CPU-only torch.

PyPI's torchvision wheels are CUDA builds; their compiled ops do not load against the CPU torch
used on CI machines, and importing torchvision then fails with "operator torchvision::nms does
not exist" (its fake-tensor registrations look the operators up at import time). Defining the
two operator schemas it looks up (`nms`, `qnms`) before the import lets the pure-Python parts
(transforms, which open_clip uses) work. `torchvision.io` and `torchvision.ops` stay unusable in
that case and vlcurate never calls them. Where torchvision's ops load normally this does nothing.

Call `ensure_torchvision()` before importing torchvision or open_clip.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util

_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_LIB = None  # keep the Library object alive: dropping it unregisters the schemas


def _ops_defined() -> bool:
    import torch

    try:
        torch.ops.torchvision.nms  # noqa: B018
        return True
    except (AttributeError, RuntimeError):
        return False


@functools.cache
def ensure_torchvision() -> bool:
    """Make `import torchvision` safe; True when the compatibility shim had to be installed."""
    global _LIB
    if importlib.util.find_spec("torchvision") is None:
        return False
    import torch

    try:
        # Loading torchvision's own extension library is what registers the ops when it works.
        spec = importlib.util.find_spec("torchvision")
        assert spec is not None and spec.submodule_search_locations is not None
        import glob
        import os

        libs = []
        for loc in spec.submodule_search_locations:
            libs.extend(glob.glob(os.path.join(loc, "_C*.so")))
        for lib in libs:
            with contextlib.suppress(OSError, RuntimeError):
                torch.ops.load_library(lib)
    except Exception:  # pragma: no cover - defensive: never let the probe itself fail the import
        pass
    if _ops_defined():
        return False
    _LIB = torch.library.Library("torchvision", "DEF")
    for schema in _SCHEMAS.values():
        _LIB.define(schema)
    return True
