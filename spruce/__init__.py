"""spruce: small, fast, task-specific encoders from large pre-trained ones, with little data."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazy, so that ``import spruce`` (and ``spruce --help``) does not import torch.
    if name == "load_pruned":
        from spruce.compact import load_pruned

        return load_pruned
    raise AttributeError(f"module 'spruce' has no attribute '{name}'")
