"""Pruning a transformer encoder: the settings of a run (``config``), learned and
score-based phases (``phases``, ``pdp``), unit selection and the sparsity trajectory."""
