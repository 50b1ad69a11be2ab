"""The bundled real models, one module each, with the helpers they share (``common``).

Run ``python scripts/build_real_models.py``; see its docstring and scripts/README.md."""
