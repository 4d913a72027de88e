"""Hashing-retrieval metrics: mean average precision of Hamming ranking (MAP, and targeted MAP when the
relevance labels are the attack's target labels), precision@k and the targeted attack success rate.

Codes are in {-1, +1} (``sign`` of a hashing network's output); labels are class ids ``[N]`` or multi-hot
``[N, C]``; an item is relevant when it shares a label with the query (``S = 1[l_q . l_d > 0]``, as in the
ProS-GAN / DPSH evaluation ``CalcMap``). Hamming ties are broken by database order (stable sort); the official
``np.argsort`` leaves tie order unspecified. No scikit-learn metric ranks by Hamming distance with
label-overlap relevance, so this is written here (average precision per query is then the standard one).
"""

from __future__ import annotations

import torch

from priorkit.core.errors import PriorkitError, check_positive_int, check_range

__all__ = ["hamming_distance", "mean_average_precision", "precision_at_k", "relevance", "targeted_success_rate"]


def _codes(name: str, b: torch.Tensor) -> torch.Tensor:
    if not isinstance(b, torch.Tensor) or b.dim() != 2:
        raise PriorkitError(f"{name} must be a 2-D tensor [N, bits]")
    if not torch.all((b == 1) | (b == -1)):
        raise PriorkitError(f"{name} must hold codes in {{-1, +1}} (apply torch.sign first)")
    return b.float()


def _multi_hot(labels: torch.Tensor, num_classes: int | None) -> torch.Tensor:
    if labels.dim() == 1:
        return torch.nn.functional.one_hot(labels.long(), num_classes).float()
    if labels.dim() == 2:
        return labels.float()
    raise PriorkitError(f"labels must be class ids [N] or multi-hot [N, C], got shape {list(labels.shape)}")


def relevance(query_labels: torch.Tensor, db_labels: torch.Tensor) -> torch.Tensor:
    """``[Q, N]`` 0/1: does query i share a label with database item j."""
    c = None
    if query_labels.dim() == 1 and db_labels.dim() == 1:
        c = int(max(query_labels.max(), db_labels.max())) + 1
    elif query_labels.dim() == 1:
        c = db_labels.shape[1]
    elif db_labels.dim() == 1:
        c = query_labels.shape[1]
    lq, ld = _multi_hot(query_labels, c), _multi_hot(db_labels, c)
    if lq.shape[1] != ld.shape[1]:
        raise PriorkitError(f"query and database labels have {lq.shape[1]} and {ld.shape[1]} classes")
    return (lq @ ld.T > 0).float()


def hamming_distance(query_codes: torch.Tensor, db_codes: torch.Tensor) -> torch.Tensor:
    """``[Q, N]`` Hamming distances of ±1 codes: ``(bits - q . d) / 2``."""
    q, d = _codes("query_codes", query_codes), _codes("db_codes", db_codes)
    if q.shape[1] != d.shape[1]:
        raise PriorkitError(f"query and database codes have {q.shape[1]} and {d.shape[1]} bits")
    return 0.5 * (q.shape[1] - q @ d.T)


def _ranked_relevance(qb, db, ql, dl) -> torch.Tensor:
    dist = hamming_distance(qb, db)
    if len(ql) != len(qb) or len(dl) != len(db):
        raise PriorkitError("codes and labels must have the same number of rows (query and database)")
    order = torch.sort(dist, dim=1, stable=True).indices
    return torch.gather(relevance(ql, dl), 1, order)


def mean_average_precision(
    query_codes: torch.Tensor,
    db_codes: torch.Tensor,
    query_labels: torch.Tensor,
    db_labels: torch.Tensor,
    topk: int | None = None,
) -> float:
    """MAP of Hamming ranking (over the whole database, or its ``topk``); queries with no relevant item in
    the ranked list count 0, as in ``CalcMap``. With target labels as ``query_labels`` this is t-MAP."""
    rel = _ranked_relevance(query_codes, db_codes, query_labels, db_labels)
    if topk is not None:
        check_positive_int("topk", topk)
        rel = rel[:, :topk]
    hits = rel.cumsum(1)
    ranks = torch.arange(1, rel.shape[1] + 1, dtype=rel.dtype)
    n_rel = rel.sum(1)
    ap = (rel * hits / ranks).sum(1) / n_rel.clamp_min(1)
    return float(torch.where(n_rel > 0, ap, torch.zeros_like(ap)).mean())


def precision_at_k(
    query_codes: torch.Tensor, db_codes: torch.Tensor, query_labels: torch.Tensor, db_labels: torch.Tensor, k: int = 10
) -> torch.Tensor:
    """Per-query precision of the ``k`` nearest database items, ``[Q]``."""
    check_positive_int("k", k)
    return _ranked_relevance(query_codes, db_codes, query_labels, db_labels)[:, :k].mean(1)


def targeted_success_rate(
    query_codes: torch.Tensor,
    db_codes: torch.Tensor,
    target_labels: torch.Tensor,
    db_labels: torch.Tensor,
    k: int = 10,
    threshold: float = 0.5,
) -> float:
    """Fraction of adversarial queries whose top-``k`` retrieval is at least ``threshold`` target-label items."""
    check_range("threshold", threshold, 0.0, 1.0, low_inclusive=False)
    return float((precision_at_k(query_codes, db_codes, target_labels, db_labels, k) >= threshold).float().mean())
