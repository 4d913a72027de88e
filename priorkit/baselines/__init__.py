"""Other papers' baselines that priorkit's experiments compare against (one module per kind of task).

``ood`` (SSD+, Mahalanobis, KNN+, energy scores), ``mil`` (gated attention MIL, naive instance MIL),
``fewshot`` (SimpleShot and nearest-prototype baselines), ``gmp`` (gradual and one-shot magnitude pruning),
``filter_pruning`` (static L1-norm filter pruning).
They live apart from the methods, as pytorch-ood keeps detectors apart from losses.
"""

from priorkit.baselines.fewshot import nearest_prototype, simpleshot
from priorkit.baselines.filter_pruning import StaticChannelMask, l1_filter_keep
from priorkit.baselines.gmp import GMP, one_shot_magnitude
from priorkit.baselines.mil import GatedABMIL, abmil_recipe, eval_abmil, naive_recipe
from priorkit.baselines.ood import (
    ClassMahalanobis,
    SSDPlus,
    class_mahalanobis_fit,
    class_mahalanobis_score,
    energy_score,
    knn_score,
    ssd_fit,
    ssd_score,
)

__all__ = [
    "StaticChannelMask",
    "l1_filter_keep",
    "GMP",
    "ClassMahalanobis",
    "GatedABMIL",
    "SSDPlus",
    "abmil_recipe",
    "class_mahalanobis_fit",
    "class_mahalanobis_score",
    "energy_score",
    "eval_abmil",
    "knn_score",
    "naive_recipe",
    "nearest_prototype",
    "one_shot_magnitude",
    "simpleshot",
    "ssd_fit",
    "ssd_score",
]
