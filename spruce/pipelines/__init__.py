"""End-to-end commands built from the sub-packages: each returns a RunResult (the model,
its tokenizer and the report it wrote)."""

from spruce.pipelines.evaluate import evaluate_saved_model
from spruce.pipelines.finetune import FinetuneRun, run_finetune
from spruce.pipelines.result import RunResult

__all__ = ["FinetuneRun", "RunResult", "evaluate_saved_model", "run_finetune"]
