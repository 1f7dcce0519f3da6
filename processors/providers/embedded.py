"""The embedded model: a text classifier trained from a workflow's own labelled examples.

It is the default because it runs offline, costs nothing and answers in milliseconds, yet it
answers exactly like an LLM — JSON text through ``Provider.complete`` — so the same parsing,
validation, review and routing apply. Each answer field (``labels``) gets its own pipeline:
TF-IDF over word 1–2-grams and char_wb 2–5-grams, a linear SVM, and temperature scaling
fitted on cross-validated scores, so ``confidence`` is a calibrated probability a review
threshold can rely on. A classifier can only name labels it was trained on, so text injected
into an input can move the answer between known labels, never outside them.

Examples are split by a stable hash of their text: the held-out part never reaches training,
its accuracy is the report, and a benchmark can replay exactly those rows. A fitted model is
cached on disk, keyed by the data, the spec, scikit-learn's version and this module's source,
so the next process loads it instead of training.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import os
import pickle
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import version
from pathlib import Path
from typing import Any
from weakref import WeakKeyDictionary

import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict, Field, model_validator

from processors.paths import lookup
from processors.providers.base import ModelAnswer, ModelRequest, Provider

CACHE_DIR = Path.home() / ".cache" / "handoff"
REASON_CHARS = 300

Completion = Callable[[dict, dict[str, Any]], dict]
"""Code that fills the answer fields no classifier can give (a lead's owner, what is missing), from the
classifier's answer and the request's inputs: a workflow names one (``model.complete``)."""


class TrainingSpec(BaseModel):
    """Where a workflow's labelled examples are and how they map onto prompt inputs and answer fields."""

    model_config = ConfigDict(extra="forbid")

    examples: str = Field(description="Relative to the workflow folder: .jsonl of objects, or .csv with a header.")
    text: dict[str, str] = Field(
        min_length=1, description="Prompt input path → where its text is in an example (dotted path or CSV column).")
    labels: dict[str, str] = Field(
        min_length=1, description="Answer field → where its label is in an example (dotted path or CSV column).")
    holdout: float = Field(0.2, ge=0, lt=1, description="Fraction held out for validation, chosen by text hash.")
    learned: str | None = Field(None, description=(
        "Relative to the workflow folder: .jsonl rows learned from corrections and outcomes (`handoff model train` "
        "writes it). Trained on whole, never held out; a row whose text is a held-out example's is left out, so the "
        "held-out split stays the measure."))
    confidence_from: str | None = Field(None, description="The label whose probability is the answer's confidence; "
                                                          "default the first.")
    seed: int = Field(0, description="Varies the holdout split and the solver.")

    @model_validator(mode="after")
    def _confidence_from_a_label(self) -> TrainingSpec:
        if self.confidence_from is not None and self.confidence_from not in self.labels:
            raise ValueError(f"confidence_from {self.confidence_from!r} is not one of labels {list(self.labels)}")
        return self

    @property
    def confidence_label(self) -> str:
        return self.confidence_from or next(iter(self.labels))

    def compose(self, inputs: dict[str, Any]) -> str:
        """The classifier's input: the declared texts in order, one per line — built the same
        way from a training example and from a request, so both see the same text."""
        return "\n".join("" if inputs.get(path) is None else str(inputs[path]) for path in self.text)

    def held_out(self, text: str) -> bool:
        """A hash, not a random draw: the same example lands on the same side on every machine."""
        digest = hashlib.sha256(f"{self.seed}\0{text}".encode()).digest()
        return int.from_bytes(digest[:8]) / 2**64 < self.holdout


class Example(BaseModel):
    """One labelled example: what the model sees, the labels it should give, and the row it came from."""

    inputs: dict[str, Any] = Field(description="Prompt input path → value, as a request would carry it.")
    labels: dict[str, str] = Field(description="Answer field → expected label.")
    row: dict[str, Any] = Field(description="The example as the file holds it (a trigger event, for JSONL).")


class LabelReport(BaseModel):
    classes: int
    n_train: int
    n_holdout: int
    accuracy: float | None = Field(None, description="On the held-out split; None when nothing is held out.")
    calibration_error: float | None = Field(
        None, description="Expected calibration error of the confidence on the held-out split (10 bins).")


class HoldoutReport(BaseModel):
    model: str
    labels: dict[str, LabelReport]
    train_seconds: float


class Prediction(BaseModel):
    """One label's answer, with what the reason explains it by."""

    label: str
    probability: float
    runner_up: str
    runner_up_probability: float
    terms: list[str] = Field(description="The input's known words that pushed hardest towards the label.")

    def explain(self, field: str) -> str:
        terms = ", ".join(f"'{t}'" for t in self.terms) or "no known terms"
        return f"{field} {self.label} ({terms}; runner-up {self.runner_up} {self.runner_up_probability:.2f})"


class _Artifact(BaseModel):
    """What the disk cache holds: the fitted pipelines and the report measured when they were fitted."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    pipelines: dict[str, Any]
    report: HoldoutReport


class _LabelModel:
    """One label's fitted pipeline, with the word weights the reason needs laid out once."""

    def __init__(self, pipeline: Any):
        self.features = pipeline["features"]
        self.classifier = pipeline["classifier"]
        self.classes = self.classifier.classes_
        self.words = self.features.named_transformers["words"].get_feature_names_out()
        coef = self.classifier.calibrated_classifiers_[0].estimator.coef_
        coef = np.vstack([-coef, coef]) if len(self.classes) == 2 else coef  # binary: one row, for classes_[1]
        self.word_weights = coef[:, : len(self.words)]  # the word block comes first in the FeatureUnion

    def predict(self, texts: list[str]) -> list[Prediction]:
        """One vectorised call for many texts: the transform and the probabilities of a batch cost little
        more than those of one text."""
        x = self.features.transform(texts)
        proba = self.classifier.predict_proba(x)
        ranked = np.argsort(proba, axis=1)[:, ::-1][:, :2]
        rows = x.tocsr()
        return [Prediction(label=str(self.classes[best]), probability=float(proba[i, best]),
                           runner_up=str(self.classes[second]), runner_up_probability=float(proba[i, second]),
                           terms=self._top_terms(rows.indices[rows.indptr[i]:rows.indptr[i + 1]],
                                                 rows.data[rows.indptr[i]:rows.indptr[i + 1]], best))
                for i, (best, second) in enumerate(ranked)]

    def _top_terms(self, indices: Any, data: Any, label: int, n: int = 3) -> list[str]:
        """The input's words and word pairs that weigh most for ``label`` — readable, unlike char n-grams.
        ``indices``, ``data``: the input's row of the batch's features, sliced (``getrow`` built a
        matrix per row: a third of a batch's time)."""
        known = indices < len(self.words)
        index = indices[known]
        pull = data[known] * self.word_weights[label, index]
        return [str(self.words[index[i]]) for i in np.argsort(pull)[::-1][:n] if pull[i] > 0]


class _Batches:
    """The predictions of the requests in flight, many at once, off the event loop.

    A request arriving while nothing is being predicted starts a batch of one at once (no waiting at
    low load); requests arriving while the worker thread predicts wait, and the worker then takes all
    that waited (up to ``most``) in one vectorised call. So a busy classify stage pays scikit-learn's
    per-call cost once per batch instead of once per record, and its event loop never runs it (the
    sparse kernels release the GIL). One worker thread for the process: a fitted pipeline is read-only,
    and one thread keeps the batches large. State is per event loop, since futures belong to one loop.
    """

    def __init__(self, predict: Callable[[list[str]], list[dict[str, Prediction]]], most: int = 512):
        self._predict = predict
        self.most = most
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="embedded-predict")
        self._loops: WeakKeyDictionary[asyncio.AbstractEventLoop, _Waiting] = WeakKeyDictionary()
        self.calls = 0
        """Vectorised calls made (tests see the batching)."""

    async def predict(self, text: str) -> dict[str, Prediction]:
        loop = asyncio.get_running_loop()
        waiting = self._loops.setdefault(loop, _Waiting())
        future = loop.create_future()
        waiting.texts.append((text, future))
        if not waiting.busy:
            self._start(loop, waiting)
        return await future

    def _start(self, loop: asyncio.AbstractEventLoop, waiting: _Waiting) -> None:
        batch, waiting.texts = waiting.texts[:self.most], waiting.texts[self.most:]
        waiting.busy = True
        self.calls += 1
        job = loop.run_in_executor(self._worker, self._predict, [text for text, _ in batch])
        job.add_done_callback(lambda done: self._finished(loop, waiting, batch, done))

    def _finished(self, loop, waiting: _Waiting, batch, done: asyncio.Future) -> None:
        waiting.busy = False
        error = done.exception()
        for index, (_, future) in enumerate(batch):
            if not future.done():
                future.set_exception(error) if error else future.set_result(done.result()[index])
        if waiting.texts:
            self._start(loop, waiting)


