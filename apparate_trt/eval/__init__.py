"""Evaluation: the model matrix (what compiles, measured) and the tiny exporter models behind it."""
