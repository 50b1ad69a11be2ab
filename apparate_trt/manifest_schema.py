"""The JSON Schema of an engine directory's ``manifest.json`` (format 1; see docs/ENGINE_DIR.md).

:func:`apparate_trt.engine_dir.read_manifest` validates every manifest against it with
``jsonschema`` before reading a field, so a corrupt or foreign file fails with the JSON path of its
first problem. The cross-field checks (counts and ids that must agree) stay in ``engine_dir``.
"""

from __future__ import annotations

from typing import Any

_STR = {"type": "string"}
_INT = {"type": "integer"}
_NUM = {"type": "number"}
_STRINGS = {"type": "array", "items": _STR}
_DIMS = {"type": "array", "items": {"type": ["integer", "string"]}}
_NUMBERS = {"type": "array", "items": _NUM}


def _object(required: dict[str, Any], optional: dict[str, Any] | None = None) -> dict[str, Any]:
    """An object with these required (and optional) properties; other properties are allowed."""
    return {"type": "object", "required": list(required), "properties": {**required, **(optional or {})}}


_TENSOR = _object({"name": _STR, "dtype": _STR, "shape": _DIMS})

MANIFEST_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "apparate_trt engine directory manifest",
    **_object(
        {
            "format_version": _INT,
            "model": _object(
                {
                    "file": _STR,
                    "name": _STR,
                    "sha256": _STR,
                    "inputs": {"type": "array", "items": _TENSOR},
                    "outputs": {"type": "array", "items": _TENSOR},
                    "output": _STR,
                    "num_classes": _INT,
                }
            ),
            "sites": {
                "type": "array",
                "items": _object(
                    {
                        "id": _INT,
                        "tensor": _STR,
                        "side_tensors": _STRINGS,
                        "shape": _DIMS,
                        "node_index": _INT,
                        "depth": {"type": ["number", "null"]},
                    }
                ),
            },
            "segments": {
                "type": "array",
                "items": _object(
                    {
                        "file": _STR,
                        "inputs": _STRINGS,
                        "outputs": _STRINGS,
                        "ends_at_site": {"type": ["integer", "null"]},
                    }
                ),
            },
            "ramps": {
                "type": "array",
                "items": _object(
                    {
                        "site": _INT,
                        "file": _STR,
                        "inputs": _STRINGS,
                        "output": _STR,
                        "kind": _STR,
                        "num_classes": _INT,
                        "agreement": _NUM,
                        "cost_ms": _NUM,
                        "cost_fraction": _NUM,
                    },
                    {"features": {"type": ["string", "null"]}, "refit": {"type": ["object", "null"]}},
                ),
            },
            "profiles": _object(
                {
                    "backend": _STR,
                    "threads": {"type": ["integer", "null"]},
                    "batch_sizes": {"type": "array", "items": _INT},
                    "model_ms": _NUMBERS,
                    "segments_ms": {"type": "array", "items": _NUMBERS},
                    "ramps_ms": {"type": "array", "items": _NUMBERS},
                },
                {"ramp_threads": _INT},
            ),
            "budget": _NUM,
            "initial_config": _object({"active_sites": {"type": "array", "items": _INT}, "thresholds": _NUMBERS}),
            "bootstrap": _object(
                {"file": _STR, "num_samples": _INT, "num_train": _INT, "num_heldout": _INT}, {"folds": _INT}
            ),
            "tools": {"type": "object"},
            "created": _STR,
        },
        {"file_sha256": {"type": "object", "additionalProperties": _STR}},
    ),
    "additionalProperties": False,  # unknown top-level keys are refused (engine_dir names them)
}
"""The manifest's schema (JSON Schema draft 2020-12)."""
