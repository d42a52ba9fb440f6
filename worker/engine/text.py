"""Token inputs: text columns (layout ``text``) and token columns (layout ``sequences``), and per-step
tags (task ``tagging``) — read from a table, tokenized with Hugging Face ``tokenizers``.

The tokenizer is trained on the training part only, its vocabulary is stored in the model artifact
(``TextCodec.to_dict``), and ``/predict``, the ONNX export and offline prediction encode with the
same ``TextCodec``. Token ids are padded with 0 (``[PAD]``) on the right; the model packs the
sequences by their length, so padding never changes a prediction. No torch here: the API checks
specs with this module.

Tags for ``text`` are a column of whitespace-separated tags, one per whitespace-separated word of
the text (the word tokenizer then keeps words whole: no punctuation split, one token per word).
For ``sequences`` the target column holds one tag per row (step).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from .errors import DataError
from .spec import JobSpec

PAD, UNK = "[PAD]", "[UNK]"
PAD_ID, UNK_ID = 0, 1
# The tag index of padded steps: nn.CrossEntropyLoss ignores it (its default ignore_index).
IGNORE_TAG = -100
# text.max_length "auto": the longest training text, at most this many tokens.
AUTO_MAX_LENGTH = 256
DEFAULT_EMBEDDING_DIM = 64


def uses_tokens(spec: JobSpec) -> bool:
    """Inputs are token ids (an embedding in front of the RNN), not numbers."""
    return spec.text is not None


def per_step(spec: JobSpec) -> bool:
    """The network outputs one prediction per step (``tagging``), not one per example."""
    return spec.task == "tagging"


def uses_sequence_model(spec: JobSpec) -> bool:
    """Jobs run by ``sequence_model.SequenceModel`` (token inputs or per-step outputs)."""
    return uses_tokens(spec) or per_step(spec)


def _tokenizer(kind: str, lowercase: bool, pretokenized: bool) -> Any:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    tok = Tokenizer(models.BPE(unk_token=UNK) if kind == "bpe" else models.WordLevel(unk_token=UNK))
    steps = [normalizers.NFC()] + ([normalizers.Lowercase()] if lowercase else [])
    tok.normalizer = normalizers.Sequence(steps)
    # Tagging and token sequences: the words are given (split on whitespace), one token each.
    # Free text: punctuation is split off the words ("great!" → "great", "!").
    if not pretokenized:
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return tok


def _without_added_tokens(tok: Any, renumber: bool = False) -> Any:
    """The tokenizer without its added-token matching. The trainer registers ``[PAD]`` and ``[UNK]`` as
    added tokens, which ``tokenizers`` finds in the *raw* input before the word model runs: a word
    ``x[PAD]y`` became three tokens (tags out of line with the words) and ``[PAD]`` in a text acted as
    padding. Both stay in the model's vocabulary; only the matching goes.

    ``renumber`` (a tokenizer just trained, never a stored one: its ids are the model's): ``[PAD]`` is
    id 0, ``[UNK]`` id 1 and the other tokens follow without gaps. The word-level trainer numbers the
    special tokens after the words when a training word spells one (``[PAD]`` with case kept): id 0 was
    then a word, and the vocabulary's size was less than its largest id + 1 (an IndexError in training)."""
    import json

    from tokenizers import Tokenizer

    values = json.loads(tok.to_str())
    changed = bool(values.get("added_tokens"))
    values["added_tokens"] = []
    vocab = values.get("model", {}).get("vocab")
    if renumber and isinstance(vocab, dict):
        words = sorted((i, t) for t, i in vocab.items() if t not in (PAD, UNK))
        fixed = {PAD: PAD_ID, UNK: UNK_ID} | {t: n for n, (_, t) in enumerate(words, start=2)}
        if fixed != vocab:
            values["model"]["vocab"], changed = fixed, True
    return Tokenizer.from_str(json.dumps(values)) if changed else tok


@dataclass
class TextCodec:
    """A trained tokenizer and the fixed number of steps: strings (or word lists) → padded token ids."""

    tokenizer: Any  # tokenizers.Tokenizer
    max_length: int
    pretokenized: bool  # inputs are lists of words (tagging, token sequences), not free text

    @classmethod
    def train(cls, spec: JobSpec, texts: list[Any], pretokenized: bool) -> TextCodec:
        from tokenizers import trainers

        assert spec.text is not None
        t = spec.text
        tok = _tokenizer(t.tokenizer, t.lowercase, pretokenized)
        special = [PAD, UNK]
        if t.tokenizer == "bpe":
            trainer: Any = trainers.BpeTrainer(vocab_size=t.vocab_size, special_tokens=special, show_progress=False)
        else:
            trainer = trainers.WordLevelTrainer(vocab_size=t.vocab_size, special_tokens=special, show_progress=False)
        words = (w for text in texts for w in text) if pretokenized else iter(texts)
        tok.train_from_iterator(words, trainer=trainer)
        tok = _without_added_tokens(tok, renumber=True)
        return cls(tok, t.max_length if isinstance(t.max_length, int) else 0, pretokenized)

    @property
    def vocab_size(self) -> int:
        return int(self.tokenizer.get_vocab_size())

    def tokens(self, texts: list[Any]) -> list[list[str]]:
        """The tokens of every text, uncut."""
        return [tokens for _, tokens in self._encodings(texts)]

    def _encodings(self, texts: list[Any]) -> list[tuple[list[int], list[str]]]:
        """Ids and tokens of every text. A word that *is* the padding token (``[PAD]`` in a text whose
        case is kept) is unknown, never padding: id 0 means "no token here" to the model."""
        out = []
        for e in self.tokenizer.encode_batch(list(texts), is_pretokenized=self.pretokenized):
            ids, tokens = list(e.ids), list(e.tokens)
            for j, token_id in enumerate(ids):
                if token_id == PAD_ID:
                    ids[j], tokens[j] = UNK_ID, UNK
            out.append((ids, tokens))
        return out

    def lengths(self, texts: list[Any]) -> np.ndarray:
        """Tokens per text before cutting to ``max_length``."""
        return np.array([len(ids) for ids, _ in self._encodings(texts)], dtype=np.int64)

    def encode(self, texts: list[Any]) -> tuple[np.ndarray, list[list[str]]]:
        """Token ids int64 ``[N, max_length]`` (cut, then padded with 0) and the kept tokens of each text."""
        ids = np.zeros((len(texts), self.max_length), dtype=np.int64)
        kept: list[list[str]] = []
        for i, (text_ids, tokens) in enumerate(self._encodings(texts)):
            n = min(len(text_ids), self.max_length)
            ids[i, :n] = text_ids[:n]
            kept.append(tokens[:n])
        return ids, kept

    def to_dict(self) -> dict[str, Any]:
        return {
            "tokenizer": self.tokenizer.to_str(),
            "max_length": self.max_length,
            "pretokenized": self.pretokenized,
            "pad_id": PAD_ID,
            "vocab_size": self.vocab_size,
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TextCodec:
        from tokenizers import Tokenizer

        tokenizer = _without_added_tokens(Tokenizer.from_str(values["tokenizer"]))  # models saved before too
        return cls(tokenizer, int(values["max_length"]), bool(values["pretokenized"]))


def check_text_inputs(inputs: Any, pretokenized: bool) -> list[Any]:
    """Raw prediction inputs: a list of strings, or of word lists for a pretokenized model."""
    if not isinstance(inputs, list | tuple) or len(inputs) == 0:
        raise DataError("inputs must be a non-empty list of texts", field="inputs")
    if pretokenized:
        out: list[Any] = []
        for i, item in enumerate(inputs):
            if isinstance(item, str):
                out.append(_unicode(item, i).split())
            elif isinstance(item, list | tuple) and all(isinstance(w, str) for w in item):
                out.append([_unicode(str(w), i) for w in item])
            else:
                raise DataError(f"inputs[{i}] must be a text or a list of words (strings)", field="inputs")
        return out
    bad = [i for i, item in enumerate(inputs) if not isinstance(item, str)]
    if bad:
        raise DataError(f"inputs[{bad[0]}] is not a string; this model takes texts", field="inputs")
    return [_unicode(item, i) for i, item in enumerate(inputs)]


def _unicode(text: str, index: int) -> str:
    """A text the tokenizer can take: a lone surrogate (JSON's ``"\\ud800"``) is not Unicode text."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise DataError(
            f"inputs[{index}] is not valid Unicode text (a lone surrogate at character {exc.start})", field="inputs"
        ) from None
    return text


# --- reading examples from a table ----------------------------------------------------------------


def text_column(table: pa.Table, name: str, field: str = "text.column") -> list[str]:
    """A string column as Python strings; refuses other types, missing values and an all-empty column."""
    from .tables import refuse_missing, require_column

    column = require_column(table, name, field)
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        raise DataError(f"text column '{name}' holds {column.type}, not text", field=field)
    refuse_missing(column, name, field)
    values = [str(v) for v in column.to_pylist()]
    if not any(v.strip() for v in values):
        raise DataError(f"text column '{name}' is empty: every value is blank", field=field)
    return values


@dataclass
class TokenExamples:
    """What ``layouts.build_examples`` needs from a token / tagging table (before tokenization)."""

    texts: list[Any] | None  # str per example, or a list of words (pretokenized); None for numeric tagging
    y: np.ndarray | None  # class indices [N] or targets [N, 1]; None for tagging (see step_targets)
    step_targets: list[np.ndarray] | None  # tagging: tag index per word / step of each example
    classes: list[Any] | None
    x: np.ndarray | None = None  # numeric tagging: float32 [N, T, F]
    feature_names: list[str] | None = None
    split_labels: np.ndarray | None = None
    names: list[str] | None = None  # sequence names (layout sequences)


def _encode_tags(flat: np.ndarray, field: str) -> tuple[np.ndarray, list[Any]]:
    from .tables import encode_classes

    return encode_classes(flat, field)


def text_examples(spec: JobSpec, table: pa.Table) -> TokenExamples:
    """Layout ``text``: one example per row."""
    from .layouts import _column_split, _targets
    from .tables import label_column

    assert spec.text is not None
    texts = text_column(table, spec.text.column)
    split = _column_split(spec, table)
    if spec.task != "tagging":
        y, classes = _targets(spec, label_column(table, spec.data.target, "data.target"))
        return TokenExamples(texts, y, None, classes, split_labels=split)
    words = [t.split() for t in texts]
    tag_rows = text_column(table, spec.data.target, "data.target")
    tags = [r.split() for r in tag_rows]
    for i, (w, g) in enumerate(zip(words, tags, strict=True)):
        if len(w) != len(g):
            raise DataError(
                f"row {i + 1}: {len(g)} tags for {len(w)} words; column '{spec.data.target}' needs one "
                "whitespace-separated tag per whitespace-separated word of the text",
                field="data.target",
            )
    flat = np.array([t for row in tags for t in row], dtype=object)
    codes, classes = _encode_tags(flat, "data.target")
    bounds = np.cumsum([0] + [len(g) for g in tags])
    step_targets = [codes[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    return TokenExamples(words, None, step_targets, classes, split_labels=split)


def sequence_token_examples(spec: JobSpec, table: pa.Table) -> TokenExamples:
    """Layout ``sequences`` with a token column (``text.column``) or per-step tags (``tagging``)."""
    from .layouts import _column_split, _default_features, _group_runs, _targets
    from .tables import label_column, numeric_column

    d = spec.data
    assert d.sequence_column is not None and d.order_column is not None
    order, runs = _group_runs(table, d.sequence_column, d.order_column, "data.sequence_column")
    starts = np.array([a for _, a, _ in runs])
    stops = np.array([b for _, _, b in runs])
    names = [name for name, _, _ in runs]
    raw_target = label_column(table, d.target, "data.target")[order]
    split_rows = _column_split(spec, table)
    split_labels = None
    if split_rows is not None:
        s = split_rows[order]
        if any(len(set(s[a:b].tolist())) > 1 for a, b in zip(starts, stops, strict=True)):
            raise DataError("the split column changes within a sequence", field="data.split.column")
        split_labels = s[starts]
    y, classes, step_targets = None, None, None
    if spec.task == "tagging":
        codes, classes = _encode_tags(raw_target, "data.target")
        step_targets = [codes[a:b] for a, b in zip(starts, stops, strict=True)]
    else:
        first = raw_target[starts]
        if any(np.any(raw_target[a:b] != first[i]) for i, (a, b) in enumerate(zip(starts, stops, strict=True))):
            raise DataError(
                f"target '{d.target}' changes within a sequence; it must be constant per sequence "
                "(per-step labels: task 'tagging')",
                field="data.target",
            )
        y, classes = _targets(spec, first)
    if spec.text is not None:
        tokens = text_column(table, spec.text.column)
        ordered = [tokens[i] for i in order]
        texts = [ordered[a:b] for a, b in zip(starts, stops, strict=True)]
        return TokenExamples(texts, y, step_targets, classes, split_labels=split_labels, names=names)
    # Numeric features, one tag per step: sequences of equal length (as the classification layout).
    lengths = stops - starts
    if lengths.min() != lengths.max():
        raise DataError(
            f"sequences have different lengths ({lengths.min()} to {lengths.max()} steps); numeric "
            "sequences need equal lengths — pad or trim them, or give tokens in text.column",
            field="data.sequence_column",
        )
    exclude = {d.target, d.sequence_column, d.order_column, d.group_column, d.split.column}
    features = d.features or _default_features(table, {e for e in exclude if e})
    if not features:
        raise DataError("no numeric feature columns besides the target; set data.features", field="data.features")
    columns = [numeric_column(table, f, "data.features", "feature") for f in features]
    steps = int(lengths[0])
    x = np.stack([c[order] for c in columns], axis=1).astype(np.float32).reshape(len(runs), steps, len(features))
    return TokenExamples(
        None, y, step_targets, classes, x=x, feature_names=list(features), split_labels=split_labels, names=names
    )


def pad_step_targets(step_targets: list[np.ndarray], steps: int) -> np.ndarray:
    """Tag indices int64 ``[N, steps]``: cut to ``steps``, padded with ``IGNORE_TAG``."""
    y = np.full((len(step_targets), steps), IGNORE_TAG, dtype=np.int64)
    for i, tags in enumerate(step_targets):
        n = min(len(tags), steps)
        y[i, :n] = tags[:n]
    return y


def fit_codec(spec: JobSpec, texts: list[Any], train: np.ndarray) -> tuple[TextCodec, int]:
    """The tokenizer trained on the training texts, its ``max_length`` set, and the longest text's length.

    ``text.max_length`` "auto" is the longest training text (at most ``AUTO_MAX_LENGTH``); an explicit
    value larger than every text is refused: it would only add padding.
    """
    assert spec.text is not None
    pretokenized = spec.data.layout == "sequences" or spec.task == "tagging"
    train_texts = [texts[i] for i in train]
    codec = TextCodec.train(spec, train_texts, pretokenized)
    longest_all = int(codec.lengths(texts).max()) if texts else 0
    if longest_all == 0:
        raise DataError(f"text column '{spec.text.column}' holds no tokens", field="text.column")
    if isinstance(spec.text.max_length, int):
        if spec.text.max_length > longest_all:
            raise DataError(
                f"text.max_length {spec.text.max_length} is larger than any text (the longest has "
                f"{longest_all} tokens); lower it or leave it 'auto'",
                field="text.max_length",
            )
        codec.max_length = spec.text.max_length
    else:
        longest_train = int(codec.lengths(train_texts).max()) if train_texts else 0
        codec.max_length = max(1, min(AUTO_MAX_LENGTH, longest_train))
    return codec, longest_all


def resolve_text(spec: JobSpec, steps: int) -> JobSpec:
    """``text.max_length`` and ``model.embedding_dim`` filled in, and token ids left unscaled."""
    if spec.text is None:
        return spec
    text = spec.text
    if text.max_length == "auto":
        text = text.model_copy(update={"max_length": max(1, min(AUTO_MAX_LENGTH, steps))})
    model = spec.model
    if model.embedding_dim is None:
        model = model.model_copy(update={"embedding_dim": DEFAULT_EMBEDDING_DIM})
    data = spec.data
    if data.scaling == "auto":
        data = data.model_copy(update={"scaling": "none"})
    return spec.model_copy(update={"text": text, "model": model, "data": data})
