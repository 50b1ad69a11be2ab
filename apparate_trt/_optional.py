"""Lazy imports of optional dependencies, so that ``import apparate_trt`` needs only the core ones.

``require("torch", extra="train", purpose="ramp training")`` returns the module or raises a
:class:`~apparate_trt.errors.MissingExtraError` that names the pip command to fix it.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from apparate_trt.errors import MissingExtraError


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """Import ``module`` or fail with a message naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(
            f"{purpose} needs the Python package '{module.split('.')[0]}', which is not installed "
            f"({exc}); install it with: pip install 'apparate_trt[{extra}]'"
        ) from exc


def is_available(module: str) -> bool:
    """True if ``module`` can be imported (without raising)."""
    try:
        importlib.import_module(module)
        return True
    except Exception:  # noqa: BLE001 - any failure means "not usable here"
        return False
