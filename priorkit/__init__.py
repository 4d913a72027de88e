"""priorkit: faithful, tested, composable PyTorch parts for one literature cluster.

Prototype learning, training regularizers, sparsity and pruning, low-rank adapters and generative priors,
each method a module named by its card id, each proven by a small experiment (``priorkit bench``).
"""

__version__ = "0.1.0"