class _Waiting:
    """One event loop's requests waiting for the worker, and whether it is predicting for that loop."""

    def __init__(self) -> None:
        self.texts: list[tuple[str, asyncio.Future]] = []
        self.busy = False


def _pipeline(n_folds: int, seed: int) -> Any:
    """Imported here: scikit-learn takes over a second to import, and loading a workflow
    (which names a TrainingSpec) must not pay for it."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import FeatureUnion, Pipeline
    from sklearn.svm import LinearSVC

    features = FeatureUnion([
        ("words", TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2, token_pattern=r"(?u)\b\w+\b")),
        ("chars", TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, min_df=2)),
    ])
    # ensemble=False: one SVM fitted on all training rows (whose weights explain answers),
    # its temperature fitted on out-of-fold scores.
    classifier = CalibratedClassifierCV(LinearSVC(C=0.5, random_state=seed), method="temperature",
                                        cv=n_folds, ensemble=False)
    return Pipeline([("features", features), ("classifier", classifier)])


def _fit_label(field: str, texts: list[str], labels: list[str], seed: int) -> Any:
    classes, counts = np.unique(labels, return_counts=True)
    if len(classes) < 2 or counts.min() < 2:
        rare = classes[counts.argmin()]
        raise ValueError(f"label {field!r}: needs at least two classes with two examples each "
                         f"(classes: {len(classes)}, {rare!r} has {counts.min()})")
    return _pipeline(min(3, int(counts.min())), seed).fit(texts, labels)


def _calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = 10) -> float:
    """How far stated confidence is from observed accuracy, averaged over confidence bins."""
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    return float(sum(abs(correct[which == b].mean() - confidence[which == b].mean()) * (which == b).mean()
                     for b in range(bins) if (which == b).any()))


def _read_rows(path: Path) -> list[dict[str, Any]]:
    if path.suffix == ".jsonl":
        return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
    if path.suffix == ".csv":
        with path.open(newline="") as f:
            return list(csv.DictReader(f))
    raise ValueError(f"{path}: examples must be .jsonl or .csv")


def _field(row: dict[str, Any], where: str) -> Any:
    """A CSV column by name, else a dotted path into a JSON object; None when absent."""
    return row[where] if where in row else lookup(row, where)


class EmbeddedProvider(Provider):
    """Answers from a classifier trained on ``spec.examples``; trains lazily, once per process at most."""

    name = "embedded"

    def __init__(self, spec: TrainingSpec, base_dir: Path, *, model: str = "embedded:tfidf-svm",
                 cache_dir: Path = CACHE_DIR, completion: Completion | None = None):
        self.spec = spec
        self.completion = completion
        self.path = Path(base_dir) / spec.examples
        self.learned_path = None if spec.learned is None else Path(base_dir) / spec.learned
        self.model = model
        self.cache_dir = Path(cache_dir)
        self._lock = threading.Lock()
        self._models: dict[str, _LabelModel] | None = None
        self._report: HoldoutReport | None = None
        self._batches = _Batches(self._predict)

    # -- the data -------------------------------------------------------------------------------

    def examples(self, path: Path | None = None) -> list[Example]:
        """Every example in the file (``path``: another file of the same format), in file order. A missing text
        is empty, as it would be in a request (``PromptSpec.select_inputs``); a missing label is an error."""
        path = path or self.path
        return [self.example(row, f"{path}: example {number}")
                for number, row in enumerate(_read_rows(path), start=1)]

    def example(self, row: dict[str, Any], where: str) -> Example:
        """One row as an example; ``where`` names it when a label is missing."""
        labels = {answer: _field(row, at) for answer, at in self.spec.labels.items()}
        missing = [self.spec.labels[answer] for answer, label in labels.items() if label is None]
        if missing:
            raise ValueError(f"{where} has no label at {', '.join(missing)}")
        return Example(inputs=self._inputs(row), labels={k: str(v) for k, v in labels.items()}, row=row)

    def text(self, row: dict[str, Any]) -> str:
        """What the classifier reads of a row (a trigger event, an example)."""
        return self.spec.compose(self._inputs(row))

    def _inputs(self, row: dict[str, Any]) -> dict[str, Any]:
        return {path: _field(row, at) for path, at in self.spec.text.items()}

    def learned(self, holdout: list[Example] | None = None) -> list[Example]:
        """The learned rows training adds to its split, without any whose text is a held-out example's
        (``holdout``: the held-out split when the caller has read it already)."""
        if self.learned_path is None or not self.learned_path.exists():
            return []
        held = {self.spec.compose(e.inputs) for e in (self.holdout_examples() if holdout is None else holdout)}
        return [e for e in self.examples(self.learned_path) if self.spec.compose(e.inputs) not in held]

    def split(self) -> tuple[list[Example], list[Example]]:
        """(training, held-out) examples, each in file order."""
        parts: tuple[list[Example], list[Example]] = ([], [])
        for example in self.examples():
            parts[self.spec.held_out(self.spec.compose(example.inputs))].append(example)
        return parts

    def holdout_examples(self) -> list[Example]:
        """The examples training never saw — replay these to measure the model honestly."""
        return self.split()[1]

    @property
    def cache_path(self) -> Path:
        """Keyed by everything that shapes the fit, so a changed file, spec or recipe never loads a stale model."""
        key = hashlib.sha256()
        learned = self.learned_path.read_bytes() if self.learned_path and self.learned_path.exists() else b""
        for part in (self.path.read_bytes(), learned, self.spec.model_dump_json().encode(),
                     version("scikit-learn").encode(), Path(__file__).read_bytes()):
            key.update(hashlib.sha256(part).digest())
        return self.cache_dir / f"embedded-{key.hexdigest()[:24]}.pkl"

    # -- training -------------------------------------------------------------------------------

    def train(self) -> None:
        """Load the cached model, or fit and cache it. Idempotent and thread-safe: concurrent
        callers wait for the one fit."""
        with self._lock:
            if self._models is not None:
                return
            path = self.cache_path
            if path.exists():
                artifact = pickle.loads(path.read_bytes())
            else:
                artifact = self._fit()
                self._store(path, artifact)
            self._models = {field: _LabelModel(p) for field, p in artifact.pipelines.items()}
            self._report = artifact.report

    def predictions(self, texts: list[str]) -> list[dict[str, Prediction]]:
        """Every label's prediction for each text, at once (offline work such as retraining; stages use
        ``complete``)."""
        self.train()
        return self._predict(texts)

    def evaluate(self) -> HoldoutReport:
        """Accuracy and calibration on the held-out split, as measured when the model was fitted."""
        self.train()
        return self._report

    def _fit(self) -> _Artifact:
        started = time.perf_counter()
        train, holdout = self.split()
        train += self.learned(holdout)
        train_texts = [self.spec.compose(e.inputs) for e in train]
        pipelines = {field: _fit_label(field, train_texts, [e.labels[field] for e in train], self.spec.seed)
                     for field in self.spec.labels}
        train_seconds = time.perf_counter() - started
        labels = {field: self._measure(pipeline, field, len(train), holdout)
                  for field, pipeline in pipelines.items()}
        report = HoldoutReport(model=self.model, labels=labels, train_seconds=round(train_seconds, 3))
        return _Artifact(pipelines=pipelines, report=report)

    def _measure(self, pipeline: Any, field: str, n_train: int, holdout: list[Example]) -> LabelReport:
        scores = {}
        if holdout:
            proba = pipeline.predict_proba([self.spec.compose(e.inputs) for e in holdout])
            correct = pipeline.classes_[proba.argmax(axis=1)] == np.array([e.labels[field] for e in holdout])
            scores = {"accuracy": round(float(correct.mean()), 4),
                      "calibration_error": round(_calibration_error(proba.max(axis=1), correct), 4)}
        return LabelReport(classes=len(pipeline.classes_), n_train=n_train, n_holdout=len(holdout), **scores)

    @staticmethod
    def _store(path: Path, artifact: _Artifact) -> None:
        """Written aside and renamed, so a process starting meanwhile never reads half a file."""
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        partial.write_bytes(pickle.dumps(artifact, protocol=pickle.HIGHEST_PROTOCOL))
        os.replace(partial, path)

    # -- answering ------------------------------------------------------------------------------

    def _predict(self, texts: list[str]) -> list[dict[str, Prediction]]:
        """Every label's prediction for each text (on the batches' worker thread)."""
        per_field = {name: model.predict(texts) for name, model in self._models.items()}
        return [{name: predictions[i] for name, predictions in per_field.items()} for i in range(len(texts))]

    async def complete(self, request: ModelRequest) -> ModelAnswer:
        """Deterministic, so a repair attempt gets the same answer; validation decides what then."""
        if self._models is None:
            await asyncio.to_thread(self.train)  # seconds of fitting must not stall the event loop
        started = time.perf_counter()
        text = self.spec.compose(request.inputs)
        predictions = await self._batches.predict(text)
        reason = "embedded classifier: " + "; ".join(p.explain(f) for f, p in predictions.items())
        answer = {field: p.label for field, p in predictions.items()}
        answer["confidence"] = round(predictions[self.spec.confidence_label].probability, 4)
        answer["reason"] = reason if len(reason) <= REASON_CHARS else reason[: REASON_CHARS - 1] + "…"
        if self.completion is not None:
            answer = self.completion(answer, request.inputs)
        properties = request.output_schema.get("properties", {})
        body = orjson.dumps({k: v for k, v in answer.items() if k in properties}).decode()
        return ModelAnswer(text=body, model=self.model, tokens_in=len(text.split()), tokens_out=len(body.split()),
                           latency_ms=(time.perf_counter() - started) * 1000)
