"""Ramps that keep learning, measured: each ramp's releasable share before and after refits.

    python benchmarks/refit_quality.py --engine-dir out/bench/cv --data data/cv/eval.npz \
        [--points 2000,5000,10000] [--test-fraction 0.2] [--target 0.003] \
        [--out benchmarks/results/refit_quality_cv.json] [--plot benchmarks/results/refit_quality_cv.png]

Runs the model (its finest segment chain) and every ramp once over ``--data`` in stream order,
keeping each ramp's pooled features (the ramp graph's ``features`` output) and the model's final
probabilities: what the runtime's reservoirs gather from the rows that reach the model's end.
The last ``--test-fraction`` of the stream is the test set, never trained or judged on. Before it,
each ramp is refitted as the runtime refits an active ramp: every ``--refit-every`` samples,
``ramps.refit.refit_head`` on the newest ``--reservoir`` of them (the runtime's reservoir, the
same share held out on arrival, the same acceptance rule), warm-started from the head serving then,
which the new head replaces when accepted. At each point N of ``--points`` (requests served;
capped at what the stream holds before the test set) the head serving then is measured on the
test set: the releasable share at ``--target`` disagreement (the controller's target for a 1%
constraint is 0.3%) and the agreement with the model.

Prints a table per site (compiled, then each point), the best early ramp's gain (depth <= 0.5,
the issue's goal) and, with ``--out``/``--plot``, writes the figures as JSON and a plot.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx

from apparate_trt.backends import open_runner
from apparate_trt.data import load_inputs, num_samples
from apparate_trt.engine_dir import Manifest, read_manifest
from apparate_trt.errors import ApparateError
from apparate_trt.ramps.fit import target_probabilities
from apparate_trt.ramps.model import head_weights, ramp_forward
from apparate_trt.ramps.quality import head_quality
from apparate_trt.ramps.refit import MIN_GAIN, refit_head
from apparate_trt.runtime.learning.learner import REFIT_EVERY
from apparate_trt.runtime.learning.reservoir import HELDOUT_FRACTION, RESERVOIR_SAMPLES

sys.path.insert(0, str(Path(__file__).resolve().parent))
from workloads import write_figures  # noqa: E402

EARLY_DEPTH = 0.5
"""The issue's "early" ramps: at most half the model's profiled latency before them."""


def stream_features(
    manifest: Manifest, inputs: Mapping[str, np.ndarray], batch: int, threads: int
) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray], np.ndarray]:
    """(features by site [n, D], compiled ramp logits by site [n, classes], final logits [n, classes])."""
    segments = [
        (open_runner(manifest.path(s.file), threads=threads, name=s.file), list(s.outputs), s.ends_at_site)
        for s in manifest.segments
    ]
    ramps = {r.site: (open_runner(manifest.path(r.file), threads=threads, name=r.file), r) for r in manifest.ramps}
    n = num_samples(inputs)
    feats: dict[int, list[np.ndarray]] = {site: [] for site in ramps}
    logits: dict[int, list[np.ndarray]] = {site: [] for site in ramps}
    final: list[np.ndarray] = []
    for lo in range(0, n, batch):
        env = {name: np.ascontiguousarray(a[lo : lo + batch]) for name, a in inputs.items()}
        for runner, outputs, site in segments:
            env.update(runner.run(env, outputs))
            if site is not None and site in ramps:
                runner_, entry = ramps[site]
                out = runner_.run(env, [entry.output, entry.features])
                feats[site].append(np.asarray(out[entry.features], dtype=np.float32))
                logits[site].append(np.asarray(out[entry.output], dtype=np.float32))
        final.append(np.asarray(env[manifest.model.output], dtype=np.float32))
    return (
        {s: np.concatenate(v) for s, v in feats.items()},
        {s: np.concatenate(v) for s, v in logits.items()},
        np.concatenate(final),
    )


def site_depths(manifest: Manifest) -> dict[int, float]:
    """Each site's depth: the profiled latency before it as a share of the whole model's."""
    return {site.id: float(site.depth) for site in manifest.sites if site.depth is not None}


def measure_site(
    kind: str,
    compiled: onnx.ModelProto,
    features: np.ndarray,
    probs: np.ndarray,
    train_end: int,
    points: Sequence[int],
    target: float,
    reservoir: int,
    refit_every: int,
    seed: int,
) -> list[dict[str, object]]:
    """The figures of one ramp at compile time and at each point (see the module doc): the runtime's
    sequence of refits, one every ``refit_every`` samples on the reservoir of the newest
    ``reservoir``, each warm-started from the head serving then and swapped in when accepted."""
    test = slice(train_end, features.shape[0])
    final_pred = probs.argmax(axis=1)
    current = head_weights(compiled, kind)

    def on_test(head: object) -> dict[str, float]:
        return head_quality(ramp_forward(head, features[test]), final_pred[test], target)

    rows: list[dict[str, object]] = [{"served": 0, "refits": 0, "accepted": 0, "refit_s": 0.0, **on_test(current)}]
    heldout_all = np.random.default_rng(seed).random(train_end) < HELDOUT_FRACTION  # marked on arrival
    refits = accepted = 0
    spent = 0.0
    served = refit_every
    for point in points:
        while served <= point:
            lo = max(0, served - reservoir)
            t0 = time.perf_counter()
            try:
                result = refit_head(
                    kind,
                    current,
                    features[lo:served],
                    probs[lo:served],
                    target,
                    heldout=heldout_all[lo:served],
                    min_gain=MIN_GAIN,
                    seed=seed + refits,
                )
            except ValueError:  # too few samples on a side of the split yet: the runtime waits too
                served += refit_every
                continue
            spent += time.perf_counter() - t0
            refits += 1
            if result.accepted and result.weights is not None:
                current, accepted = result.weights, accepted + 1
            served += refit_every
        rows.append(
            {"served": int(point), "refits": refits, "accepted": accepted, "refit_s": spent, **on_test(current)}
        )
    return rows


def parse_points(text: str) -> list[int]:
    try:
        points = sorted({int(p) for p in text.split(",") if p.strip()})
    except ValueError:
        raise ApparateError(
            f"--points must be comma-separated request counts such as 2000,5000; got {text!r}"
        ) from None
    if not points or points[0] < 1:
        raise ApparateError(f"--points must hold positive request counts; got {text!r}")
    return points


def run(args: argparse.Namespace) -> dict[str, object]:
    """Measure every ramp; the JSON-ready figures."""
    manifest = read_manifest(args.engine_dir)
    missing = [r.site for r in manifest.ramps if not r.features]
    if missing:
        raise ApparateError(
            f"ramps {missing} of {args.engine_dir} have no features output; recompile it with apparate-compile"
        )
    inputs = load_inputs(args.data, manifest.model.inputs)
    n = num_samples(inputs)
    train_end = int(round(n * (1.0 - args.test_fraction)))
    requested = parse_points(args.points)
    points = sorted({min(p, train_end) for p in requested})
    print(f"{manifest.model.name}: {n} stream samples; the last {n - train_end} are the test set", flush=True)
    if points[-1] < requested[-1]:
        print(f"  points past {train_end} requests are capped there (the stream before the test set)", flush=True)
    t0 = time.perf_counter()
    feats, _, final_logits = stream_features(manifest, inputs, args.batch, args.threads)
    probs = target_probabilities(final_logits)
    print(f"  stream pass: {time.perf_counter() - t0:.1f} s", flush=True)
    depths = site_depths(manifest)
    sites = []
    for entry in manifest.ramps:
        t1 = time.perf_counter()
        model = onnx.load(str(manifest.path(entry.file)))
        rows = measure_site(
            entry.kind,
            model,
            feats[entry.site],
            probs,
            train_end,
            points,
            args.target,
            args.reservoir,
            args.refit_every,
            args.seed,
        )
        sites.append({"site": entry.site, "kind": entry.kind, "depth": depths.get(entry.site), "rows": rows})
        shares = "  ".join(
            f"{r['served']}: {100 * float(r['share']):5.1f}% ({r['accepted']}/{r['refits']})" for r in rows
        )
        depth = depths.get(entry.site, float("nan"))
        print(f"  site {entry.site:2d} depth {depth:.2f}: {shares}  ({time.perf_counter() - t1:.0f} s)", flush=True)
    return {
        "engine_dir": str(args.engine_dir),
        "data": str(args.data),
        "stream_samples": n,
        "test_samples": n - train_end,
        "target": args.target,
        "reservoir": args.reservoir,
        "refit_every": args.refit_every,
        "points_requested": requested,
        "points": points,
        "sites": sites,
        "summary": summarise(sites, points),
    }


def summarise(sites: Sequence[Mapping[str, object]], points: Sequence[int]) -> dict[str, object]:
    """The best early ramp (depth <= 0.5) at compile time and its gain at each point; the mean gain."""
    early = [s for s in sites if s["depth"] is not None and float(s["depth"]) <= EARLY_DEPTH]

    def share(site: Mapping[str, object], i: int) -> float:
        return float(site["rows"][i]["share"])  # type: ignore[index]

    out: dict[str, object] = {}
    for name, group in (("early", early), ("all", list(sites))):
        if not group:
            continue
        best_compiled = max(group, key=lambda s: share(s, 0))
        out[name] = {
            "best_compiled_site": best_compiled["site"],
            "best_compiled_share": share(best_compiled, 0),
            "best_share_at": {str(p): max(share(s, i + 1) for s in group) for i, p in enumerate(points)},
            "gain_of_best_at": {
                str(p): max(share(s, i + 1) for s in group) - share(best_compiled, 0) for i, p in enumerate(points)
            },
            "mean_gain_at": {
                str(p): float(np.mean([share(s, i + 1) - share(s, 0) for s in group])) for i, p in enumerate(points)
            },
        }
    return out


def plot(figures: Mapping[str, object], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for site in figures["sites"]:  # type: ignore[union-attr]
        xs = [r["served"] for r in site["rows"]]
        ys = [100 * r["share"] for r in site["rows"]]
        early = site["depth"] is not None and site["depth"] <= EARLY_DEPTH
        ax.plot(
            xs,
            ys,
            marker="o",
            lw=1.5 if early else 0.8,
            alpha=1.0 if early else 0.5,
            label=f"site {site['site']} ({site['depth'] or 0:.2f})",
        )
    ax.set_xlabel("requests served (reservoir fed)")
    ax.set_ylabel(f"releasable share at {100 * float(figures['target']):g}% disagreement (%)")
    ax.set_title(f"{Path(str(figures['engine_dir'])).name}: ramp quality on held-out stream samples")
    ax.legend(fontsize=6, ncol=3, title="site (depth)", title_fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--engine-dir", type=Path, required=True, help="engine directory (apparate-compile --out)")
    p.add_argument("--data", type=Path, required=True, help="npz of the served stream, in arrival order")
    p.add_argument("--points", default="2000,5000,10000", help="requests served at which to measure")
    p.add_argument("--test-fraction", type=float, default=0.2, help="share of the stream (its end) held out to test on")
    p.add_argument("--target", type=float, default=0.003, help="disagreement (fraction of inputs) of the share")
    p.add_argument("--reservoir", type=int, default=RESERVOIR_SAMPLES, help="samples a ramp's reservoir keeps")
    p.add_argument("--refit-every", type=int, default=REFIT_EVERY, help="new samples between refits")
    p.add_argument("--batch", type=int, default=64, help="batch size of the stream pass")
    p.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads")
    p.add_argument("--seed", type=int, default=0, help="seeds the held-out marks and the training")
    p.add_argument("--out", type=Path, help="write the figures as JSON here")
    p.add_argument("--plot", type=Path, help="write a plot (PNG) here")
    args = p.parse_args(argv)
    if not 0.0 < args.test_fraction < 1.0:
        p.error(f"--test-fraction must be in (0, 1), got {args.test_fraction}")
    try:
        figures = run(args)
    except ApparateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for name, s in figures["summary"].items():  # type: ignore[union-attr]
        gains = ", ".join(f"{p}: {100 * g:+.1f} points" for p, g in s["gain_of_best_at"].items())
        print(
            f"{name} ramps: best compiled site {s['best_compiled_site']} frees {100 * s['best_compiled_share']:.1f}%; "
            f"the best after refits: {gains}"
        )
    write_figures(figures, args.out, args.plot, plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
