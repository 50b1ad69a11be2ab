"""What bounds a ramp's agreement with the model: its capacity or the unlabeled data it learns from.

    python benchmarks/ramp_ceiling.py --data-dir data/cv --sites 4,14 \
        [--sizes 2500,5000,10000,20000] [--epochs 20] [--eval-samples 4000] \
        [--out benchmarks/results/ramp_ceiling_cv.json]

For each chosen site, the raw site tensor of the model's ``history.npz`` (its unlabeled inputs;
a size of N takes the first N rows in file order, among those of a seeded shuffle of the largest
size, so a history must be stored in random order, as ``scripts/build_real_models.py`` writes it)
and of the first ``--eval-samples`` inputs of ``eval.npz``
(the served stream, never trained on) is collected with the model's own outputs. Heads of
growing capacity are trained on it with the model's probabilities as targets, from pooled-then-
dense (what a small ramp is) to a wide 1x1 convolution (or per-token dense layer) with an
activation at every position before the pooling, and a dense layer over the whole flattened
tensor. Each row gives the head's parameters, its agreement with the model's argmax on (a part
of) the rows it trained on and on the stream, and the share of the stream one max-prob threshold
releases at 0.3% and 1% disagreement (``ramps.quality.releasable_share``).

Reading it: where agreement on the training rows is far above the stream's, the head generalises
poorly and more data, not capacity, is what it lacks; where the two are close and stay so as
capacity grows, the site's information bounds it. These are diagnostic heads (``torch`` here), not
the compiler's ramp kinds; they take seconds to minutes each on 2 cores. Needs torch (``train``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from apparate_trt.backends import open_runner
from apparate_trt.compiler.sites import find_sites
from apparate_trt.data import load_inputs, num_samples, take
from apparate_trt.graph.ingest import load_model, model_io, score_output
from apparate_trt.graph.split import with_extra_outputs
from apparate_trt.ramps.fit import target_probabilities
from apparate_trt.ramps.model import find_mask_input
from apparate_trt.ramps.quality import releasable_share

LEVELS = (0.003, 0.01)
TRAIN_CHECK_ROWS = 4000  # training rows on which the train agreement is measured


def site_tensors(model: Any, tensors: list[str], score: str, inputs: dict[str, np.ndarray], threads: int):
    """({tensor: float32 [N, ...]}, the model's probabilities [N, K]) for ``inputs``, in batches of 128."""
    runner = open_runner(with_extra_outputs(model, tensors), threads=threads, name="the model with site outputs")
    acts: dict[str, list[np.ndarray]] = {t: [] for t in tensors}
    scores = []
    n = num_samples(inputs)
    for begin in range(0, n, 128):
        out = runner.run(dict(take(inputs, slice(begin, begin + 128))), outputs=[score, *tensors])
        scores.append(np.asarray(out[score], np.float32).reshape(out[score].shape[0], -1))
        for t in tensors:
            acts[t].append(np.asarray(out[t], np.float32))
    return {t: np.concatenate(v) for t, v in acts.items()}, target_probabilities(np.concatenate(scores))


def heads(rank: int, channels: int, positions: int, classes: int) -> dict[str, Any]:
    """Diagnostic head families by growing capacity for a site of ``rank`` 4 ([N, C, H, W]) or 3
    ([N, S, H]: masked mean over tokens; the mask comes as a second argument)."""
    import torch

    nn = torch.nn

    class Head(nn.Module):
        def __init__(self, width: int, flat: bool = False) -> None:
            super().__init__()
            self.flat = flat
            self.stage = nn.Linear(channels, width) if width else None
            d = channels * positions if flat else (width or channels)
            self.mlp = nn.Sequential(nn.Linear(d, 256), nn.ReLU(), nn.Linear(256, classes))

        def forward(self, x: Any, mask: Any = None) -> Any:
            x = x.flatten(2).transpose(1, 2) if rank == 4 else x  # [n, positions, channels]
            if self.flat:
                return self.mlp(x.flatten(1))
            if self.stage is not None:
                x = torch.relu(self.stage(x))
            if mask is None:
                return self.mlp(x.mean(dim=1))
            m = mask[:, :, None]
            return self.mlp((x * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0))

    families = {"pool_mlp": lambda: Head(0), "stage256_pool_mlp": lambda: Head(256)}
    families["stage1024_pool_mlp"] = lambda: Head(1024)
    if rank == 4 and channels * positions <= 16384:
        families["flatten_mlp"] = lambda: Head(0, flat=True)
    return families


def train_and_measure(make: Any, x: np.ndarray, p: np.ndarray, xe: np.ndarray, final: np.ndarray, **kw: Any) -> dict:
    """Train one head with soft targets ``p``; its figures on the training rows and the stream."""
    import torch

    torch.manual_seed(0)
    mask, mask_e, epochs = kw["mask"], kw["mask_eval"], kw["epochs"]
    net = make()
    xt, pt = torch.from_numpy(x), torch.from_numpy(p)
    mt = None if mask is None else torch.from_numpy(mask.astype(np.float32))
    batch = min(256, len(xt))
    steps = epochs * (len(xt) // batch)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    t0, done = time.perf_counter(), 0
    while done < steps:
        order = torch.randperm(len(xt))
        for begin in range(0, len(xt) - batch + 1, batch):
            if done == steps:
                break
            idx = order[begin : begin + batch]
            out = net(xt[idx], None if mt is None else mt[idx])
            loss = -(pt[idx] * torch.log_softmax(out, dim=1)).sum(dim=1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            done += 1
    net.eval()
    with torch.no_grad():
        k = min(TRAIN_CHECK_ROWS, len(xt))
        train_pred = net(xt[:k], None if mt is None else mt[:k]).argmax(dim=1).numpy()
        probs = torch.softmax(net(torch.from_numpy(xe), None if mask_e is None else torch.from_numpy(mask_e)), 1)
    probs_np = probs.numpy()
    agree = probs_np.argmax(axis=1) == final
    return {
        "params": int(sum(q.numel() for q in net.parameters())),
        "train_agreement": round(float(np.mean(train_pred == p[:k].argmax(axis=1))), 4),
        "agreement": round(float(agree.mean()), 4),
        "releasable": [round(releasable_share(probs_np.max(axis=1), agree, lvl), 4) for lvl in LEVELS],
        "train_s": round(time.perf_counter() - t0, 1),
    }


def measure(args: argparse.Namespace) -> list[dict]:
    model = load_model(args.data_dir / "model.onnx")
    inputs_info, _ = model_io(model)
    score, classes = score_output(model, None)
    mask_spec = find_mask_input(inputs_info)
    all_sites = find_sites(model)
    chosen = [int(s) for s in args.sites.split(",")]
    bad = [s for s in chosen if not 0 <= s < len(all_sites)]
    if bad:
        raise SystemExit(f"error: --sites {bad} not in 0..{len(all_sites) - 1} (the compiler's site numbers)")
    import torch

    torch.set_num_threads(args.threads)
    sizes = sorted({int(s) for s in args.sizes.split(",")})
    history = load_inputs(args.data_dir / "history.npz", inputs_info, what="history")
    order = np.random.default_rng(0).permutation(num_samples(history))[: max(sizes)]
    history = take(history, np.sort(order))
    evaluation = take(load_inputs(args.data_dir / "eval.npz", inputs_info, what="eval"), slice(0, args.eval_samples))
    rows = []
    for site in chosen:
        tensor = all_sites[site].tensor
        t0 = time.perf_counter()
        acts, probs = site_tensors(model, [tensor], score, history, args.threads)
        acts_e, probs_e = site_tensors(model, [tensor], score, evaluation, args.threads)
        x, xe = acts[tensor], acts_e[tensor]
        print(f"# site {site} {list(x.shape[1:])}: collected in {time.perf_counter() - t0:.0f} s", flush=True)
        mean = x.mean(axis=tuple(i for i in range(x.ndim) if i != (1 if x.ndim == 4 else 2)), keepdims=True)
        std = x.std(axis=tuple(i for i in range(x.ndim) if i != (1 if x.ndim == 4 else 2)), keepdims=True) + 1e-3
        x, xe = (x - mean) / std, (xe - mean) / std
        mask = np.asarray(history[mask_spec.name]) if mask_spec is not None and x.ndim == 3 else None
        mask_e = np.asarray(evaluation[mask_spec.name], np.float32) if mask is not None else None
        channels = x.shape[1] if x.ndim == 4 else x.shape[2]
        positions = int(np.prod(x.shape[2:])) if x.ndim == 4 else x.shape[1]
        for name, make in heads(x.ndim, channels, positions, classes).items():
            for size in sizes:
                n = min(size, x.shape[0])
                row = {"site": site, "head": name, "size": n, "epochs": args.epochs}
                row |= train_and_measure(
                    make,
                    x[:n],
                    probs[:n],
                    xe,
                    probs_e.argmax(axis=1),
                    mask=None if mask is None else mask[:n],
                    mask_eval=mask_e,
                    epochs=args.epochs,
                )
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", type=Path, required=True, help="model.onnx, history.npz and eval.npz")
    p.add_argument("--sites", required=True, help="comma-separated site numbers (the compiler's)")
    p.add_argument("--sizes", default="2500,5000,10000,20000", help="comma-separated training sizes (rows)")
    p.add_argument("--epochs", type=int, default=20, help="passes over the training rows per head (default 20)")
    p.add_argument("--eval-samples", type=int, default=4000, help="first inputs of eval.npz to measure on")
    p.add_argument("--threads", type=int, default=2, help="ONNX Runtime and torch threads (default 2)")
    p.add_argument("--out", type=Path, help="write the rows as JSON here")
    args = p.parse_args(argv)
    if args.epochs < 1 or args.eval_samples < 16:
        raise SystemExit("error: --epochs must be >= 1 and --eval-samples >= 16")
    rows = measure(args)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"command": " ".join(sys.argv), "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
