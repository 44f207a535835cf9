"""Everything measured: the Evaluator and its metrics (reconstruction, NLL, one-class, the statistics of a
code, the samples' FID, the localisation of anomaly maps), the linear probe and k-NN of the features, the
projection quality of a code."""

from ae_lightning.evaluation.evaluator import Evaluator
from ae_lightning.evaluation.generation import Generation
from ae_lightning.evaluation.localisation import AUPRO, PixelAUROC, PixelF1
from ae_lightning.evaluation.maps import Localisation, MapCalibration
from ae_lightning.evaluation.metric import EvaluationMetric
from ae_lightning.evaluation.one_class import OneClassMetrics, ScoreQuantile
from ae_lightning.evaluation.statistics import (
    ActiveUnits,
    CodeUsage,
    NegativeLogLikelihood,
    OneClass,
    Reconstruction,
    default_metrics,
)

__all__ = [
    "AUPRO",
    "ActiveUnits",
    "CodeUsage",
    "EvaluationMetric",
    "Evaluator",
    "Generation",
    "Localisation",
    "MapCalibration",
    "NegativeLogLikelihood",
    "OneClass",
    "OneClassMetrics",
    "PixelAUROC",
    "PixelF1",
    "Reconstruction",
    "ScoreQuantile",
    "default_metrics",
]
