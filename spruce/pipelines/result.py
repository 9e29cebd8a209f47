"""What a training command returns to Python: the model, its tokenizer and the report."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass(repr=False)
class RunResult:
    """The outcome of ``spruce.finetune``, ``spruce.prune`` or ``spruce.adapt`` (and of
    the commands, which print it): ``model`` in eval mode on the CPU (the fine-tuned
    model; the compact pruned one; the fused compact one), the ``tokenizer`` that goes
    with it (trimmed with ``trim_vocab``) and ``report``, the content of report.json."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    report: dict[str, Any]

    def __repr__(self) -> str:
        metrics = ", ".join(f"{k} {v:.4f}" for k, v in self.report.get("metrics", {}).items())
        split = self.report.get("metrics_split")
        shown = f", {split} {metrics}" if split else ""
        return (
            f"RunResult({self.report.get('command')} {self.report.get('task')}: "
            f"{type(self.model).__name__}{shown})"
        )


def finished(model: PreTrainedModel, tokenizer, report: dict[str, Any]) -> RunResult:
    """``model`` moved to the CPU and put in eval mode, with its tokenizer and report."""
    return RunResult(model.cpu().eval(), tokenizer, report)
