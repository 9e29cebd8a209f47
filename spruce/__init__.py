"""spruce: small, fast, task-specific encoders from large pre-trained ones, with little data."""

__version__ = "0.1.0"
