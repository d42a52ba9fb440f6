"""Text classification with the default spec: accuracy with its 95% CI, the bag-of-words baseline
(TF-IDF + logistic regression on the same test texts) and training speed in tokens per second.

Two corpora:

- ``synthetic``: templated sentences of filler words holding both "good" and "bad" once; the label is
  the one that comes first, 20-40 words before the other and far from the end. Both classes have
  the same bag of words, so a bag-of-words model cannot beat chance; an RNN must carry the first
  keyword across the sentence. Goal (issue #17): the RNN beats bag-of-words by >= 10 points.
- ``vader``: the 10,605 movie-review snippets (Pang & Lee sentences, each rated by 10 people from -4
  to +4) that the ``vaderSentiment`` source distribution on PyPI ships in
  ``additional_resources/hutto_ICWSM_2014.tar.gz`` (``movieReviewSnippets_GroundTruth.txt``). The
  label is the sign of the mean rating; snippets rated within ±0.5 of neutral are dropped. The
  sdist is fetched once with ``pip download --no-deps --no-binary :all:`` into ``.bench/sdists``
  (git-ignored) and read straight from the archive.

    python bench/text.py [--corpus synthetic|vader|both] [--n 3000] [--seed 0] [--device cpu]
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SDISTS = ROOT / ".bench" / "sdists"
VADER = "vaderSentiment==3.3.2"
FILLER = [
    "the",
    "a",
    "movie",
    "film",
    "story",
    "plot",
    "actor",
    "scene",
    "was",
    "is",
    "and",
    "of",
    "to",
    "in",
    "it",
    "that",
    "this",
    "with",
    "as",
    "for",
    "its",
    "on",
    "but",
    "at",
    "by",
    "an",
    "be",
    "are",
    "from",
    "has",
    "his",
    "her",
    "they",
    "one",
    "all",
    "about",
    "more",
    "who",
    "so",
    "what",
    "when",
    "which",
    "out",
    "up",
]


def synthetic_corpus(n: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for i in range(n):
        first, second = ("good", "bad") if i % 2 else ("bad", "good")
        middle = list(rng.choice(FILLER, int(rng.integers(20, 41))))
        tail = list(rng.choice(FILLER, int(rng.integers(0, 6))))
        head = list(rng.choice(FILLER, int(rng.integers(0, 3))))
        texts.append(" ".join([*head, first, *middle, second, *tail]))
        labels.append("first_good" if first == "good" else "first_bad")
    return pa.table({"text": texts, "label": labels})


def vader_corpus(n: int, seed: int) -> pa.Table:
    SDISTS.mkdir(parents=True, exist_ok=True)
    found = sorted(SDISTS.glob("vaderSentiment-*.tar.gz"))
    if not found:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--no-binary",
                ":all:",
                "-q",
                "-d",
                str(SDISTS),
                VADER,
            ],
            check=True,
        )
        found = sorted(SDISTS.glob("vaderSentiment-*.tar.gz"))
    with tarfile.open(found[-1]) as sdist:
        inner = next(m for m in sdist.getmembers() if m.name.endswith("hutto_ICWSM_2014.tar.gz"))
        blob = sdist.extractfile(inner).read()  # type: ignore[union-attr]
    with tarfile.open(fileobj=io.BytesIO(blob)) as resources:
        member = next(m for m in resources.getmembers() if m.name.endswith("movieReviewSnippets_GroundTruth.txt"))
        lines = resources.extractfile(member).read().decode("utf-8", errors="replace").splitlines()  # type: ignore[union-attr]
    texts, labels = [], []
    for line in lines:
        parts = line.split("\t")
        if len(parts) < 3 or abs(float(parts[1])) < 0.5:
            continue
        texts.append(parts[2].replace("''", '"'))
        labels.append("positive" if float(parts[1]) > 0 else "negative")
    rows = np.random.default_rng(seed).permutation(len(texts))[:n]
    return pa.table({"text": [texts[i] for i in rows], "label": [labels[i] for i in rows]})


def run(name: str, table: pa.Table, seed: int, device: str, model: dict[str, Any] | None = None) -> dict[str, Any]:
    from worker.engine import JobSpec, train_and_evaluate

    spec = JobSpec.model_validate(
        {
            "dataset_id": name,
            "task": "classification",
            "data": {"layout": "text", "target": "label"},
            "text": {"column": "text"},
            "model": model or {},
            "training": {"seed": seed},
            "evaluation": {"attribution": False},
            "device": device,
        }
    )
    started = time.perf_counter()
    result = train_and_evaluate(spec, table)
    wall = time.perf_counter() - started
    e = result.evaluation
    assert e is not None
    max_length = result.artifact["text"]["max_length"]
    train_tokens = sum(min(len(t.split()), max_length) for t in table.column("text").to_pylist()) * (
        result.num_examples["train"] / table.num_rows
    )  # words as a stand-in for tokens (the word tokenizer also splits punctuation off)
    return {
        "corpus": name,
        "texts": table.num_rows,
        "test_texts": result.num_examples["test"],
        "accuracy": e.metrics["test"]["accuracy"],
        "ci": e.interval("accuracy"),
        "tfidf_logistic": e.baselines["tfidf_logistic"]["accuracy"],
        "majority_class": e.baselines["majority_class"]["accuracy"],
        "epochs": result.epochs_run,
        "train_seconds": result.train_seconds,
        "tokens_per_second": train_tokens * result.epochs_run / max(result.train_seconds, 1e-9),
        "wall_seconds": wall,
        "spec": result.artifact["spec"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", choices=["synthetic", "vader", "both"], default="both")
    parser.add_argument("--n", type=int, default=3000, help="texts per corpus")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--pooling", choices=["last", "mean", "max"], help="override model.pooling (default: the spec's)"
    )
    args = parser.parse_args()
    corpora = ["synthetic", "vader"] if args.corpus == "both" else [args.corpus]
    for name in corpora:
        table = synthetic_corpus(args.n, args.seed) if name == "synthetic" else vader_corpus(args.n, args.seed)
        r = run(name, table, args.seed, args.device, {"pooling": args.pooling} if args.pooling else None)
        low, high = r["ci"] or (float("nan"), float("nan"))
        gap = 100 * (r["accuracy"] - r["tfidf_logistic"])
        print(
            f"{name}: {r['texts']} texts ({r['test_texts']} test) | RNN accuracy {r['accuracy']:.3f} "
            f"[95% CI {low:.3f}, {high:.3f}] | bag-of-words (TF-IDF + logistic) {r['tfidf_logistic']:.3f} | "
            f"majority {r['majority_class']:.3f} | RNN - bag-of-words {gap:+.1f} points"
        )
        s = r["spec"]
        print(
            f"  default spec resolved: {s['model']['cell']} hidden {s['model']['hidden_size']} embedding "
            f"{s['model']['embedding_dim']} pooling {s['model']['pooling']} max_length {s['text']['max_length']} "
            f"batch {s['training']['batch_size']} epochs {s['training']['epochs']} (ran {r['epochs']})"
        )
        print(
            f"  training: {r['train_seconds']:.1f} s, {r['tokens_per_second']:,.0f} tokens/s "
            f"(whole job {r['wall_seconds']:.1f} s)"
        )
        if name == "synthetic":
            print(f"  goal RNN >= bag-of-words + 10 points: {'met' if gap >= 10 else 'NOT met'}")


if __name__ == "__main__":
    main()
