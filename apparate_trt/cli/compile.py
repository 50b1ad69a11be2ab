"""``apparate-compile``: an ONNX classifier plus bootstrap data in, an engine directory out."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from apparate_trt.cli._common import HelpFormatter, Parser, flush_print, run_main
from apparate_trt.compiler.bootstrap import DEFAULT_MAX_SAMPLES

DESCRIPTION = """\
Compile an ONNX classifier for early-exit serving.

Finds the candidate ramp sites (cuts) of MODEL.onnx, splits it into segments, trains one small
ramp per site to predict the model's own output on the bootstrap data (no labels needed; for an
image model also on mirrored and shifted copies of it and blends of two images, see --augment and
--blends; for a token model on copies with a few tokens deleted), profiles
the model, segments and ramps at batch sizes 1, 2, 4, ... up to --max-batch, chooses the initial
active ramps within --budget and writes everything to the engine directory --out, which
`apparate-run --engine-dir DIR` serves. See docs/ENGINE_DIR.md for its contents.
"""

EPILOG = """\
BOOTSTRAP.npz holds one array per model input, named as in the model, first axis = samples
(at least 10). The ramps learn the model's own answers, so any unlabeled inputs serve: more is
better (agreement rose up to 20,000 on the benchmark models; --max-samples caps what is used).
Write it with numpy.savez(path, input_name=array, ...) in the model's dtypes: such a file is
memory-mapped, not read into memory (a savez_compressed file is read whole).

exit status: 0 success, 2 bad input (one line 'error: ...' on stderr), 130 interrupted.

example:
  apparate-compile model.onnx --data bootstrap.npz --out engines/model
"""


def build_parser() -> Parser:
    """The argument parser (every flag documented, defaults shown)."""
    p = Parser(prog="apparate-compile", description=DESCRIPTION, epilog=EPILOG, formatter_class=HelpFormatter)
    p.add_argument(
        "model", metavar="MODEL.onnx", help="the ONNX classifier to compile (one [batch, classes] score output)"
    )
    p.add_argument(
        "--data",
        required=True,
        metavar="BOOTSTRAP.npz",
        help="bootstrap samples: one array per model input, named as in the model, first axis = samples (required)",
    )
    p.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="engine directory to write; must not exist, be empty, or (with --force) be an engine directory (required)",
    )
    p.add_argument(
        "--budget",
        type=float,
        default=0.02,
        metavar="FRACTION",
        help="ramp budget: latency all active ramps may add to an input that never exits, as a fraction of the "
        "model's latency, in (0, 1)",
    )
    p.add_argument(
        "--max-batch",
        type=int,
        default=16,
        metavar="N",
        help="largest batch size to profile (profiles 1, 2, 4, ... up to it)",
    )
    p.add_argument(
        "--backend",
        choices=["auto", "onnxruntime", "onnxruntime-gpu", "tensorrt"],
        default="auto",
        help="backend to profile on: onnxruntime works everywhere; onnxruntime-gpu needs the onnxruntime-gpu package "
        "and an NVIDIA GPU; tensorrt also builds one TensorRT engine per segment and ramp (and the whole model) for "
        "this GPU into tensorrt/<gpu>_<sm>_<trt version>/, with one optimization profile for batch 1..--max-batch, and "
        "needs an NVIDIA GPU and the 'tensorrt' extra; auto: tensorrt where this machine can build engines, else "
        "onnxruntime",
    )
    p.add_argument(
        "--fp16",
        action="store_true",
        help="--backend tensorrt on TensorRT 10: let TensorRT use FP16 kernels (builder flag FP16). TensorRT 11 is "
        "strongly typed and has no such flag: there it is refused, and engines compute in the ONNX model's own types",
    )
    p.add_argument(
        "--seed", type=int, default=0, metavar="N", help="random seed for the train/held-out split and ramp training"
    )
    p.add_argument(
        "--output",
        metavar="NAME",
        default=None,
        help="name of the [batch, classes] score output, needed when the model has several outputs (default: the "
        "only such output)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="ONNX Runtime intra-op threads for feature collection and profiling (default: all cores this process "
        "may use)",
    )
    p.add_argument(
        "--augment",
        type=int,
        default=None,
        metavar="N",
        help="near-copies of each train sample the ramps also learn the model's outputs on, 0-7: mirror and 1-pixel "
        "shifts of an image, a few tokens deleted from a token sequence (default: 7 for a model whose only input "
        "is a float [N, C, H, W] image or whose inputs are integer [N, S] token tensors with an attention mask, 0 "
        "otherwise)",
    )
    p.add_argument(
        "--blends",
        type=int,
        default=None,
        metavar="N",
        help="blends of each train image with another one (its own weight 0.5-0.9) the ramps also learn the model's "
        "outputs on, 0-16 (default: 8 for a model whose only input is a float [N, C, H, W] image, 0 otherwise)",
    )
    p.add_argument(
        "--max-samples",
        type=int,
        default=DEFAULT_MAX_SAMPLES,
        metavar="N",
        help="use at most N bootstrap samples: a seeded random subsample of a larger file, copied in chunks, so "
        "the compile's memory does not grow with the file (memory-mapped when written by numpy.savez)",
    )
    p.add_argument("--force", action="store_true", help="replace --out if it already holds an engine directory")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``apparate-compile``; returns (and, as a script, exits with) the exit status."""
    args = build_parser().parse_args(argv)

    def body() -> None:
        from apparate_trt.compiler.pipeline import compile_model  # heavy imports after argument parsing

        compile_model(
            args.model,
            args.data,
            args.out,
            budget=args.budget,
            max_batch=args.max_batch,
            backend=args.backend,
            seed=args.seed,
            output=args.output,
            force=args.force,
            threads=args.threads,
            augment=args.augment,
            blends=args.blends,
            fp16=args.fp16,
            max_samples=args.max_samples,
            log=flush_print,
        )

    return run_main(body)


if __name__ == "__main__":
    sys.exit(main())
