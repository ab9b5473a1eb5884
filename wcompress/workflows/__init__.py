"""What compression costs: scoring a model on data, sweeps of methods and δ, per-layer autotuning, and
ensemble selection under a size budget. One module per job; this package re-exports their entry points."""

from wcompress.workflows.autotune import autotune
from wcompress.workflows.compress import compress
from wcompress.workflows.ensemble_search import ensemble_search, merge_command
from wcompress.workflows.scoring import EvalSpec, Evaluator, default_metric, split_examples
from wcompress.workflows.sweep import parse_grids, parse_range, plot_sweep, sweep, write_sweep_csv

__all__ = ["EvalSpec", "Evaluator", "default_metric", "split_examples", "sweep", "parse_range", "parse_grids", "plot_sweep", "write_sweep_csv",
           "autotune", "compress", "ensemble_search", "merge_command"]
