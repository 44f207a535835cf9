"""Evaluation components: one-class metrics, reconstruction quality, feature quality."""

from ae_lightning.evaluation.evaluator import Evaluator
from ae_lightning.evaluation.one_class import OneClassMetrics, ScoreQuantile

__all__ = ["Evaluator", "OneClassMetrics", "ScoreQuantile"]
