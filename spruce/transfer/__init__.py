"""Transfer from auxiliary tasks while pruning: which tasks, how, what and when."""

from spruce.transfer.config import (
    COUPLINGS,
    SCHEDULES,
    TRANSFERS,
    AuxTask,
    Schedule,
    TransferConfig,
    aux_tasks,
    parse_aux,
)

__all__ = [
    "COUPLINGS",
    "SCHEDULES",
    "TRANSFERS",
    "AuxTask",
    "Schedule",
    "TransferConfig",
    "aux_tasks",
    "parse_aux",
]
