"""Evaluating token-input and tagging models: the same ``Evaluation`` as every job, with baselines
that fit text (majority and TF-IDF + a linear model; majority tag and most frequent tag per token)
and integrated gradients over the token embeddings instead of per-step / permutation importance.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from torch import nn

from .attribution import IG_STEPS, recurrent_layers_in_train_mode
from .data import PreparedData
from .evaluation import compare, intervals_on_test, naive_scale, noise_notes, per_part, predict_parts
from .metrics import LOWER_IS_BETTER, json_float, main_metric, paired_differences, point_metrics
from .models import forward_in_chunks
from .results import Evaluation
from .sequence_model import SequenceModel, token_lengths
from .spec import JobSpec
from .tagging import tagging_baselines, tagging_intervals, tagging_paired_differences, tagging_point_metrics

# Texts whose integrated gradients are averaged into the token importance, and shown in full.
MAX_TEXT_ATTRIBUTION_EXAMPLES = 256
SHOWN_TEXT_EXAMPLES = 6
TOP_TOKENS = 20
_IG_ROWS_PER_PASS = 2_048


def evaluate_sequences(
    spec: JobSpec,
    prep: PreparedData,
    model: nn.Module,
    tensors: dict[str, torch.Tensor],
    rng: np.random.Generator,
) -> Evaluation:
    """The evaluation of a ``SequenceModel``; ``tensors`` holds each part's inputs on the device."""
    assert isinstance(model, SequenceModel)
    if spec.task == "tagging":
        body = _tagging(spec, prep, model, tensors, rng)
    else:
        body = _per_example(spec, prep, model, tensors, rng)
    main = body["main_metric"]
    train_value, test_value = body["metrics"]["train"].get(main), body["metrics"]["test"].get(main)
    gap = None
    if train_value is not None and test_value is not None:
        gap = json_float(test_value - train_value if main in LOWER_IS_BETTER else train_value - test_value)
    differences = body.pop("differences", {})
    body["comparison"] = {
        name: compare(main, test_value, values.get(main), differences.get(name))
        for name, values in body["baselines"].items()
    }
    body["notes"] += noise_notes(main, body["comparison"])
    body["generalization_gap"] = {
        "metric": main,
        "train": train_value,
        "test": test_value,
        "gap": gap,
        "positive_means": "test is worse than train",
    }
    body.update(
        task=spec.task,
        confidence_level=0.95,
        bootstrap_samples=spec.evaluation.bootstrap_samples,
        num_examples={part: int(len(idx)) for part, idx in prep.split.parts().items()},
    )
    if metrics_val_empty(body):
        body["notes"].append(
            "no validation part (val_fraction 0): no early stopping, the final epoch's weights are kept"
        )
    return Evaluation.model_validate(body)


def metrics_val_empty(body: dict[str, Any]) -> bool:
    return body["metrics"]["val"] == {}


def _confusion(classes: list[Any], truth: np.ndarray, pred: np.ndarray) -> dict[str, Any]:
    matrix = np.zeros((len(classes), len(classes)), dtype=np.int64)
    np.add.at(matrix, (truth, pred), 1)
    return {"labels": [str(c) for c in classes], "matrix": matrix.tolist(), "rows": "true", "columns": "predicted"}


# --- one output per text ----------------------------------------------------------------------------


def _per_example(
    spec: JobSpec, prep: PreparedData, model: SequenceModel, tensors: dict[str, torch.Tensor], rng: np.random.Generator
) -> dict[str, Any]:
    task = spec.task
    main = main_metric(task)
    classes = prep.examples.classes
    scale = naive_scale(spec, prep) if task != "classification" else None
    notes = list(prep.notes)
    metrics, predictions = predict_parts(model, tensors, prep, task, scale)
    y_test = prep.y_original("test")
    intervals, interval_notes = intervals_on_test(spec, y_test, predictions["test"], metrics["test"], rng, scale)
    notes += interval_notes
    baseline_preds, baseline_notes = _text_baselines(spec, prep)
    notes += baseline_notes
    if task == "regression":
        notes.append("mase for regression is scaled by the training mean's in-sample MAE (no time order)")
    body: dict[str, Any] = {
        "main_metric": main,
        "metrics": metrics,
        "intervals": {"test": intervals},
        "baselines": {name: point_metrics(task, y_test, pred, scale) for name, pred in baseline_preds.items()},
        "notes": notes,
        "differences": paired_differences(
            task, y_test, predictions["test"], baseline_preds, spec.evaluation.bootstrap_samples, rng
        ),
    }
    if task == "classification":
        assert classes is not None
        body["confusion_matrix"] = _confusion(classes, y_test, predictions["test"].argmax(axis=1))
    if spec.evaluation.attribution and prep.examples.codec is not None:
        body["text_attribution"] = text_attribution(spec, prep, model, tensors["test"], predictions["test"], rng)
        notes.append(
            "attribution is integrated gradients over the token embeddings; permutation importance is not used for text"
        )
    return body


