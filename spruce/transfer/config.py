"""Settings of transfer from auxiliary tasks during pruning: which tasks, how, what, when.

* **Auxiliary tasks** (:class:`AuxTask`): ``mlm`` on unlabelled text (a file, or by
  default the unlabelled remainder of the target's training file), ``task``, a labelled
  classification file, and ``distill``, the dense teacher's predictions on unlabelled
  in-domain text shaped as the target's (same default, or a file). Each has a loss
  weight; all share the encoder.
* **How** (``coupling``): ``none`` (target only, the baseline), ``sequential`` (a pruning
  stage on the auxiliary tasks, then the target's), ``joint`` (one multitask objective
  while pruning), ``tied`` (joint, with separate gates per task pulled together by
  ``tie_strength * mean((P_target - P_aux)^2)`` per unit type).
* **What** (``transfer``): for ``sequential``, which of the auxiliary stage's encoder
  weights and gates start the target stage (``weights``, ``masks``, ``both``); for
  ``joint``, whether the tasks share gates (``masks`` and ``both``, the same thing) or
  each has its own (``weights``: only the encoder is shared). ``tied`` always has separate gates.
* **When** (``schedule``): the auxiliary loss weight over the target's steps:
  ``constant``, ``prune-only`` (none in the final fine-tune), ``linear-decay`` (1 -> 0
  over pruning and final fine-tune), ``warmup:K`` (only the first K steps),
  ``delayed:K`` (from step K on). ``sequential`` uses the auxiliary tasks in its first
  stage only, so it has no schedule.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from spruce.config import AT_LEAST_ONE, NON_NEGATIVE, Bounds, check_settings, setting
from spruce.data.augment import AUGMENTS, SELECTS
from spruce.errors import SpruceError
from spruce.utils.fields import checked_fields

COUPLINGS = ("none", "sequential", "joint", "tied")
TRANSFERS = ("weights", "masks", "both")
SCHEDULES = ("constant", "prune-only", "linear-decay", "warmup:K", "delayed:K")
AUX_KINDS = ("mlm", "task", "distill")


# Loss weight of each kind when none is given. MLM's cross-entropy through a fresh head over
# a 30k-word vocabulary stays near 7 against a task loss below 0.5; on SST-2 (1,000
# labelled, 90%) weights 0.03 / 0.1 / 0.3 gave 0.7408 / 0.7489 / 0.7557 test accuracy, and
# weight 1 kept the demo's gates from reaching their target (docs/results.md, issue 4).
# distill's KL and a labelled task's cross-entropy are on the target loss's scale.
DEFAULT_AUX_WEIGHTS = {"mlm": 0.3, "task": 1.0, "distill": 1.0}


@dataclass(frozen=True)
class AuxTask:
    """One auxiliary task. ``path`` None for ``mlm`` and ``distill`` means the target's
    unlabelled rest; ``weight`` None means the kind's default (``DEFAULT_AUX_WEIGHTS``)."""

    kind: str
    path: str | None = None
    weight: float | None = None
    text_columns: tuple[str, ...] | None = None
    label_column: str | None = None

    def validate(self) -> AuxTask:
        if self.kind not in AUX_KINDS:
            raise SpruceError(
                f"auxiliary task kind '{self.kind}' is not known",
                f"use {', '.join(AUX_KINDS)} (e.g. --aux mlm or --aux task:PATH)",
            )
        if self.kind == "task" and not self.path:
            raise SpruceError("--aux task needs a data file", "write --aux task:PATH")
        if self.weight is None:
            return replace(self, weight=DEFAULT_AUX_WEIGHTS[self.kind]).validate()
        if not self.weight > 0:
            raise SpruceError(f"--aux-weight must be positive, got {self.weight}")
        if self.text_columns is not None and not self.text_columns:
            # No columns means "detect them", as None does; to_dict writes both as None.
            return replace(self, text_columns=None)
        return self

    @property
    def name(self) -> str:
        return self.kind if self.path is None else f"{self.kind}:{self.path}"

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["text_columns"] = list(self.text_columns) if self.text_columns else None
        return values


def parse_aux(spec: str) -> AuxTask:
    """``mlm[:PATH]``, ``task:PATH`` or ``distill[:PATH]`` -> :class:`AuxTask` (the kind's
    default weight)."""
    kind, _, path = spec.partition(":")
    return AuxTask(kind=kind.strip(), path=path.strip() or None).validate()


