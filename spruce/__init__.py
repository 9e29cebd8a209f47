"""spruce: small, fast, task-specific encoders from large pre-trained ones, with little data.

``spruce.finetune``, ``spruce.prune`` and ``spruce.adapt`` run the commands of the same
name from Python (:mod:`spruce.api`); ``spruce.load_pruned`` loads a pruned model.
"""

from spruce.version import __version__ as __version__

__all__ = ["RunResult", "adapt", "finetune", "load_pruned", "prune"]


def __getattr__(name: str):
    # Lazy, so that ``import spruce`` (and ``spruce --help``) does not import torch.
    if name == "load_pruned":
        from spruce.compact import load_pruned

        return load_pruned
    if name in ("finetune", "prune", "adapt"):
        from spruce import api

        return getattr(api, name)
    if name == "RunResult":
        from spruce.pipelines.result import RunResult

        return RunResult
    raise AttributeError(f"module 'spruce' has no attribute '{name}'")
