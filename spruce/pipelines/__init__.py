"""End-to-end commands built from the sub-packages: each returns the report it wrote."""

from spruce.pipelines.evaluate import evaluate_saved_model
from spruce.pipelines.finetune import FinetuneRun, run_finetune

__all__ = ["FinetuneRun", "evaluate_saved_model", "run_finetune"]
