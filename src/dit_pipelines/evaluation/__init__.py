"""Evaluation that knows no dataset: distances between feature sets, and the records benchmarks leave for cards."""

from .frechet import frechet_distance
from .record import EvaluationRecord, Metric

__all__ = ["EvaluationRecord", "Metric", "frechet_distance"]
