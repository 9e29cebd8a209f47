"""What ``spruce prune`` does when asked for nothing but a target: the recipe.

``distill`` (the default) is the best recipe measured under a thousand labels
(docs/results.md, "The default recipe"): a dense teacher -- ``--teacher``, else
``--model`` itself when it already is a fine-tuned classifier for the task, else one
fine-tuned first on the labelled data -- is distilled into the pruned model on the
labelled batches and, jointly, on unlabelled in-domain text (the rows of ``--train``
left unlabelled and ``--unlabelled FILE``; of those, the longest the run has steps to
read, ``--aux-select longest``) while the masks are learned (5 epochs,
``RECIPE_PRUNE_EPOCHS``) and again in the final fine-tune of the compact model (5
epochs without early stopping, the best validation step kept: ``RECIPE_FINAL_EPOCHS``,
``RECIPE_FINAL_PATIENCE``); the student's labelled batches are drawn by length
(``RECIPE_GROUP_BY_LENGTH``). Without any unlabelled text it distils on the labelled
text alone, and says so.

``plain`` prunes on the labelled data's cross-entropy alone, with only what the options
ask for (``--teacher``, ``--distill``, ``--aux``).

Options the user set explicitly are kept: ``--aux`` (and its coupling settings) replace
the recipe's auxiliary task.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from spruce.data import TaskData
from spruce.models import task_classifier_dir
from spruce.pruning.config import PruneConfig
from spruce.transfer.config import AuxTask, TransferConfig

# The measured best transfer (docs/results.md, "The best transfer over three seeds" and
# "The default recipe"): the teacher's predictions on the unlabelled text as a joint
# auxiliary task of shared structure, in the pruning phase and the final fine-tune, on
# the longest unlabelled texts (which replaced joining short texts in pairs).
DISTILL_TRANSFER = {"coupling": "joint", "transfer": "both", "schedule": "constant"}


def plan_teacher(prune: PruneConfig) -> PruneConfig:
    """Before the data is read: the ``distill`` recipe has a teacher (a fine-tuned one
    unless :func:`resolve_recipe` later finds ``--model`` fit to teach)."""
    if prune.recipe != "distill" or prune.uses_teacher:
        return prune
    return replace(prune, distill=True)


def resolve_recipe(
    prune: PruneConfig, transfer: TransferConfig, model: str | None, task: TaskData
) -> tuple[PruneConfig, TransferConfig, dict[str, Any]]:
    """The settings the recipe runs with, and its summary for report.json."""
    unlabelled = {
        "from_train": int(task.extra.get("unlabelled_from_train", 0)),
        "from_file": int(task.extra.get("unlabelled_from_file", 0)),
    }
    summary: dict[str, Any] = {"name": prune.recipe, "unlabelled": unlabelled}
    if prune.recipe != "distill":
        return prune, transfer, summary
    if prune.teacher:
        summary["teacher"] = "given"
    elif prune.distill:  # asked for explicitly: fine-tune one even from a classifier
        summary["teacher"] = "fine-tuned"
    elif (directory := task_classifier_dir(model, task.label_names)) is not None:
        prune = replace(prune, distill=False, teacher=str(directory))
        summary["teacher"] = "model"
    else:
        prune = replace(prune, distill=True)
        summary["teacher"] = "fine-tuned"
    if transfer.active:
        summary["auxiliary"] = "as given"
        return prune, transfer, summary
    if task.unlabelled is not None and len(task.unlabelled) > 0:
        transfer = replace(
            transfer,
            aux=(AuxTask("distill").validate(),),
            augment=transfer.augment or "none",
            select=transfer.select or "longest",
            **DISTILL_TRANSFER,
        ).validate()
        summary["auxiliary"] = "distill on the unlabelled text"
        return prune, transfer, summary
    summary["auxiliary"] = "none"
    summary["note"] = (
        "no unlabelled text (every row of --train is labelled and no --unlabelled): "
        "distilling on the labelled text only; --unlabelled FILE adds in-domain text"
    )
    return prune, transfer, summary