def _text_baselines(spec: JobSpec, prep: PreparedData) -> tuple[dict[str, np.ndarray], list[str]]:
    """Majority class (or mean) and a bag-of-words linear model on the same tokens as the network."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression, Ridge

    ex = prep.examples
    train, test = prep.split.train, prep.split.test
    y_train = prep.y_original("train")
    preds: dict[str, np.ndarray] = {}
    if spec.task == "classification":
        assert ex.classes is not None
        freq = np.bincount(y_train, minlength=len(ex.classes)) / len(y_train)
        preds["majority_class"] = np.repeat(freq[None, :], len(test), axis=0)
    else:
        preds["mean"] = np.repeat(y_train.mean(axis=0, keepdims=True), len(test), axis=0)
    codec, texts = ex.codec, ex.texts
    if codec is None or texts is None:
        return preds, []
    tokens = codec.tokens(texts)  # uncut: the bag of words sees each whole text
    vectorizer = TfidfVectorizer(analyzer=_identity, lowercase=False)
    train_bags = vectorizer.fit_transform([tokens[i] for i in train])
    test_bags = vectorizer.transform([tokens[i] for i in test])
    if spec.task == "classification":
        if len(np.unique(y_train)) > 1:
            with warnings.catch_warnings():  # a bag of words that has not converged in 1000 steps is still a baseline
                warnings.simplefilter("ignore", ConvergenceWarning)
                fitted = LogisticRegression(max_iter=1000).fit(train_bags, y_train)
            assert ex.classes is not None
            proba = np.zeros((len(test), len(ex.classes)))
            proba[:, fitted.classes_] = fitted.predict_proba(test_bags)
            preds["tfidf_logistic"] = proba
    else:
        fitted_ridge = Ridge(alpha=1.0).fit(train_bags, y_train)
        preds["tfidf_ridge"] = np.asarray(fitted_ridge.predict(test_bags)).reshape(len(test), -1)
    name = "tfidf_logistic" if spec.task == "classification" else "tfidf_ridge"
    return preds, [f"{name} is TF-IDF over the model's own tokens with a linear model fitted on the training texts"]


def _identity(tokens: list[str]) -> list[str]:
    return tokens


def token_integrated_gradients(
    model: SequenceModel, ids: torch.Tensor, output_index: torch.Tensor, steps: int = IG_STEPS
) -> torch.Tensor:
    """Integrated gradients of ``model(ids)[i, output_index[i]]`` over the token embeddings, summed over
    the embedding: one score per token ``[N, T]``. The baseline is all-zero embeddings (= ``[PAD]``'s)
    with the text's own length."""
    assert model.embedding is not None
    alphas = (torch.arange(steps, device=ids.device, dtype=torch.float32) + 0.5) / steps
    per_pass = max(1, _IG_ROWS_PER_PASS // steps)
    out = torch.zeros(ids.shape, dtype=torch.float32, device=ids.device)
    with recurrent_layers_in_train_mode(model):
        for start in range(0, ids.shape[0], per_pass):
            chunk = ids[start : start + per_pass]
            m = chunk.shape[0]
            with torch.no_grad():
                embedded = model.embedding(chunk)
            lengths = token_lengths(chunk).repeat(steps)
            path = (alphas.view(-1, 1, 1, 1) * embedded.unsqueeze(0)).reshape(steps * m, *embedded.shape[1:])
            path.requires_grad_(True)
            outputs = model.forward_embedded(path, lengths)
            chosen = outputs.gather(1, output_index[start : start + m].repeat(steps).view(-1, 1))
            (grad,) = torch.autograd.grad(chosen.sum(), path)
            mean_grad = grad.view(steps, m, *embedded.shape[1:]).mean(dim=0)
            out[start : start + m] = (embedded * mean_grad).sum(dim=-1)
    return out


def _as_text(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def text_attribution(
    spec: JobSpec,
    prep: PreparedData,
    model: SequenceModel,
    x_test: torch.Tensor,
    pred_test: np.ndarray,
    rng: np.random.Generator,
) -> dict[str, Any]:
    """Token scores of a few test texts, and the tokens that matter most over a sample of them."""
    n = x_test.shape[0]
    sample = np.sort(rng.choice(n, min(n, MAX_TEXT_ATTRIBUTION_EXAMPLES), replace=False))
    rows = torch.as_tensor(sample, device=x_test.device)
    ids = model.token_ids(x_test[rows])
    classification = spec.task == "classification"
    with torch.no_grad():
        index = (
            forward_in_chunks(model, x_test[rows]).argmax(dim=1)
            if classification
            else torch.zeros(len(sample), dtype=torch.long, device=x_test.device)
        )
    scores = token_integrated_gradients(model, ids, index).double().cpu().numpy()
    codec = prep.examples.codec
    ids_np = ids.cpu().numpy()
    lengths = token_lengths(ids).cpu().numpy()
    vocab = {i: t for t, i in codec.tokenizer.get_vocab().items()}
    total: dict[str, float] = {}
    seen: dict[str, int] = {}
    grand = 0.0
    for r in range(len(sample)):
        for t in range(int(lengths[r])):
            token = vocab.get(int(ids_np[r, t]), "?")
            value = abs(float(scores[r, t]))
            total[token] = total.get(token, 0.0) + value
            seen[token] = seen.get(token, 0) + 1
            grand += value
    mean = {tok: total[tok] / seen[tok] for tok in total}
    norm = sum(mean.values()) or 1.0
    top = sorted(mean.items(), key=lambda kv: -kv[1])[:TOP_TOKENS]
    y_test = prep.y_original("test")
    classes = prep.examples.classes
    examples = []
    for r in range(min(SHOWN_TEXT_EXAMPLES, len(sample))):
        row = int(sample[r])
        length = int(lengths[r])
        if classes is not None:
            label, predicted = str(classes[int(y_test[row])]), str(classes[int(pred_test[row].argmax())])
        else:
            label, predicted = _as_text(float(y_test[row][0])), _as_text(float(pred_test[row][0]))
        examples.append(
            {
                "tokens": [vocab.get(int(i), "?") for i in ids_np[r, :length]],
                "scores": [float(v) for v in scores[r, :length]],
                "label": label,
                "predicted": predicted,
            }
        )
    return {
        "method": "integrated_gradients",
        "baseline": "all-zero token embeddings (the [PAD] embedding) of the text's own length",
        "explains": "the predicted class's logit" if classification else "the first output (scaled units)",
        "sampled": len(sample),
        "examples": examples,
        "token_importance": {tok: float(v / norm) for tok, v in top},
    }


# --- one tag per step -------------------------------------------------------------------------------


def _predicted_tags(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    return forward_in_chunks(model, x).argmax(dim=1).cpu().numpy()


def _tagging(
    spec: JobSpec, prep: PreparedData, model: SequenceModel, tensors: dict[str, torch.Tensor], rng: np.random.Generator
) -> dict[str, Any]:
    classes = prep.examples.classes
    assert classes is not None
    notes = list(prep.notes)
    metrics, predictions = per_part(
        prep,
        lambda part: _predicted_tags(model, tensors[part]),
        lambda part, predicted: tagging_point_metrics(prep.y_original(part), predicted, classes),
    )
    y_test, y_train = prep.y_original("test"), prep.y_original("train")
    intervals = tagging_intervals(y_test, predictions["test"], classes, spec.evaluation.bootstrap_samples, rng)
    tokens = prep.examples.codec is not None
    ids_train = ids_test = None
    if tokens:
        assert prep.examples.x is not None
        ids_train = prep.examples.x[prep.split.train, :, 0].astype(np.int64)
        ids_test = prep.examples.x[prep.split.test, :, 0].astype(np.int64)
    baseline_preds = tagging_baselines(y_train, y_test, len(classes), ids_train, ids_test)
    if not tokens:
        notes.append("most_frequent_tag omitted: the inputs are numbers, not tokens")
    if metrics["test"].get("span_f1") is None:
        notes.append("span_f1 is null: the tags are not in BIO form (O, B-X, I-X)")
    real = y_test >= 0
    notes.append("metrics count every real (unpadded) token; intervals resample whole sequences")
    if spec.evaluation.attribution:
        notes.append(
            "attribution is not computed for tagging jobs (one prediction per step: integrated gradients and "
            "permutation importance here explain one output per example)"
        )
    samples = spec.evaluation.bootstrap_samples
    return {
        "main_metric": "accuracy",
        "metrics": metrics,
        "intervals": {"test": intervals},
        "baselines": {name: tagging_point_metrics(y_test, pred, classes) for name, pred in baseline_preds.items()},
        "differences": tagging_paired_differences(y_test, predictions["test"], baseline_preds, classes, samples, rng),
        "confusion_matrix": _confusion(classes, y_test[real], predictions["test"][real]),
        "notes": notes,
    }
