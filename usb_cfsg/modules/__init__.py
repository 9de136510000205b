"""Small, independent building blocks of CFSG-CLIP (each usable alone, each tested alone).

- :mod:`.cosine_classifier`: scaled cosine classifier initialised from text embeddings.
- :mod:`.semantic_filter`: the semantic filtering module (SFM) of the coarse branch.
- :mod:`.prototypes`: EMA class prototypes (the visual cues of the fine branch).
- :mod:`.semantic_injection`: visual-semantic injection (VSI) cue tokens.
- :mod:`.ova_head`: one-vs-all open-set head and OpenMatch's losses.
- :mod:`.scores`: MCM / GL-MCM unknown scores and score fusion.

Every unknown score in this project follows "higher = more unknown".
"""

from .cosine_classifier import DEFAULT_LOGIT_SCALE, CosineClassifier
from .ova_head import (
    OVA_LOG_EPS,
    OVAHead,
    ova_consistency,
    ova_entropy,
    ova_log_probs,
    ova_loss,
    ova_probs,
    ova_unknown_score,
)
from .prototypes import DEFAULT_PROTOTYPE_MOMENTUM, ClassPrototypes, ReduceFn
from .scores import DEFAULT_MCM_TEMPERATURE, fit_score_range, fused_score, glmcm_score, max_softmax_cosine, mcm_score
from .semantic_filter import (
    DEFAULT_KEEP_RATIO,
    DEFAULT_LOCAL_WEIGHT,
    DEFAULT_SFM_LOGIT_SCALE,
    DEFAULT_SFM_TEMPERATURE,
    SemanticFilter,
    SFMOutput,
    gather_tokens,
    keep_count,
)
from .semantic_injection import DEFAULT_TOPK, DEFAULT_TYPE_INIT_STD, VisualSemanticInjection, VSIOutput

__all__ = [
    "CosineClassifier",
    "DEFAULT_LOGIT_SCALE",
    "SemanticFilter",
    "SFMOutput",
    "keep_count",
    "gather_tokens",
    "DEFAULT_KEEP_RATIO",
    "DEFAULT_LOCAL_WEIGHT",
    "DEFAULT_SFM_LOGIT_SCALE",
    "DEFAULT_SFM_TEMPERATURE",
    "ClassPrototypes",
    "ReduceFn",
    "DEFAULT_PROTOTYPE_MOMENTUM",
    "VisualSemanticInjection",
    "VSIOutput",
    "DEFAULT_TOPK",
    "DEFAULT_TYPE_INIT_STD",
    "OVAHead",
    "ova_loss",
    "ova_entropy",
    "ova_consistency",
    "ova_unknown_score",
    "ova_probs",
    "ova_log_probs",
    "OVA_LOG_EPS",
    "mcm_score",
    "glmcm_score",
    "fused_score",
    "fit_score_range",
    "max_softmax_cosine",
    "DEFAULT_MCM_TEMPERATURE",
]