def aux_tasks(
    specs: Sequence[str | Mapping[str, Any]],
    weights: Sequence[float] = (),
    text_columns: Sequence[str] | None = None,
    label_column: str | None = None,
) -> tuple[AuxTask, ...]:
    """Auxiliary tasks from specs (``mlm``, ``task:PATH``, or mappings of AuxTask fields)
    with the command line's ``--aux-weight`` (one for all, or one per task),
    ``--aux-text-columns`` and ``--aux-label-column``."""
    if weights and len(weights) not in (1, len(specs)):
        raise SpruceError(
            f"{len(weights)} --aux-weight values for {len(specs)} --aux tasks",
            "give one weight for all, or one per --aux",
        )
    tasks = []
    for index, spec in enumerate(specs):
        if isinstance(spec, Mapping):
            tasks.append(AuxTask(**checked_fields(AuxTask, spec, "auxiliary task setting")))
            continue
        task = parse_aux(spec)
        weight = weights[index if len(weights) > 1 else 0] if weights else task.weight
        columns = tuple(text_columns) if text_columns else None
        tasks.append(replace(task, weight=weight, text_columns=columns, label_column=label_column))
    return tuple(task.validate() for task in tasks)


@dataclass(frozen=True)
class Schedule:
    """Auxiliary loss weight factor per target step; see the module docstring."""

    kind: str = "constant"
    steps: int = 0

    @classmethod
    def parse(cls, text: str) -> Schedule:
        kind, _, count = text.partition(":")
        if kind in ("warmup", "delayed"):
            if not count.isdigit() or int(count) <= 0:
                raise SpruceError(
                    f"--aux-schedule {text} needs a positive step count",
                    f"write e.g. {kind}:100",
                )
            return cls(kind, int(count))
        if kind in ("constant", "prune-only", "linear-decay") and not count:
            return cls(kind)
        raise SpruceError(
            f"--aux-schedule {text} is not known",
            f"use one of {', '.join(SCHEDULES)}",
        )

    def __str__(self) -> str:
        return f"{self.kind}:{self.steps}" if self.kind in ("warmup", "delayed") else self.kind

    def factor(self, phase: str, step: int, total_steps: int) -> float:
        """Weight factor at target ``step`` (counted over pruning and final fine-tune;
        ``total_steps`` is their sum) of ``phase`` ("prune" or "final")."""
        if self.kind == "prune-only":
            return 1.0 if phase == "prune" else 0.0
        if self.kind == "linear-decay":
            return max(0.0, 1.0 - step / max(1, total_steps))
        if self.kind == "warmup":
            return 1.0 if step < self.steps else 0.0
        if self.kind == "delayed":
            return 1.0 if step >= self.steps else 0.0
        return 1.0


# What ``spruce prune`` does when auxiliary data is given without --coupling/--transfer/
# --aux-schedule: the best configuration of the transfer grid (docs/results.md).
DEFAULT_WITH_AUX = {"coupling": "joint", "transfer": "both", "schedule": "prune-only"}


