"""The GPU check (issue 19): everything of the GPU path that needs a GPU, in one command, within 10 minutes.

    python benchmarks/gpu_check.py [--model data/cv/model.onnx] [--bootstrap data/cv/bootstrap.npz] \
        [--eval data/cv/eval.npz] [--work DIR] [--out benchmarks/results/gpu_check.json] [--budget-s 540]

Steps, each reported as ran / failed / not run (with why), then a summary:

1. environment: the GPU (cuda-bindings), TensorRT, Polygraphy, ONNX Runtime's providers;
2. cuda-bindings: a pinned host buffer, a device buffer, a stream and an event through the helpers
   the TensorRT runner uses (round trip of 1 MB checked byte for byte), runs without TensorRT;
3. compile: ``apparate-compile --backend tensorrt`` of the real CV model (``--augment 0 --blends 0``
   to fit the time) into ``--work``: every segment's, ramp's and the model's engine;
4. correctness: the chained engines (every site active, thresholds 0: nothing exits) against the
   ONNX segments on ONNX Runtime CPU on the same eval samples: max |logit difference| and top-1
   agreement of the final output and of every ramp's confidence;
5. chain benchmark: median batch latency (ms) of vanilla (the model's engine) and the chain with 1
   and 2 active ramps that never exit, in interleaved rounds, at batch 1 and 8;
6. replay: ``apparate-run --backend tensorrt --compare-vanilla`` on 2,000 eval samples;
7. onnxruntime-gpu: the same correctness check on ONNX Runtime's CUDA provider, where installed.

Every figure it prints is measured in this run. Exit status 0 when every step that could run passed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
Result = dict


def _step(results: list[Result], name: str, fn: Callable[[], dict], deadline: float) -> dict | None:
    """Run one step, record ran/failed/not run, print it; returns its figures (None unless it ran)."""
    if time.monotonic() > deadline:
        results.append({"step": name, "status": "not run", "why": "the time budget was spent"})
        print(f"[{name}] not run: the time budget was spent", flush=True)
        return None
    t0 = time.monotonic()
    print(f"[{name}] ...", flush=True)
    try:
        figures = fn()
    except _NotRunnable as exc:
        results.append({"step": name, "status": "not run", "why": str(exc)})
        print(f"[{name}] not run: {exc}", flush=True)
        return None
    except Exception as exc:  # noqa: BLE001 - the check reports every failure and goes on
        results.append({"step": name, "status": "failed", "why": f"{type(exc).__name__}: {exc}"})
        print(f"[{name}] FAILED: {type(exc).__name__}: {exc}", flush=True)
        traceback.print_exc()
        return None
    seconds = round(time.monotonic() - t0, 1)
    results.append({"step": name, "status": "ran", "seconds": seconds, **figures})
    print(f"[{name}] ran in {seconds} s: {json.dumps(figures)}", flush=True)
    return figures


class _NotRunnable(Exception):
    """A step this machine cannot run (the message says why)."""


def environment() -> dict:
    import onnxruntime as ort

    from apparate_trt.backends.tensorrt import unavailable_reason

    info: dict = {"onnxruntime": ort.__version__, "providers": ort.get_available_providers()}
    try:
        from cuda.bindings import runtime as cudart

        from apparate_trt.backends.tensorrt import cuda_call

        props = cuda_call(cudart, cudart.cudaGetDeviceProperties(0))
        name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
        info["gpu"] = name.rstrip("\x00")
        info["compute_capability"] = f"{props.major}.{props.minor}"
    except Exception as exc:  # noqa: BLE001
        info["gpu"] = f"none ({type(exc).__name__}: {exc})"
    for module in ("tensorrt", "polygraphy"):
        try:
            info[module] = __import__(module).__version__
        except Exception as exc:  # noqa: BLE001
            info[module] = f"missing ({type(exc).__name__})"
    info["tensorrt_backend"] = unavailable_reason() or "available"
    return info


def cuda_round_trip() -> dict:
    try:
        from cuda.bindings import runtime as cudart
    except ImportError as exc:
        raise _NotRunnable(f"cuda-bindings is not installed ({exc})") from None
    from apparate_trt.backends.tensorrt import _Pinned, cuda_call

    if cuda_call(cudart, cudart.cudaGetDeviceCount()) == 0:
        raise _NotRunnable("no NVIDIA GPU is visible")
    nbytes = 1 << 20
    src, dst = _Pinned(cudart, nbytes), _Pinned(cudart, nbytes)
    device = cuda_call(cudart, cudart.cudaMalloc(nbytes))
    stream = cuda_call(cudart, cudart.cudaStreamCreateWithFlags(cudart.cudaStreamNonBlocking))
    event = cuda_call(cudart, cudart.cudaEventCreateWithFlags(cudart.cudaEventDisableTiming))
    try:
        data = np.random.default_rng(0).integers(0, 255, nbytes, dtype=np.uint8)
        src.view((nbytes,), "uint8")[...] = data
        t0 = time.perf_counter()
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        cuda_call(cudart, cudart.cudaMemcpyAsync(device, src.ptr, nbytes, h2d, stream))
        cuda_call(cudart, cudart.cudaMemcpyAsync(dst.ptr, device, nbytes, d2h, stream))
        cuda_call(cudart, cudart.cudaEventRecord(event, stream))
        cuda_call(cudart, cudart.cudaEventSynchronize(event))
        ms = (time.perf_counter() - t0) * 1e3
        same = bool(np.array_equal(dst.view((nbytes,), "uint8"), data))
    finally:
        cudart.cudaFree(device)
        cudart.cudaStreamDestroy(stream)
        cudart.cudaEventDestroy(event)
        src.free()
        dst.free()
    if not same:
        raise AssertionError("the 1 MB round trip through pinned memory changed the bytes")
    return {"round_trip_1mb_ms": round(ms, 3), "bytes_equal": same}


def _require_tensorrt() -> None:
    from apparate_trt.compiler.pipeline import tensorrt_build_problem

    problem = tensorrt_build_problem()
    if problem:
        raise _NotRunnable(f"TensorRT cannot build here ({problem})")


def compile_engines(model: Path, bootstrap: Path, engine_dir: Path, timeout_s: float) -> dict:
    _require_tensorrt()
    for path in (model, bootstrap):
        if not path.is_file():
            raise _NotRunnable(f"{path} is missing: build the real models with make models")
    cmd = [
        *(sys.executable, "-m", "apparate_trt.cli.compile", str(model)),
        *("--data", str(bootstrap), "--out", str(engine_dir), "--backend", "tensorrt", "--force"),
        *("--augment", "0", "--blends", "0", "--max-batch", "16"),
    ]
    t0 = time.monotonic()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    print(done.stdout[-4000:], done.stderr[-2000:], sep="\n", flush=True)
    if done.returncode != 0:
        raise RuntimeError(f"apparate-compile exited {done.returncode}: {done.stderr.strip().splitlines()[-1:]}")
    from apparate_trt.backends.trt_layout import built_keys

    keys = built_keys(engine_dir)
    record = next(iter(keys.values()))
    if isinstance(record, Exception):
        raise RuntimeError(f"the engine directory's TensorRT folder does not read back: {record}")
    return {
        "compile_s": round(time.monotonic() - t0, 1),
        "key": list(keys),
        "engines": 1 + len(record.segments) + len(record.ramps),
        "engine_build_s": record.build_s,
        "precision": record.precision,
    }


def _eval_batch(eval_npz: Path, manifest, count: int) -> dict[str, np.ndarray]:
    from apparate_trt.data import load_inputs, take

    return take(load_inputs(eval_npz, manifest.model.inputs), slice(0, count))


def correctness(engine_dir: Path, eval_npz: Path, backend_name: str) -> dict:
    from apparate_trt.engine_dir import read_manifest
    from apparate_trt.runtime.executor import Executor
    from apparate_trt.runtime.serving_backend import choose_backend

    if backend_name == "tensorrt":
        _require_tensorrt()
    else:
        from apparate_trt.backends.ort_device import cuda_provider_missing

        problem = cuda_provider_missing()
        if problem:
            raise _NotRunnable(f"ONNX Runtime has no CUDA provider here ({problem}); pip install onnxruntime-gpu")
    if not (engine_dir / "manifest.json").is_file():
        raise _NotRunnable(f"no engine directory at {engine_dir}: compile one (apparate-compile, or make demo)")
    manifest = read_manifest(engine_dir)
    sites = [s.id for s in manifest.sites]
    cpu = Executor(manifest, threads=None)
    gpu = Executor(manifest, threads=None, backend=choose_backend(manifest, backend_name))
    figures: dict = {"samples": 0}
    diffs, agree, conf_diffs = [], [], []
    try:
        for ex in (cpu, gpu):
            ex.configure(sites, [0.0] * len(sites), wait=True)
        data = _eval_batch(eval_npz, manifest, 256)
        for start in range(0, 256, 16):
            batch = {k: v[start : start + 16] for k, v in data.items()}
            a = cpu.run_batch(batch, lambda *x, **k: None)
            b = gpu.run_batch(batch, lambda *x, **k: None)
            diffs.append(float(np.abs(a.final_logits - b.final_logits).max()))
            agree.append(float(np.mean(a.final_pred == b.final_pred)))
            conf_diffs.append(float(np.abs(a.confidence - b.confidence).max()))
            figures["samples"] += batch[next(iter(batch))].shape[0]
    finally:
        cpu.close()
        gpu.close()
    figures.update(
        max_abs_logit_diff=round(max(diffs), 5),
        top1_agreement=round(float(np.mean(agree)), 4),
        max_abs_ramp_confidence_diff=round(max(conf_diffs), 5),
        ramps_checked=len(sites),
    )
    if figures["top1_agreement"] < 0.99:
        raise AssertionError(f"the chained engines agree with ONNX Runtime CPU on only {figures['top1_agreement']:.1%}")
    return figures


def chain_benchmark(engine_dir: Path, eval_npz: Path, rounds: int = 100) -> dict:
    _require_tensorrt()
    from apparate_trt.engine_dir import read_manifest
    from apparate_trt.runtime.executor import Executor
    from apparate_trt.runtime.serving_backend import choose_backend

    manifest = read_manifest(engine_dir)
    sites = [s.id for s in manifest.sites]
    plans = {
        "vanilla": [],
        "1 ramp": [sites[len(sites) // 2]],
        "2 ramps": [sites[len(sites) // 3], sites[2 * len(sites) // 3]],
    }
    executors = {}
    for label, active in plans.items():
        executors[label] = Executor(manifest, backend=choose_backend(manifest, "tensorrt"))
        if active:
            executors[label].configure(active, [0.0] * len(active), wait=True)
    figures: dict = {}
    try:
        for b in (1, 8):
            batch = _eval_batch(eval_npz, manifest, b)
            times = {label: [] for label in plans}
            for ex in executors.values():
                for _ in range(10):
                    ex.run_batch(batch, lambda *x, **k: None)
            for _ in range(rounds):
                for label, ex in executors.items():
                    t0 = time.perf_counter()
                    ex.run_batch(batch, lambda *x, **k: None)
                    times[label].append((time.perf_counter() - t0) * 1e3)
            medians = {label: float(np.median(t)) for label, t in times.items()}
            figures[f"batch {b}"] = {
                **{f"{label} ms": round(ms, 3) for label, ms in medians.items()},
                **{
                    f"{label} / vanilla": round(medians[label] / medians["vanilla"], 3)
                    for label in plans
                    if label != "vanilla"
                },
            }
    finally:
        for ex in executors.values():
            ex.close()
    return figures


def replay(engine_dir: Path, eval_npz: Path, timeout_s: float) -> dict:
    _require_tensorrt()
    report = engine_dir.parent / "gpu_replay.json"
    cmd = [
        *(sys.executable, "-m", "apparate_trt.cli.run", "--engine-dir", str(engine_dir), "--data", str(eval_npz)),
        *("--backend", "tensorrt", "--limit", "2000", "--arrivals", "poisson:400", "--quiet", "--compare-vanilla"),
        *("--report", str(report)),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    print(done.stdout[-4000:], done.stderr[-2000:], sep="\n", flush=True)
    if done.returncode != 0:
        raise RuntimeError(f"apparate-run exited {done.returncode}: {done.stderr.strip().splitlines()[-1:]}")
    data = json.loads(report.read_text())
    return {
        "backend": data["settings"].get("backend"),
        "completed": data.get("completed"),
        "accuracy": data.get("accuracy"),
        "latency_ms": data.get("latency_ms"),
        "comparison": data.get("comparison"),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", type=Path, default=ROOT / "data/cv/model.onnx")
    p.add_argument("--bootstrap", type=Path, default=ROOT / "data/cv/bootstrap.npz")
    p.add_argument("--eval", type=Path, default=ROOT / "data/cv/eval.npz")
    p.add_argument("--work", type=Path, default=None, help="where the engine directory goes (default: a temp dir)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/gpu_check.json")
    p.add_argument("--budget-s", type=float, default=540.0, help="stop starting steps after this many seconds")
    args = p.parse_args(argv)
    start = time.monotonic()
    deadline = start + args.budget_s
    work = args.work or Path(tempfile.mkdtemp(prefix="apparate-gpu-check-"))
    engine_dir = work / "cv_trt"
    results: list[Result] = []
    _step(results, "environment", environment, deadline)
    _step(results, "cuda-bindings round trip", cuda_round_trip, deadline)
    compiled = _step(
        results,
        "compile with TensorRT engines",
        lambda: compile_engines(args.model, args.bootstrap, engine_dir, max(30.0, deadline - time.monotonic() - 120)),
        deadline,
    )

    def needs_engines(fn: Callable[[], dict]) -> Callable[[], dict]:
        def run() -> dict:
            if compiled is None:
                raise _NotRunnable("no TensorRT engine directory (the compile step did not run)")
            return fn()

        return run

    _step(
        results,
        "chained engines vs ONNX Runtime CPU",
        needs_engines(lambda: correctness(engine_dir, args.eval, "tensorrt")),
        deadline,
    )
    _step(results, "chain benchmark", needs_engines(lambda: chain_benchmark(engine_dir, args.eval)), deadline)
    _step(
        results,
        "replay beside vanilla",
        needs_engines(lambda: replay(engine_dir, args.eval, max(30.0, deadline - time.monotonic()))),
        deadline,
    )
    onnx_dir = engine_dir if compiled is not None else ROOT / "out/cv"
    _step(
        results,
        "onnxruntime-gpu vs ONNX Runtime CPU",
        lambda: correctness(onnx_dir, args.eval, "onnxruntime-gpu"),
        deadline,
    )
    summary = {"seconds": round(time.monotonic() - start, 1), "steps": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print("\nsummary:")
    for r in results:
        print(f"  {r['step']}: {r['status']}" + (f" ({r['why']})" if "why" in r else ""))
    print(f"written: {args.out} ({summary['seconds']} s)")
    return 1 if any(r["status"] == "failed" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
