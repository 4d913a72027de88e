"""Few-shot and zero-shot baselines of other papers that priorkit's prototype experiments compare against.

- :func:`simpleshot`: SimpleShot (Wang et al., 2019, "SimpleShot: Revisiting Nearest-Neighbor Classification
  for Few-Shot Learning"): the label of the nearest class-mean support prototype (squared Euclidean), on
  features the caller has already CL2N-normalised (``priorkit.prototypes.slk.cl2n``). The inductive baseline of
  SLK.
- :func:`nearest_prototype`: DAP-style direct matching (Lampert et al., 2009/2014): score each instance's
  projection into one semantic space (attributes, word vectors) against each class prototype there. The
  baselines of TMV-HLP.

The ProtoNet cross-entropy baseline of SuSana is SuSana's own recipe with ``terms=("cross",)``; the prototype
classifier baseline of TEEN (SimpleCIL) is TEEN with ``alpha=0``: neither needs code of its own. easyfsl has a
SimpleShot class tied to its ``FewShotClassifier`` module; these are plain tensor functions (batched episodes).

>>> import torch
>>> xs, ys = torch.tensor([[0.0, 0.0], [4.0, 0.0]]), torch.tensor([0, 1])
>>> simpleshot(xs, ys, torch.tensor([[3.5, 0.2], [0.1, -0.3]])).tolist()
[1, 0]
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from priorkit.core.errors import PriorkitError, as_tensor, check_choice, check_finite, check_shape

__all__ = ["nearest_prototype", "simpleshot"]


def _features(name: str, x: Any, dims: tuple[int, ...]) -> torch.Tensor:
    x = as_tensor(name, x)
    if x.dim() not in dims:
        want = " or ".join(f"{d}-D" for d in dims)
        raise PriorkitError(f"{name} must be {want} ([N, D] or a batch of tasks [E, N, D]), got {list(x.shape)}")
    if not x.is_floating_point():
        raise PriorkitError(f"{name} must be floating point, got dtype {x.dtype}")
    if x.shape[-2] == 0:
        raise PriorkitError(f"{name} must hold at least one row, got shape {list(x.shape)}")
    return check_finite(name, x)


def simpleshot(support: Any, support_y: Any, query: Any) -> torch.Tensor:
    """Nearest class-mean prototype labels of the queries (squared Euclidean).

    One task (``support [Ns, D]``, ``support_y [Ns]`` with every label ``0..n_way-1``, ``query [Nq, D]``) or a
    batch with a leading task axis; tensors or numpy arrays.
    """
    support = _features("support", support, (2, 3))
    query = _features("query", query, (support.dim(),))
    support_y = as_tensor("support_y", support_y)
    single = support.dim() == 2
    if single:
        support, support_y, query = support.unsqueeze(0), support_y.reshape(1, -1), query.unsqueeze(0)
    check_shape("support_y", support_y, [support.shape[0], support.shape[1]])
    if support_y.is_floating_point() or support_y.dtype == torch.bool:
        raise PriorkitError(f"support_y must hold integer labels, got dtype {support_y.dtype}")
    if query.shape[0] != support.shape[0] or query.shape[2] != support.shape[2]:
        raise PriorkitError(
            f"query must have {support.shape[2]} features and {support.shape[0]} tasks like support, "
            f"got {list(query.shape)}"
        )
    n_way = int(support_y.max()) + 1
    if int(support_y.min()) < 0 or any(len(torch.unique(r)) != n_way for r in support_y):
        raise PriorkitError(f"support_y must use every label 0..n_way-1 in each task, got {support_y.tolist()}")
    onehot = F.one_hot(support_y.long(), n_way).to(support.dtype)
    protos = (onehot.transpose(1, 2) @ support) / onehot.sum(1)[..., None]
    pred = torch.cdist(query, protos).argmin(2)
    return pred[0] if single else pred


def nearest_prototype(projected: Any, prototypes: Any, metric: str = "euclidean") -> torch.Tensor:
    """Scores ``[N, C]`` of each projected instance against each class prototype in one semantic space.

    ``euclidean``: ``-||p - c||`` (DAP-style nearest attribute prototype); ``cosine``: cosine similarity
    (nearest word prototype). Argmax = predicted class (in the order of ``prototypes``).
    """
    check_choice("metric", metric, ("euclidean", "cosine"))
    projected = _features("projected", projected, (2,))
    prototypes = _features("prototypes", prototypes, (2,))
    check_shape("prototypes", prototypes, [None, projected.shape[1]])
    if metric == "cosine":
        return F.normalize(projected.double(), dim=1) @ F.normalize(prototypes.double(), dim=1).t()
    return -torch.cdist(projected.double(), prototypes.double())
