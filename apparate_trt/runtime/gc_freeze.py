"""Keep Python's cyclic garbage collector off the serving path's tail.

A full (generation 2) collection walks every tracked object of the process. After an engine has
loaded (ONNX graphs, sessions, the controller's tables, the server's framework) that is hundreds
of thousands of objects that will live as long as the process, and a full collection then paused
the batch thread for up to about 22 ms in ``benchmarks/gc_pauses.py`` (4,000 CV requests at
380 rps), against a p99 of about 13 ms without Apparate. ``gc.freeze()`` moves every object alive
at that moment into a permanent generation the collector never scans, so later collections only
walk what serving allocates (the longest pause fell to about 10 ms there).

Freezing is a choice for the whole process, so the library's ``load()`` does not make it: the
commands that own their process (``apparate-run --serve`` and its replays) call
:func:`freeze_after_load` once their engines are loaded and warm, and so does the benchmark
harness. An application that embeds an engine may call it the same way.
"""

from __future__ import annotations

import gc


def freeze_after_load() -> int:
    """Collect once, then freeze every surviving object out of later collections.

    Call it after loading and warming up, before serving. Returns how many objects were frozen
    (``gc.get_freeze_count()``). Frozen objects are never freed by the cycle collector (reference
    counting still frees them), so an engine closed while frozen would stay in memory: each call
    first unfreezes, so that the collection frees what was closed since the last call (a replay's
    engine before ``--compare-vanilla``'s, a benchmark round's before the next), and the commands
    call :func:`unfreeze` once their engines are closed. Call it at start-up, not per request.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def unfreeze() -> None:
    """Return every frozen object to the collector (after the engines frozen are closed)."""
    gc.unfreeze()
