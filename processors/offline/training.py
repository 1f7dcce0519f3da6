"""Retraining the embedded model on what people and outcomes taught (``handoff model train``).

The rows come from reviewers' corrections (processors/ops/corrections.py) and from joined outcomes
under the workflow's ``datasets.outcomes`` rules (processors/ops/evidence.py), each a trigger event
with its ``expected`` answer. They become the file the training spec names as ``learned``, which
the embedded model adds, whole, to its training split — so every stage that loads the model from
then on loads the retrained one (the disk cache is keyed by that file too).

**The held-out split stays untouched.** It is the examples file's own hashed split; a learned row is
never held out (its text was decided on already, so it is no fair test), and a learned row whose
text *is* a held-out example's is left out of training, so the measure cannot learn its own answers.
Old and new figures are therefore on the same rows, side by side.

**A row against a label** (a lead decided "purchase", then disqualified) says what the label is not.
It is trained as the likeliest other label the current model gives its text: the evidence moves the
example off the label it contradicts, and nothing else is invented. A row whose answer lacks one of
the labels the model learns is left out and counted.
"""

from __future__ import annotations

import copy
from pathlib import Path

from pydantic import BaseModel

from processors.project import write_rows
from processors.providers.embedded import EmbeddedProvider, HoldoutReport
from processors.records import LABELS_FIELD
from processors.workflow.workflow import Workflow

EVIDENCE_FIELD = "evidence"
"""Inside ``expected``: an outcome row's evidence; ``against`` names the label it contradicts."""


class TrainError(ValueError):
    """The workflow's model cannot be retrained as asked; the message says what to change."""


class Retrained(BaseModel):
    workflow: str
    path: Path
    sources: dict[str, int]
    learned: int
    left_out: int
    old: HoldoutReport
    new: HoldoutReport

    def table(self) -> str:
        """Old and new held-out figures side by side, one line per label."""
        given = ", ".join(f"{n} from {source}" for source, n in self.sources.items())
        lines = [f"model {self.workflow}: learned {self.learned} rows ({given}; {self.left_out} left out) "
                 f"-> {self.path}",
                 f"{'held-out accuracy':<20} {'n':>5} {'old':>8} {'new':>8} {'change':>8}"]
        for label, old in self.old.labels.items():
            new = self.new.labels[label]
            if old.accuracy is None or new.accuracy is None:
                lines.append(f"{label:<20} {old.n_holdout:>5} {'n/a':>8} {'n/a':>8}")
                continue
            lines.append(f"{label:<20} {old.n_holdout:>5} {old.accuracy:>8.3f} {new.accuracy:>8.3f} "
                         f"{new.accuracy - old.accuracy:>+8.3f}")
        lines.append(f"trained on {self.old.labels[next(iter(self.old.labels))].n_train} -> "
                     f"{self.new.labels[next(iter(self.new.labels))].n_train} examples; the held-out rows are the same")
        return "\n".join(lines)


def embedded(workflow: Workflow) -> EmbeddedProvider:
    """The workflow's embedded model (a cascade's first), which must name a ``learned`` file."""
    model = workflow.provider()
    if not isinstance(model, EmbeddedProvider):
        raise TrainError(f"{workflow.name}: its model is {workflow.model.kind}; `model train` retrains an embedded one")
    if model.learned_path is None:
        raise TrainError(f"{workflow.name}: model.training names no `learned` file to train from "
                         f"(e.g. learned: datasets/learned.jsonl)")
    odd = [f"{field}: {path}" for field, path in model.spec.labels.items() if path != f"{LABELS_FIELD}.{field}"]
    if odd:
        raise TrainError(f"{workflow.name}: learned rows carry each label as {LABELS_FIELD}.<field>, as corrections "
                         f"and outcomes do; model.training.labels maps {', '.join(odd)}")
    return model


def retrain(workflow: Workflow, sources: dict[str, list[dict]]) -> Retrained:
    """Write the rows of ``sources`` (name -> rows) as the learned file, retrain, and measure both models on the
    held-out split."""
    current = embedded(workflow)
    old = current.evaluate()
    rows = [row for found in sources.values() for row in found]
    learned = [row for row in _resolved(current, workflow.label, rows) if _complete(current, row)]
    write_rows(current.learned_path, learned)
    held = {current.spec.compose(e.inputs) for e in current.holdout_examples()}
    in_holdout = sum(current.text(row) in held for row in learned)
    return Retrained(workflow=workflow.name, path=current.learned_path,
                     sources={name: len(found) for name, found in sources.items()}, learned=len(learned) - in_holdout,
                     left_out=len(rows) - len(learned) + in_holdout, old=old, new=embedded(workflow).evaluate())


def _resolved(model: EmbeddedProvider, label: str, rows: list[dict]) -> list[dict]:
    """The rows with every ``against`` label replaced by the current model's likeliest other label."""
    against = [row for row in rows if (row[LABELS_FIELD].get(EVIDENCE_FIELD) or {}).get("against")]
    if not against:
        return rows
    predictions = model.predictions([model.text(row) for row in against])
    out = {id(row): row for row in rows}
    for row, predicted in zip(against, predictions):
        contradicted = row[LABELS_FIELD][EVIDENCE_FIELD]["against"][label]
        best = predicted[label]
        resolved = copy.deepcopy(row)
        resolved[LABELS_FIELD][label] = best.runner_up if best.label == contradicted else best.label
        out[id(row)] = resolved
    return [out[id(row)] for row in rows]


def _complete(model: EmbeddedProvider, row: dict) -> bool:
    try:
        model.example(row, "")
    except ValueError:
        return False
    return True
