"""Text and tagging in the engine: tokenizer, padding invariance, tagging metrics, attribution, exports."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pytest
import torch

from worker.engine import JobSpec, load_predictor, train_and_evaluate
from worker.engine.export import OnnxPredictor, Predictor, from_safetensors, to_onnx, to_safetensors
from worker.engine.offline import predict_file
from worker.engine.sequence_model import SequenceModel
from worker.engine.spec import ModelSpec
from worker.engine.tagging import bio_spans, tagging_baselines, tagging_intervals, tagging_point_metrics
from worker.engine.text import TextCodec

# The trained text model is a module fixture: grouped for `--dist loadgroup` (see Makefile).
pytestmark = pytest.mark.xdist_group("engine-text")

FILLER = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa", "lambda", "mu"]


def planted_table(n: int = 240, seed: int = 0) -> pa.Table:
    """The label is which of two planted words ("good" / "bad") appears somewhere among filler words."""
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for i in range(n):
        words = list(rng.choice(FILLER, int(rng.integers(3, 9))))
        label = i % 2
        words.insert(int(rng.integers(0, len(words) + 1)), "good" if label else "bad")
        texts.append(" ".join(words))
        labels.append("pos" if label else "neg")
    return pa.table({"review": texts, "label": labels})


def text_spec(**overrides: Any) -> JobSpec:
    body: dict[str, Any] = {
        "dataset_id": "ds",
        "task": "classification",
        "data": {"layout": "text", "target": "label"},
        "text": {"column": "review"},
        "model": {"hidden_size": 16, "bidirectional": True, "embedding_dim": 16},
        "training": {"epochs": 8, "batch_size": 16, "learning_rate": 0.02},
        "evaluation": {"bootstrap_samples": 100, "attribution": True},
        "device": "cpu",
    }
    for key, value in overrides.items():
        body[key] = {**body.get(key, {}), **value} if isinstance(value, dict) else value
    return JobSpec.model_validate(body)


@pytest.fixture(scope="module")
def trained() -> Any:
    return train_and_evaluate(text_spec(), planted_table())


# --- tokenizer ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["word", "bpe"])
def test_tokenizer_round_trip(kind: str) -> None:
    texts = ["The cat sat on the mat.", "A dog, a cat!", "the mat is red"]
    spec = text_spec(text={"column": "review", "tokenizer": kind, "vocab_size": 200, "max_length": 8})
    codec = TextCodec.train(spec, texts, pretokenized=False)
    codec.max_length = 8
    ids, tokens = codec.encode(texts)
    assert ids.shape == (3, 8) and ids.dtype == np.int64
    for row, toks in zip(ids, tokens, strict=True):
        # ids back to tokens: the same tokens, then padding (id 0)
        assert [codec.tokenizer.id_to_token(int(i)) for i in row[: len(toks)]] == toks
        assert np.all(row[len(toks) :] == 0)
        assert "[UNK]" not in toks  # every training token is in the vocabulary
    # Lower-cased, punctuation split off, and the tokens put back together give the text's characters.
    assert "".join(tokens[1]) == "adog,acat!"
    if kind == "word":
        assert tokens[0] == ["the", "cat", "sat", "on", "the", "mat", "."]
    # The stored form (the model artifact's "text") tokenizes identically.
    again = TextCodec.from_dict(codec.to_dict())
    assert np.array_equal(again.encode(texts)[0], ids)
    assert again.encode(["an unseen zebra"])[1][0].count("[UNK]") >= (1 if kind == "word" else 0)


def tagging_words_spec(lowercase: bool) -> JobSpec:
    """Tagging of a text column "words" (one tag per word in "tags")."""
    return JobSpec.model_validate(
        {
            "dataset_id": "ds",
            "task": "tagging",
            "data": {"layout": "text", "target": "tags"},
            "text": {"column": "words", "lowercase": lowercase},
        }
    )


@pytest.mark.parametrize("lowercase", [True, False])
def test_words_spelling_the_special_tokens_are_words_not_padding(lowercase: bool) -> None:
    """``tokenizers`` matched ``[PAD]``/``[UNK]`` inside raw input: a tagged word ``x[PAD]y`` became three
    tokens (tags out of line with words), and ``[PAD]`` in a text was padding. One word, one token; id 0
    only after the text; the stored form (models saved before this fix included) encodes the same."""
    words = ["ann", "x[PAD]y", "went", "[UNK]", "[PAD]", "to"]
    spec = tagging_words_spec(lowercase)
    codec = TextCodec.train(spec, [words], pretokenized=True)
    codec.max_length = 8
    ids, tokens = codec.encode([words])
    assert len(tokens[0]) == len(words) and codec.lengths([words]).tolist() == [len(words)]
    assert np.all(ids[0, : len(words)] != 0) and np.all(ids[0, len(words) :] == 0)
    assert ids[0, 1] not in (0, 1)  # x[PAD]y was a training word: it has its own id
    stored = codec.to_dict()
    assert '"added_tokens":[]' in stored["tokenizer"].replace(" ", "")
    assert np.array_equal(TextCodec.from_dict(stored).encode([words])[0], ids)

    free = text_spec(text={"column": "review", "lowercase": lowercase})
    text_codec = TextCodec.train(free, ["great film", "bad film"], pretokenized=False)
    text_codec.max_length = 8
    with_pad, _ = text_codec.encode(["great [PAD]", "[PAD] great"])
    assert np.count_nonzero(with_pad[0]) == 4 and np.count_nonzero(with_pad[1]) == 4  # [ pad ] great


def test_training_words_that_spell_special_tokens_keep_the_ids_dense() -> None:
    """With case kept, the word-level trainer numbered [PAD]/[UNK] after training words that spell them:
    id 0 was a word and the vocabulary one short of its largest id (an IndexError in training)."""
    words = ["[PAD]", "hello", "x", "world", "[UNK]"]
    spec = tagging_words_spec(lowercase=False)
    codec = TextCodec.train(spec, [words], pretokenized=True)
    vocab = codec.tokenizer.get_vocab()
    assert vocab["[PAD]"] == 0 and vocab["[UNK]"] == 1
    assert sorted(vocab.values()) == list(range(codec.vocab_size))
    rows = 40
    table = pa.table(
        {
            "words": [" ".join(words)] * rows,
            "tags": ["O B-X O O O"] * rows,
        }
    )
    body = spec.model_dump()
    body.update(model={"hidden_size": 4, "embedding_dim": 4}, training={"epochs": 2, "batch_size": 8})
    body["evaluation"] = {"bootstrap_samples": 0, "attribution": False}
    result = train_and_evaluate(JobSpec.model_validate(body), table)
    assert result.evaluation is not None and result.epochs_run == 2


def test_vocabulary_comes_from_the_training_part_only() -> None:
    spec = text_spec(text={"column": "review", "max_length": 2})
    codec = TextCodec.train(spec, ["seen words"], pretokenized=False)
    assert "seen" in codec.tokenizer.get_vocab() and "hidden" not in codec.tokenizer.get_vocab()


# --- padding ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cell", "pooling", "per_step"),
    [("lstm", "last", False), ("gru", "mean", False), ("rnn", "max", False), ("lstm", "last", True)],
)
def test_padding_never_changes_a_prediction(cell: str, pooling: str, per_step: bool) -> None:
    torch.manual_seed(0)
    spec = ModelSpec(cell=cell, hidden_size=8, num_layers=2, bidirectional=True, pooling=pooling, embedding_dim=6)
    model = SequenceModel(spec, 1, 3, vocab_size=30, per_step=per_step).eval()
    texts = [[5, 6, 7], [9, 2, 3, 4, 8], [11]]
    short = torch.zeros(3, 5, dtype=torch.long)
    long = torch.zeros(3, 12, dtype=torch.long)
    for i, t in enumerate(texts):
        short[i, : len(t)] = torch.tensor(t)
        long[i, : len(t)] = torch.tensor(t)
    with torch.no_grad():
        a, b = model(short), model(long)
        alone = model(long[2:3])  # and the batch it is in does not matter either
    if per_step:
        for i, t in enumerate(texts):
            torch.testing.assert_close(a[i, :, : len(t)], b[i, :, : len(t)], rtol=0, atol=1e-6)
    else:
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
        torch.testing.assert_close(alone[0], b[2], rtol=0, atol=1e-6)


# --- tagging metrics ----------------------------------------------------------------------------------


def test_tagging_metrics_match_a_hand_computed_case() -> None:
    classes = ["B-PER", "I-PER", "O"]
    pad = -100
    y_true = np.array([[0, 1, 2, 2, pad], [2, 0, pad, pad, pad]])
    y_pred = np.array([[0, 1, 2, 0, 2], [2, 2, 1, 1, 1]])  # predictions on padding are never scored
    m = tagging_point_metrics(y_true, y_pred, classes)
    # 6 real tokens, 4 right. Per tag F1 = 2TP / (support + predicted): B 2·1/(2+2), I 2·1/(1+1), O 2·2/(3+3).
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["macro_f1"] == pytest.approx((0.5 + 1.0 + 2 / 3) / 3)
    # Spans: gold (0,2,PER) (1,2,PER); predicted (0,2,PER) (3,4,PER): 1 exact match → 2·1/(2+2).
    assert m["span_f1"] == pytest.approx(0.5)
    assert bio_spans(["I-PER", "I-PER", "O", "B-LOC", "I-PER"]) == {(0, 2, "PER"), (3, 4, "LOC"), (4, 5, "PER")}
    assert tagging_point_metrics(np.array([[0, 1]]), np.array([[0, 1]]), ["x", "y"])["span_f1"] is None
    intervals = tagging_intervals(y_true, y_pred, classes, 200, np.random.default_rng(0))
    low, high = intervals["accuracy"]  # type: ignore[misc]
    assert 0.0 <= low <= 4 / 6 <= high <= 1.0


def test_tagging_paired_differences_resample_sequences_for_both() -> None:
    from worker.engine.tagging import tagging_paired_differences

    rng = np.random.default_rng(0)
    classes = ["O", "B-X", "I-X"]
    y_true = rng.integers(0, 3, size=(40, 6))
    y_true[:, 5] = -100  # padding is never scored
    wrong = (y_true + 1) % 3
    out = tagging_paired_differences(
        y_true, y_true, {"same": y_true.copy(), "wrong": wrong}, classes, 200, np.random.default_rng(1)
    )
    assert out["same"] == [0.0, 0.0]  # identical predictions: every resample's difference is 0
    assert out["wrong"] == [1.0, 1.0]  # perfect vs always wrong, in every resample
    assert tagging_paired_differences(y_true, y_true, {"same": y_true}, classes, 0, rng) == {"same": None}


def test_tagging_baselines() -> None:
    pad = -100
    y_train = np.array([[1, 0, 0], [1, 1, pad]])
    ids_train = np.array([[5, 6, 6], [5, 7, 0]])
    y_test = np.array([[0, 0, pad]])
    preds = tagging_baselines(y_train, y_test, 2, ids_train, np.array([[6, 9, 0]]))
    assert preds["majority_tag"].tolist() == [[1, 1, 1]]  # 1 is the most frequent training tag
    assert preds["most_frequent_tag"][0, :2].tolist() == [0, 1]  # token 6 → 0; unseen 9 → majority


# --- a trained text model ---------------------------------------------------------------------------


def test_text_classification_evaluation(trained: Any) -> None:
    e = trained.evaluation
    assert e.task == "classification" and e.main_metric == "accuracy"
    assert set(e.baselines) == {"majority_class", "tfidf_logistic"}
    assert e.metrics["test"]["accuracy"] > 0.9 and e.intervals["test"]["accuracy"] is not None
    assert e.confusion_matrix is not None and e.confusion_matrix.labels == ["neg", "pos"]
    assert e.attribution is None  # no per-step / permutation importance for text
    assert trained.artifact["text"]["pretokenized"] is False
    assert trained.artifact["spec"]["text"]["max_length"] == max(
        len(t.split()) for t in planted_table()["review"].to_pylist()
    )


def test_attribution_highlights_the_planted_word(trained: Any) -> None:
    attribution = trained.evaluation.text_attribution
    assert attribution is not None and len(attribution.examples) >= 5
    hits = 0
    for example in attribution.examples:
        top = example.tokens[int(np.argmax(np.abs(example.scores)))]
        hits += top in ("good", "bad")
    assert hits >= len(attribution.examples) - 1
    top_two = sorted(attribution.token_importance, key=attribution.token_importance.get, reverse=True)[:2]
    assert set(top_two) == {"good", "bad"}


def test_predict_with_strings_and_every_export_agree(trained: Any, tmp_path: Path) -> None:
    texts = ["alpha good beta", "bad", "gamma delta bad epsilon", "", "good unseenword"]
    predictor = load_predictor(trained.artifact)
    answer = predictor.predict(texts)
    assert answer["labels"][:3] == ["pos", "neg", "neg"]
    assert answer["tokens"][0] == ["alpha", "good", "beta"] and answer["tokens"][3] == []
    reference = np.asarray(answer["probabilities"])
    onnx = OnnxPredictor(to_onnx(trained.artifact))
    np.testing.assert_allclose(np.asarray(onnx.predict(texts)["probabilities"]), reference, atol=1e-5)
    safetensors = Predictor(from_safetensors(to_safetensors(trained.artifact)))
    np.testing.assert_allclose(np.asarray(safetensors.predict(texts)["probabilities"]), reference, atol=1e-6)
    torch.save(trained.artifact, tmp_path / "model.pt")
    pcsv.write_csv(pa.table({"review": texts[:3] + ["x", "good unseenword"]}), tmp_path / "in.csv")
    table = predict_file(tmp_path / "model.pt", tmp_path / "in.csv")
    assert table.column("prediction").to_pylist()[:3] == ["pos", "neg", "neg"]
    np.testing.assert_allclose(table.column("probability_pos").to_numpy()[:3], reference[:3, 1], atol=1e-6)


def test_text_tagging_and_token_sequences(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    texts, tags = [], []
    for _ in range(160):
        words, labels = [], []
        for _ in range(int(rng.integers(2, 7))):
            if rng.random() < 0.3:
                words += [str(rng.choice(["ann", "bob"])), "smith"]
                labels += ["B-PER", "I-PER"]
            else:
                words.append(str(rng.choice(FILLER)))
                labels.append("O")
        texts.append(" ".join(words))
        tags.append(" ".join(labels))
    spec = text_spec(
        task="tagging",
        data={"layout": "text", "target": "tags"},
        text={"column": "sentence"},
        evaluation={"attribution": True},
    )
    result = train_and_evaluate(spec, pa.table({"sentence": texts, "tags": tags}))
    e = result.evaluation
    assert e.main_metric == "accuracy" and set(e.metrics["test"]) == {"accuracy", "macro_f1", "span_f1"}
    assert set(e.baselines) == {"majority_tag", "most_frequent_tag"}
    # Each baseline gets its paired interval on the test sequences (it was null for tagging), around
    # the point difference; attribution is not computed for per-step outputs, and the notes say so.
    for name, compared in e.comparison.items():
        assert compared.difference_interval is not None and compared.model is not None
        low, high = compared.difference_interval
        assert low <= compared.model - (compared.baseline or 0.0) <= high, name
        assert compared.significant == (low > 0 or high < 0)
    assert e.comparison["majority_tag"].significant is True  # a real model beats "everything is O"
    assert e.attribution is None and any("attribution is not computed for tagging" in n for n in e.notes)
    assert e.metrics["test"]["span_f1"] > 0.8 and e.intervals["test"]["span_f1"] is not None
    answer = load_predictor(result.artifact).predict(["ann smith alpha", ["bob", "smith"]])
    assert answer["labels"] == [["B-PER", "I-PER", "O"], ["B-PER", "I-PER"]]
    onnx = OnnxPredictor(to_onnx(result.artifact)).predict(["ann smith alpha", ["bob", "smith"]])
    assert onnx["labels"] == answer["labels"]

    # The same sentences as a sequences table: one token and one tag per row.
    rows: dict[str, list[Any]] = {"sentence": [], "position": [], "token": [], "tag": []}
    for s, (text, tag) in enumerate(zip(texts, tags, strict=True)):
        for p, (w, t) in enumerate(zip(text.split(), tag.split(), strict=True)):
            rows["sentence"].append(s)
            rows["position"].append(p)
            rows["token"].append(w)
            rows["tag"].append(t)
    spec = text_spec(
        task="tagging",
        data={"layout": "sequences", "target": "tag", "sequence_column": "sentence", "order_column": "position"},
        text={"column": "token"},
        evaluation={"attribution": False},
    )
    result = train_and_evaluate(spec, pa.table(rows))
    assert result.evaluation.metrics["test"]["span_f1"] > 0.8

    # Offline, sequence ids may be UUIDs (as DuckDB and Polars write them) and steps times of day
    # with nanoseconds: the output names them as text (the step's time raised, the UUID did not fit).
    import uuid

    import pyarrow.parquet as pq

    ids = [uuid.UUID(int=7), uuid.UUID(int=7), uuid.UUID(int=9)]
    offline = pa.table(
        {
            "sentence": pa.array([u.bytes for u in ids], pa.uuid()),
            "position": pa.array([1, 2, 5], pa.time64("ns")),
            "token": ["ann", "smith", "bob"],
        }
    )
    pq.write_table(offline, tmp_path / "steps.parquet")
    torch.save(result.artifact, tmp_path / "tagger.pt")
    out = predict_file(tmp_path / "tagger.pt", tmp_path / "steps.parquet")
    assert out.column("sentence").to_pylist() == [str(ids[0])] * 2 + [str(ids[2])]
    assert out.column("position").to_pylist() == ["00:00:00.000000001", "00:00:00.000000002", "00:00:00.000000005"]


# --- defaults for token inputs -----------------------------------------------------------------------


def test_token_inputs_are_never_patched() -> None:
    """Long texts resolve to patch 1 (one token per step, an embedding each); an explicit k > 1 is refused."""
    from pydantic import ValidationError

    from worker.engine.defaults import TrainingShape, resolve_defaults

    spec = text_spec(model={"patch": "auto"}, training={"epochs": "auto", "batch_size": "auto"})
    resolved = resolve_defaults(spec, TrainingShape(train_examples=500, val_examples=100, channels=1, steps=200))
    assert resolved.model.patch == 1
    with pytest.raises(ValidationError, match="model.patch"):
        text_spec(model={"patch": 4})


def test_a_text_run_that_learns_nothing_gets_advice_that_fits_text() -> None:
    # Every text the same: nothing to learn. The note must not suggest data.scaling (token ids are
    # not scaled, and the API refuses a scaling for text).
    table = pa.table({"review": ["the same words"] * 80, "label": ["pos", "neg"] * 40})
    result = train_and_evaluate(text_spec(training={"epochs": 3}, evaluation={"attribution": False}), table)
    assert result.evaluation is not None
    (note,) = [n for n in result.evaluation.notes if "never moved" in n]
    assert "learning_rate" in note and "scaling" not in note
