"""What limits the ramps: agreement and releasable share per site, by ramp kind, bootstrap size and exit score.

    python benchmarks/ramp_diagnosis.py --data-dir data/cv --sites 2,4,8,14 \
        [--sizes 1000,4000,20000] [--eval-samples 4000] [--out benchmarks/results/ramp_diagnosis_cv.json]

For each bootstrap size (the first rows of a seeded shuffle of the model's unlabeled
``history.npz``; no near-copies), the compiler's own code learns the per-position stages
(``compiler.prestages``), pools every candidate kind at the chosen sites
(``training.collect_features``) and trains one head per site and kind on the model's outputs
(``ramps.fit.train_head``). Every head is then measured on the first ``--eval-samples`` inputs of
``eval.npz`` (the served stream, never trained on): agreement with the model's argmax, and the
share of all inputs one threshold can release while the wrongly released stay within 0.3% and 1%
of all inputs (``ramps.quality.releasable_share``), for the exit scores max-prob, margin (top-1
minus top-2 probability) and negative entropy. At the largest size, for the best kind per site, a
small learned failure predictor (logistic regression on the three scores and, from the second
chosen site on, the previous chosen site's ramp: its max-prob and whether its argmax agrees) is
fit on out-of-sample ramp outputs (heads trained on half the bootstrap, the predictor on the other
half) and measured the same way. Prints one row per (size, site, kind); ``--out`` writes them.
Site numbers are the compiler's (``apparate-compile`` prints them).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from apparate_trt.compiler.prestages import learn_prestages
from apparate_trt.compiler.sites import find_sites
from apparate_trt.compiler.training import collect_features
from apparate_trt.data import load_inputs, num_samples, take
from apparate_trt.graph.ingest import load_model, model_io, score_output
from apparate_trt.ramps.fit import HeadTraining, target_probabilities, train_head
from apparate_trt.ramps.model import candidate_kinds, find_mask_input, ramp_forward, softmax
from apparate_trt.ramps.quality import releasable_share

LEVELS = (0.003, 0.01)


def exit_scores(probs: np.ndarray) -> dict[str, np.ndarray]:
    """Confidence scores of ramp probabilities [N, K] (higher = surer): max-prob, margin, -entropy."""
    top = np.sort(probs, axis=1)
    return {
        "maxprob": top[:, -1],
        "margin": top[:, -1] - top[:, -2],
        "neg_entropy": (probs * np.log(np.maximum(probs, 1e-12))).sum(axis=1),
    }


def shares(score: np.ndarray, agree: np.ndarray) -> list[float]:
    return [round(releasable_share(score, agree, level), 4) for level in LEVELS]


def predictor_inputs(probs: np.ndarray, previous: np.ndarray | None) -> np.ndarray:
    """The failure predictor's inputs: the exit scores, and the previous ramp's max-prob and agreement."""
    cols = list(exit_scores(probs).values())
    if previous is not None:
        cols += [previous.max(axis=1), (previous.argmax(axis=1) == probs.argmax(axis=1)).astype(np.float32)]
    return np.stack(cols, axis=1).astype(np.float64)


def fit_logistic(x: np.ndarray, y: np.ndarray, steps: int = 500, lr: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Logistic regression by gradient descent on standardised inputs; returns (mean, std, w) folded as (w, b)."""
    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-9
    z = (x - mean) / std
    w, b = np.zeros(z.shape[1]), 0.0
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-(z @ w + b)))
        w -= lr * (z.T @ (p - y) / len(y) + 1e-4 * w)
        b -= lr * float((p - y).mean())
    return w / std, np.array([b - float((mean / std) @ w)])


def head_probs(train_x, train_probs, kind, classes, eval_x, seed) -> np.ndarray:
    head = train_head(train_x, train_probs.argmax(axis=1), train_probs, kind, classes, HeadTraining(), seed)
    return softmax(ramp_forward(head, eval_x))


