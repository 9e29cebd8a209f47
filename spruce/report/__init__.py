"""Reporting: metrics, parameter counts, report.json and plots."""

from spruce.report.metrics import METRICS, compute_metrics
from spruce.report.params import count_parameters
from spruce.report.plots import plot_learning_curve, plot_prune_phase
from spruce.report.writer import read_report, write_report

__all__ = [
    "METRICS",
    "compute_metrics",
    "count_parameters",
    "plot_learning_curve",
    "plot_prune_phase",
    "read_report",
    "write_report",
]
