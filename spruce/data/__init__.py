"""Data: read tables, pick columns, sample limited labelled sets, tokenize."""

from spruce.data.columns import ColumnSpec
from spruce.data.readers import read_table
from spruce.data.sampling import stratified_sample
from spruce.data.task import TaskData, TaskDataConfig, load_task, task_name_from_path
from spruce.data.tokenization import make_loader, tokenize_split

__all__ = [
    "ColumnSpec",
    "TaskData",
    "TaskDataConfig",
    "load_task",
    "make_loader",
    "read_table",
    "stratified_sample",
    "task_name_from_path",
    "tokenize_split",
]
