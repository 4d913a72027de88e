"""Bad input for TMV-HLP's public entry points: (name, callable, regex naming the argument)."""

import torch

from priorkit.prototypes import tmv_hlp as T

NAN = float("nan")
_XS, _YS = torch.rand(40, 6), torch.arange(4).repeat(10)
_XT = torch.rand(30, 6)
_SEM = {"attributes": (torch.rand(6, 3) > 0.5).float(), "words": torch.randn(6, 4)}


def _nan(x):
    x = x.clone()
    x[0, 0] = NAN
    return x


def _run(**kw):
    args = dict(x_seen=_XS, y_seen=_YS, x_target=_XT, semantic=_SEM, seen=[0, 1, 2, 3], unseen=[4, 5], k=3, pca_dim=4)
    args.update(kw)
    return lambda: T.tmv_hlp(**args)


CASES = [
    ("tmv_hlp_nan_target", _run(x_target=_nan(_XT)), "x_target"),
    ("tmv_hlp_nan_seen", _run(x_seen=_nan(_XS)), "x_seen"),
    ("tmv_hlp_empty_target", _run(x_target=_XT[:0]), "x_target"),
    ("tmv_hlp_width", _run(x_target=_XT[:, :4]), "x_target"),
    ("tmv_hlp_int_features", _run(x_seen=_XS.long()), "x_seen"),
    ("tmv_hlp_label_shape", _run(y_seen=_YS[:5]), "y_seen"),
    ("tmv_hlp_label_dtype", _run(y_seen=_YS.float()), "y_seen"),
    ("tmv_hlp_labels_unseen", _run(y_seen=_YS + 2), "y_seen"),
    ("tmv_hlp_semantic_type", _run(semantic=[1, 2]), "semantic"),
    ("tmv_hlp_semantic_nan", _run(semantic={"attributes": _nan(_SEM["attributes"]), "words": _SEM["words"]}),
     "semantic"),
    ("tmv_hlp_semantic_missing", _run(semantic={"words": _SEM["words"]}), "semantic"),
    ("tmv_hlp_overlap", _run(unseen=[3, 4]), "unseen"),
    ("tmv_hlp_views", _run(use_views=("low",)), "use_views"),
    ("tmv_hlp_view_name", _run(use_views=("low", "pixels")), "view"),
    ("fit_projections_labels", lambda: T.fit_projections(_XS, _YS + 10, _SEM["attributes"], _SEM["words"]), "y"),
    ("multiview_cca_views", lambda: T.multiview_cca([_XT]), "views"),
    ("multiview_cca_dim", lambda: T.multiview_cca([_XT, _XT[:, :2]], dim=5), "dim"),
    ("embed_view_index", lambda: T.embed_view(T.multiview_cca([_XT, _XT]), 5, _XT), "view index"),
    ("hyperedges_k", lambda: T.hyperedges([_XT, _XT], k=100), "k"),
    ("hypergraph_affinity_ids", lambda: T.hypergraph_affinity(_XT, torch.tensor([[0, 99]])), "edges"),
    ("hypergraph_affinity_weighting", lambda: T.hypergraph_affinity(_XT, torch.tensor([[0, 1]]), weighting="x"),
     "weighting"),
    ("propagate_alpha", lambda: T.propagate(torch.eye(3), torch.eye(3), alpha=1.5), "alpha"),
    ("build_views_semantic", lambda: T.build_views(_XS, _YS, _XT, {"words": _SEM["words"]}), "semantic"),
]
