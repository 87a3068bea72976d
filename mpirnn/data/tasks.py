"""What a dataset teaches: its task, its class names, and how its labels are stored.

The dataset decides the task and the manifest records it (docs/tasks.md):

    next      the next token / value at every step (streams and unlabelled rows)
    tag       one class per time step      labels [n, T] int32, LABEL_FILL at padded steps
    classify  one class per sequence       labels [n] int32
    regress   one value vector per sequence  labels [n, K] float32 (data units on disk)

`TaskSpec` is the manifest's part about labels; it is checked on construction, like the
Manifest itself, and never opens a shard.
Exercised by: python -m pytest -q tests/test_data_labelled_npy.py
"""

from __future__ import annotations

from dataclasses import dataclass

from mpirnn.data.normalization import Normalization, normalization_from_json
from mpirnn.errors import DataError

TASKS = ("next", "tag", "classify", "regress")
LABELLED_TASKS = TASKS[1:]
CLASS_TASKS = ("tag", "classify")
# The label stored at a padded step of a `tag` row: never a class id, so a loss that forgot
# the lengths would fail loudly instead of learning the padding.
LABEL_FILL = -1
_FIX = "re-run python -m mpirnn.data prepare"


@dataclass(frozen=True)
class TaskSpec:
    """The task and what its labels mean: class names (tag, classify) in id order, or the
    number of regression targets K and their train-split mean/std (regress)."""

    task: str = "next"
    classes: tuple[str, ...] | None = None
    targets: int | None = None
    target_normalization: Normalization | None = None
    label_fill: int | None = None

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise DataError(f"unknown task {self.task!r} (expected one of {', '.join(TASKS)}): "
                            f"{_FIX}")
        has_classes = self.task in CLASS_TASKS
        if has_classes != (self.classes is not None) or (has_classes and not self.classes):
            raise DataError(f"task {self.task!r} {'needs' if has_classes else 'has no'} class "
                            f"names (classes): {_FIX}")
        if has_classes and len(set(self.classes)) != len(self.classes):
            raise DataError(f"class names repeat in {list(self.classes)}: {_FIX}")
        if (self.task == "regress") != (self.targets is not None and self.targets > 0):
            raise DataError(f"targets (regression values per sequence) must be a positive "
                            f"integer exactly for task 'regress', got {self.targets!r}: {_FIX}")
        if self.target_normalization is not None and self.task != "regress":
            raise DataError(f"target_normalization applies to task 'regress' only: {_FIX}")
        if (self.task == "tag") != (self.label_fill is not None):
            raise DataError(f"label_fill (the label at padded steps) is recorded exactly for "
                            f"task 'tag', got {self.label_fill!r}: {_FIX}")

    @property
    def labelled(self) -> bool:
        """True for tag, classify and regress: the shards hold lengths and labels."""
        return self.task != "next"

    @property
    def n_classes(self) -> int | None:
        return None if self.classes is None else len(self.classes)

    def label_shape(self, seq_len: int) -> tuple[int, ...]:
        """The shape of one row's labels: () classify, (T,) tag, (K,) regress."""
        return {"tag": (seq_len,), "classify": (), "regress": (self.targets,)}[self.task]

    @property
    def label_dtype(self) -> str:
        return "float32" if self.task == "regress" else "int32"

    def describe(self) -> str:
        """One line for prepare and info: the task and its classes or targets."""
        if self.task == "next":
            return "task next (the next step at every step)"
        if self.task == "regress":
            return f"task regress: {self.targets} value(s) per sequence"
        shown = ", ".join(self.classes[:12]) + (" ..." if len(self.classes) > 12 else "")
        per = "per time step" if self.task == "tag" else "per sequence"
        return f"task {self.task}: one of {len(self.classes)} classes {per} ({shown})"

    def to_json(self) -> dict:
        """The manifest fields: task, classes, targets, target_normalization, label_fill."""
        return {"task": self.task, "classes": None if self.classes is None else list(self.classes),
                "targets": self.targets,
                "target_normalization": self.target_normalization and self.target_normalization.to_json(),
                "label_fill": self.label_fill}


def task_from_json(obj: dict, where: str) -> TaskSpec:
    """The TaskSpec of a manifest object; `next` when no task is recorded (versions 1 and 2)."""
    task = obj.get("task", "next")
    classes = obj.get("classes")
    if classes is not None and (not isinstance(classes, list)
                                or not all(isinstance(c, str) for c in classes)):
        raise DataError(f"{where}: classes must be a list of names: {_FIX}")
    targets, fill = obj.get("targets"), obj.get("label_fill")
    for name, value in (("targets", targets), ("label_fill", fill)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise DataError(f"{where}: {name} must be an integer or null, got {value!r}: {_FIX}")
    if not isinstance(task, str):
        raise DataError(f"{where}: task must be a string, got {task!r}: {_FIX}")
    try:
        return TaskSpec(task, None if classes is None else tuple(classes), targets,
                        normalization_from_json(obj.get("target_normalization"), targets or 0,
                                                where), fill)
    except DataError as exc:
        raise DataError(f"{where}: {exc}") from None
