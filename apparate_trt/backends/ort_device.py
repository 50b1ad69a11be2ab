"""ONNX Runtime with tensors kept on the device: the ``onnxruntime-gpu`` backend's runner.

:class:`OrtDeviceRunner` is an :class:`~apparate_trt.backends.onnxruntime.OrtRunner` that is also a
:class:`~apparate_trt.backends.base.ChainRunner`: ``submit`` binds inputs that are ``OrtValue``s
of an earlier segment where they are (no copy), binds the kept outputs to the device and copies
only the fetched ones to the host. On ``device="cuda"`` the session runs on ONNX Runtime's CUDA
execution provider (the ``onnxruntime-gpu`` package), which is the GPU path where TensorRT is
absent; on ``device="cpu"`` the same chaining runs on the CPU, which is how the CPU tests exercise
it. ORT's ``run_with_iobinding`` returns when the run has finished, so the runner is synchronous:
there is no overlap of a ramp with the next segment on this backend (TensorRT's runner has it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from apparate_trt.backends.base import Submission
from apparate_trt.backends.onnxruntime import OrtRunner, describe_run_failure
from apparate_trt.errors import ApparateError

DEVICES = ("cpu", "cuda")
NEEDS_CUDA_EP = (
    "needs ONNX Runtime's CUDA execution provider: pip uninstall -y onnxruntime && pip install onnxruntime-gpu "
    "(the two packages cannot be installed together), on a machine with an NVIDIA GPU and CUDA; or use --backend "
    "onnxruntime"
)


def cuda_provider_missing() -> str | None:
    """Why ONNX Runtime cannot run on CUDA here (None when it can)."""
    providers = ort.get_available_providers()
    if "CUDAExecutionProvider" not in providers:
        return f"this onnxruntime {ort.__version__} offers {', '.join(providers)}"
    return None


def providers_for(device: str, device_id: int = 0) -> list[str | tuple[str, dict]]:
    """The execution providers of a session on ``device`` (CPU after CUDA for the ops CUDA lacks)."""
    if device not in DEVICES:
        raise ApparateError(f"unknown ONNX Runtime device '{device}'; use one of: {', '.join(DEVICES)}")
    if device == "cpu":
        return ["CPUExecutionProvider"]
    problem = cuda_provider_missing()
    if problem:
        raise ApparateError(f"the onnxruntime-gpu backend {NEEDS_CUDA_EP} ({problem})")
    return [("CUDAExecutionProvider", {"device_id": device_id}), "CPUExecutionProvider"]


class OrtDeviceRunner(OrtRunner):
    """An ONNX Runtime session whose outputs may stay on ``device`` (``cpu`` or ``cuda``) and feed
    the next runner of the chain as ``OrtValue``s."""

    asynchronous = False

    def __init__(
        self,
        model: onnx.ModelProto | bytes | str | Path,
        threads: int | None = None,
        name: str = "model",
        *,
        device: str = "cuda",
        device_id: int = 0,
    ) -> None:
        super().__init__(model, threads=threads, name=name, providers=providers_for(device, device_id))
        if device == "cuda" and "CUDAExecutionProvider" not in self.session.get_providers():
            # ORT falls back to the CPU when the CUDA provider fails to start: say so rather than run there
            raise ApparateError(
                f"{name}: ONNX Runtime could not start its CUDA provider (it runs on {self.session.get_providers()}); "
                f"the onnxruntime-gpu backend {NEEDS_CUDA_EP}"
            )
        self.device = device if device == "cpu" else f"{device}:{device_id}"
        self._device_type = device
        self._device_id = device_id

    def submit(
        self,
        feeds: Mapping[str, Any],
        keep: Sequence[str] = (),
        fetch: Sequence[str] = (),
        *,
        side: bool = False,
    ) -> Submission:
        """Run once; ``keep`` outputs come back as ``OrtValue``s on the device, ``fetch`` outputs as
        host arrays (``side`` is accepted for the seam: ORT runs on one stream)."""
        binding = self.session.io_binding()
        for name in self._input_names:
            try:
                value = feeds[name]
            except KeyError:
                raise ApparateError(f"{self.name} needs input '{name}', which was not given") from None
            if isinstance(value, ort.OrtValue):
                binding.bind_ortvalue_input(name, value)
            else:
                binding.bind_cpu_input(name, np.asarray(value, order="C"))
        names = list(dict.fromkeys([*keep, *fetch]))
        unknown = sorted(set(names) - set(self.output_names))
        if unknown:
            raise ApparateError(f"{self.name} has no outputs {unknown}; it has {self.output_names}")
        for name in names:
            if name in keep:
                binding.bind_output(name, self._device_type, self._device_id)
            else:
                binding.bind_output(name, "cpu")
        try:
            self.session.run_with_iobinding(binding, self._run_options)
        except Exception as exc:  # noqa: BLE001 - ORT's several error types: one line naming the node
            raise ApparateError(f"ONNX Runtime fails to run {self.name}: {describe_run_failure(exc)}") from exc
        values = dict(zip(names, binding.get_outputs()))
        kept = {name: values[name] for name in keep}
        fetched = {name: values[name].numpy() for name in fetch}
        return Submission.ready(kept, fetched)