def diagnose(args: argparse.Namespace) -> list[dict]:
    model = load_model(args.data_dir / "model.onnx")
    inputs_info, _ = model_io(model)
    score_name, classes = score_output(model, None)
    mask = find_mask_input(inputs_info)
    all_sites = find_sites(model)
    chosen = [int(s) for s in args.sites.split(",")]
    sites = [all_sites[i] for i in chosen]
    candidates = [candidate_kinds(s.shape, mask.name if mask else None) for s in sites]
    history = load_inputs(args.data_dir / "history.npz", inputs_info, what="history")
    evaluation = take(load_inputs(args.data_dir / "eval.npz", inputs_info, what="eval"), slice(0, args.eval_samples))
    order = np.random.default_rng(0).permutation(num_samples(history))
    quiet = {"mask": mask.name if mask else None, "threads": args.threads, "log": lambda line: None}
    rows: list[dict] = []
    sizes = sorted({min(int(s), order.size) for s in args.sizes.split(",")})
    for size in sizes:
        boot = take(history, np.sort(order[:size]))
        t0 = time.perf_counter()
        stages = learn_prestages(model, sites, candidates, boot, score_name, **quiet)
        feats = collect_features(model, sites, candidates, boot, score_name, prestages=stages, **quiet)
        evals = collect_features(model, sites, candidates, evaluation, score_name, prestages=stages, **quiet)
        probs = target_probabilities(feats.final_scores)
        final = evals.final_pred
        best: dict[int, tuple[str, float]] = {}
        for pos in range(len(sites)):
            for kind, x in feats.pooled[pos].items():
                p = head_probs(x, probs, kind, classes, evals.pooled[pos][kind], seed=pos)
                agree = p.argmax(axis=1) == final
                row = {"size": size, "site": chosen[pos], "kind": kind, "agreement": round(float(agree.mean()), 4)}
                for name, score in exit_scores(p).items():
                    row[name] = shares(score, agree)
                rows.append(row)
                print(json.dumps(row), flush=True)
                if row["maxprob"][0] > best.get(pos, ("", -1.0))[1]:
                    best[pos] = (kind, row["maxprob"][0])
        print(f"# size {size}: {time.perf_counter() - t0:.0f} s", flush=True)
        if size == max(sizes):
            rows += learned_predictor(feats, evals, probs, final, best, chosen, classes)
    return rows


def learned_predictor(feats, evals, probs, final, best, chosen, classes) -> list[dict]:
    """The learned failure predictor's rows (see the module docstring)."""
    n = probs.shape[0]
    half = np.random.default_rng(1).permutation(n)
    fit, cal = np.sort(half[: n // 2]), np.sort(half[n // 2 :])
    rows, previous = [], None
    for pos in sorted(best):
        kind = best[pos][0]
        x, xe = feats.pooled[pos][kind], evals.pooled[pos][kind]
        p_cal = head_probs(x[fit], probs[fit], kind, classes, x[cal], seed=pos)
        p_eval = head_probs(x[fit], probs[fit], kind, classes, xe, seed=pos)
        agree_cal = (p_cal.argmax(axis=1) == probs[cal].argmax(axis=1)).astype(np.float64)
        prev_cal, prev_eval = (None, None) if previous is None else previous
        w, b = fit_logistic(predictor_inputs(p_cal, prev_cal), agree_cal)
        learned = predictor_inputs(p_eval, prev_eval) @ w + b[0]
        agree = p_eval.argmax(axis=1) == final
        row = {
            "size": n,
            "site": chosen[pos],
            "kind": kind,
            "score": "learned",
            "agreement": round(float(agree.mean()), 4),
        }
        row["learned"], row["maxprob"] = shares(learned, agree), shares(p_eval.max(axis=1), agree)
        rows.append(row)
        print(json.dumps(row), flush=True)
        previous = (p_cal, p_eval)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", type=Path, required=True, help="model.onnx, history.npz and eval.npz")
    p.add_argument("--sites", required=True, help="comma-separated site numbers, shallow to deep")
    p.add_argument("--sizes", default="1000,4000,20000", help="comma-separated bootstrap sizes")
    p.add_argument("--eval-samples", type=int, default=4000, help="first inputs of eval.npz to measure on")
    p.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads")
    p.add_argument("--out", type=Path, help="write the rows as JSON here")
    args = p.parse_args(argv)
    rows = diagnose(args)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"command": " ".join(sys.argv), "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
