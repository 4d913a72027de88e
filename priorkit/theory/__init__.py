"""Theory methods: estimators and generalization bounds, with the concrete model classes to run them on.

Each module's ``__all__`` is its public surface; its ``SPEC.entry`` is re-exported here.
"""

from priorkit.theory.pretrain_advantage import PretrainAdvantage
from priorkit.theory.prompt_pac_bayes import PromptPACBayes

__all__ = ["PretrainAdvantage", "PromptPACBayes"]
