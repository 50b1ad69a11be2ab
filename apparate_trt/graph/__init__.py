"""The graph layer: ONNX ingest, liveness, cuts and splitting, used by the compiler and the runtime alike.

It imports nothing of the compiler, the runtime, the evaluation harness or the commands
(``tests/test_layers.py`` checks it).
"""
