"""Open Inference Protocol (KServe v2) server: REST + gRPC in front of one Engine.

``serve(engine_dir, ...)`` blocks until SIGTERM / SIGINT (``apparate-run --serve``); ``Server``
starts and stops in-process. See docs/SERVING.md.
"""

from apparate_trt.runtime.server.app import Server, run_until_signal, serve
from apparate_trt.runtime.server.config import ServingConfig

__all__ = ["Server", "ServingConfig", "run_until_signal", "serve"]
