"""Bad input for SuSana's public entry points: (name, callable, regex naming the argument)."""

import torch

from priorkit.prototypes import susana as sus
from priorkit.train import TrainConfig, fit

NAN = float("nan")
_S, _SY = torch.randn(10, 4), torch.arange(5).repeat_interleave(2)
_Q, _QY = torch.randn(15, 4), torch.arange(5).repeat_interleave(3)


def _nan(x):
    x = x.clone()
    x[0, 0] = NAN
    return x


def _fit_nan():
    x = torch.randn(30, 4)
    x[:, 0] = NAN
    ds = torch.utils.data.TensorDataset(x, torch.arange(3).repeat(10))
    rec = sus.SuSanaRecipe(n_way=3, n_shot=2, n_query=3, n_episodes=2)
    fit(torch.nn.Linear(4, 4), ds, rec, config=TrainConfig(progress=False))


CASES = [
    ("recipe_terms", lambda: sus.SuSanaRecipe(terms=("cross", "triplet")), "terms"),
    ("recipe_margin", lambda: sus.SuSanaRecipe(margin=-1.0), "margin"),
    ("recipe_n_way", lambda: sus.SuSanaRecipe(n_way=1), "n_way"),
    ("recipe_episodes", lambda: sus.SuSanaRecipe(n_episodes=1, epochs=2), "n_episodes"),
    ("recipe_lr", lambda: sus.SuSanaRecipe(lr=0.0), "lr"),
    ("recipe_query_against", lambda: sus.SuSanaRecipe(query_against="all"), "query_against"),
    ("recipe_nan_batch", _fit_nan, "x holds"),
    ("susana_loss_terms", lambda: sus.susana_loss(_S, _SY, _Q, _QY, terms=()), "terms"),
    ("susana_loss_nan", lambda: sus.susana_loss(_nan(_S), _SY, _Q, _QY), "support"),
    ("susana_loss_query_width", lambda: sus.susana_loss(_S, _SY, _Q[:, :3], _QY), "query"),
    ("susana_loss_empty_query", lambda: sus.susana_loss(_S, _SY, _Q[:0], _QY[:0]), "query"),
    ("prototypes_labels", lambda: sus.prototypes(_S, _SY + 1), "support_y"),
    ("prototypes_label_dtype", lambda: sus.prototypes(_S, _SY.float()), "support_y"),
    ("prototypes_int_features", lambda: sus.prototypes(_S.long(), _SY), "support"),
    ("protonet_logits_temperature", lambda: sus.protonet_logits(_Q, _S, temperature=0.0), "temperature"),
    ("protonet_logits_shape", lambda: sus.protonet_logits(_Q[:, :3], _S), "query"),
    ("proto_triplet_margin", lambda: sus.proto_triplet_loss(_Q, _QY, _S[:5], margin=-1.0), "margin"),
    ("proto_triplet_labels", lambda: sus.proto_triplet_loss(_Q, _QY + 5, _S[:5]), "query_y"),
    ("proto_triplet_nan", lambda: sus.proto_triplet_loss(_nan(_Q), _QY, _S[:5]), "query"),
    ("icnn_score_k", lambda: sus.icnn_score(_S, _SY, k=0), "k"),
    ("icnn_score_target_y", lambda: sus.icnn_score(_Q, _QY, target=_S), "target_y"),
    ("icnn_loss_small", lambda: sus.icnn_loss(_S[:2], _SY[:2]), "target"),
    ("euclidean_shape", lambda: sus.euclidean(torch.randn(3), torch.randn(2, 3)), "a"),
]
