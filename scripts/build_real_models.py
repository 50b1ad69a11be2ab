#!/usr/bin/env python3
"""Build the two real "original models" (ONNX) and their data streams, offline.

CV:  EfficientNet-Lite0 (ImageNet weights, frozen) + an MLP head trained on Fashion-MNIST.
     Input ``image`` float32 [N,1,28,28] in [0,1]; output ``logits`` float32 [N,10].
NLP: all-MiniLM-L6-v2 (frozen) + a linear sentiment head (rotten=0 / fresh=1) trained on Rotten
     Tomatoes critic snippets, split by movie. Inputs ``input_ids`` / ``attention_mask`` int64
     [N,L] (L fixed, padded); output ``logits`` float32 [N,2].

Everything comes from installed packages (see docs/MODELS_AND_DATA.md and
scripts/install_system.sh); nothing is downloaded. Outputs under ``--out DIR`` (default ``data/``):

  DIR/cv/model.onnx  bootstrap.npz  eval.npz  labels.npz  meta.json  drift.npz  drift_meta.json
  DIR/nlp/model.onnx bootstrap.npz  eval.npz  labels.npz  meta.json

``bootstrap.npz`` / ``eval.npz`` / ``drift.npz`` hold exactly one array per model input (first
axis = samples), so they can be passed to ``apparate-compile --data`` / ``apparate-run --data``.
True labels live in ``labels.npz`` (never in the input files). See scripts/README.md.

Usage:  python scripts/build_real_models.py [--out data] [--only cv|nlp] [--force]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts/: the real_models package

from real_models.common import (  # noqa: E402
    SEED,
    BuildError,
    log,
    seeded_torch,
)
from real_models.cv import build_cv  # noqa: E402
from real_models.nlp import build_nlp  # noqa: E402


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("data"), help="output directory (default data/)")
    p.add_argument("--only", choices=["cv", "nlp"], help="build one model only")
    p.add_argument("--force", action="store_true", help="rebuild stages whose outputs exist")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: build the selected models; one-line error and exit 1 on failure."""
    args = parse_args(argv)
    try:
        seeded_torch(SEED)
        if args.only in (None, "cv"):
            build_cv(args.out, args.force)
        if args.only in (None, "nlp"):
            build_nlp(args.out, args.force)
    except BuildError as exc:
        print(f"build_real_models: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"build_real_models: error: {exc}", file=sys.stderr)
        return 1
    log("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