@dataclass
class TransferConfig:
    """Auxiliary tasks and the how/what/when of using them while pruning.

    ``coupling`` None means joint when auxiliary tasks are given, else none."""

    # Built from --aux SPEC (and its weight and column options) by the command line.
    aux: tuple[AuxTask, ...] = ()
    coupling: str | None = setting(
        None,
        "how tasks are coupled (default: joint with --aux, else none)",
        choices=COUPLINGS,
        group="transfer from auxiliary tasks",
    )
    transfer: str = setting(
        DEFAULT_WITH_AUX["transfer"],
        "what the tasks share or pass on",
        choices=TRANSFERS,
        group="transfer from auxiliary tasks",
    )
    schedule: str = setting(
        DEFAULT_WITH_AUX["schedule"],
        f"when the auxiliary loss applies: {', '.join(SCHEDULES)}",
        flag="--aux-schedule",
        metavar="WHEN",
        group="transfer from auxiliary tasks",
    )
    tie_strength: float = setting(
        1.0,
        "tied: weight of the penalty pulling the gate sets' keep-probabilities together",
        bounds=NON_NEGATIVE,
        group="transfer from auxiliary tasks",
    )
    aux_ratio: float = setting(
        1.0,
        "auxiliary batches per target batch, per auxiliary task",
        bounds=Bounds(low=0, high=16, low_open=True),
        group="transfer from auxiliary tasks",
    )
    aux_steps: int | None = setting(
        None,
        "sequential: steps of the auxiliary stage (default: the pruning phase's)",
        bounds=AT_LEAST_ONE,
        group="transfer from auxiliary tasks",
    )
    aux_batch_size: int | None = setting(
        None,
        "auxiliary examples a step (default: --batch-size)",
        bounds=AT_LEAST_ONE,
        group="transfer from auxiliary tasks",
    )
    mlm_probability: float = setting(
        0.15,
        "mlm: fraction of tokens masked",
        bounds=Bounds(low=0, high=1, low_open=True, high_open=True),
        group="transfer from auxiliary tasks",
    )
    augment: str | None = setting(
        None,
        "distill: augment its unlabelled text (concat: join each text with another; "
        "default: none under --recipe distill, which selects the longest texts instead)",
        flag="--aux-augment",
        choices=AUGMENTS,
        group="transfer from auxiliary tasks",
    )
    select: str | None = setting(
        None,
        "distill: which unlabelled texts it reads (longest: as many of the longest as the "
        "run has steps to read, each about once; default: longest under --recipe distill, "
        "else all)",
        flag="--aux-select",
        choices=SELECTS,
        group="transfer from auxiliary tasks",
    )
    distill_layers: bool = setting(
        False,
        "distill: match the teacher's hidden layers on the unlabelled text too (the layer "
        "loss of the labelled batches, with a projection of its own)",
        flag="--aux-distill-layers",
        group="transfer from auxiliary tasks",
    )

    def __post_init__(self) -> None:
        if self.coupling is None:
            self.coupling = DEFAULT_WITH_AUX["coupling"] if self.aux else "none"
        check_settings(self)

    def validate(self) -> TransferConfig:
        check_settings(self)
        self.aux = tuple(task.validate() for task in self.aux)
        Schedule.parse(self.schedule)
        if self.coupling != "none" and not self.aux:
            raise SpruceError(
                f"--coupling {self.coupling} needs at least one auxiliary task",
                "add --aux mlm (the unlabelled rest of --train) or --aux task:PATH",
            )
        return self

    @property
    def active(self) -> bool:
        return self.coupling != "none"

    @property
    def distill_augment(self) -> str:
        """What ``distill`` does to its unlabelled text (the recipe may have set it)."""
        return self.augment or "none"

    @property
    def distill_select(self) -> str:
        """Which unlabelled texts ``distill`` reads (the recipe may have set it)."""
        return self.select or "all"

    @property
    def shared_gates(self) -> bool:
        """Joint coupling with one set of gates for every task."""
        return self.coupling == "joint" and self.transfer in ("masks", "both")

    @property
    def parsed_schedule(self) -> Schedule:
        return Schedule.parse(self.schedule)

    def canonical(self) -> TransferConfig:
        """The same behaviour with the settings that do not apply reset to defaults, so two
        configurations that run identically compare (and hash) equal: ``none`` ignores
        everything, ``sequential`` has no schedule, ``tied`` no transfer choice, ``joint``
        with ``masks`` is ``joint`` with ``both`` (shared gates), and only ``tied`` uses
        ``tie_strength``."""
        defaults = TransferConfig()
        if self.coupling == "none":
            return replace(defaults, aux=())
        canonical = replace(self)
        if self.coupling == "sequential":
            canonical = replace(canonical, schedule=defaults.schedule)
        else:
            canonical = replace(canonical, aux_steps=None)
        if self.coupling == "tied":
            canonical = replace(canonical, transfer="weights")
        elif self.coupling == "joint" and self.transfer == "masks":
            canonical = replace(canonical, transfer="both")  # both mean: shared gates
        if self.coupling != "tied":
            canonical = replace(canonical, tie_strength=defaults.tie_strength)
        return canonical

    def to_report(self) -> dict[str, Any]:
        """The ``transfer`` section of report.json: the settings, with None for those the
        coupling does not use (see :meth:`canonical`)."""
        values = self.to_dict()
        canonical = self.canonical().to_dict()
        defaults = TransferConfig().to_dict()
        for key in ("transfer", "schedule", "tie_strength", "aux_steps"):
            used = {
                "transfer": self.coupling in ("sequential", "joint"),
                "schedule": self.coupling in ("joint", "tied"),
                "tie_strength": self.coupling == "tied",
                "aux_steps": self.coupling == "sequential",
            }[key]
            values[key] = canonical[key] if used else None
        if self.coupling == "tied":
            values["transfer"] = None  # separate gates by definition
        if self.coupling == "none":
            values = {**defaults, **{k: None for k in defaults if k != "coupling"}, "aux": []}
        return values

    def to_dict(self) -> dict[str, Any]:
        """All settings (the ``config.transfer`` section of report.json)."""
        values = asdict(self)
        values["aux"] = [task.to_dict() for task in self.aux]
        return values

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TransferConfig:
        """Settings as :meth:`to_dict` writes them; a wrong key or value type is a
        :class:`SpruceError` naming the setting."""
        if isinstance(values, Mapping) and "aux" in values and values["aux"] is None:
            # null means no auxiliary tasks, as an empty list does
            values = {key: value for key, value in values.items() if key != "aux"}
        return cls(**checked_fields(cls, values, "transfer setting")).validate()


# The TransferConfig settings each coupling ignores (see TransferConfig.canonical).
IGNORED_BY_COUPLING = {
    "none": ("aux", "aux_ratio", "aux_steps", "schedule", "transfer", "tie_strength",
             "aux_batch_size", "mlm_probability", "augment", "select", "distill_layers"),
    "sequential": ("schedule", "tie_strength"),
    "joint": ("aux_steps", "tie_strength"),
    "tied": ("aux_steps", "transfer"),
}  # fmt: skip
