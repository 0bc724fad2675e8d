"""Evaluation that knows no dataset: the field's metrics on any features, the Inception features ADM's evaluator
uses, ADM-format sample batches, and the records benchmarks leave for model cards."""

from .batches import batch_info, iter_images, load_statistics, save_batch
from .inception import InceptionOutput, InceptionV3Features
from .metrics import FeatureStatistics, frechet_distance, inception_score, precision_recall
from .record import EvaluationRecord, Metric

__all__ = [
    "EvaluationRecord",
    "FeatureStatistics",
    "InceptionOutput",
    "InceptionV3Features",
    "Metric",
    "batch_info",
    "frechet_distance",
    "inception_score",
    "iter_images",
    "load_statistics",
    "precision_recall",
    "save_batch",
]
