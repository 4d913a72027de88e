import pytest
import torch

from priorkit.core.errors import PriorkitError
from priorkit.metrics import accuracy, auroc, ece, fpr_at_95_tpr, model_sparsity, nll, reliability


def test_ece_matches_loop():
    g = torch.Generator().manual_seed(1)
    logits, y = torch.randn(500, 5, generator=g) * 3, torch.randint(0, 5, (500,), generator=g)
    p = logits.double().softmax(1)
    conf, pred = p.max(1)
    total = 0.0
    for i in range(15):
        lo, hi = i / 15, (i + 1) / 15
        sel = (conf > lo) & (conf <= hi)
        if sel.any():
            total += int(sel.sum()) / 500 * abs(float((pred[sel] == y[sel]).double().mean() - conf[sel].mean()))
    assert ece(logits, y) == pytest.approx(float(total), abs=1e-9)
    assert reliability(logits, y).count.sum() == 500


def test_accuracy_nll_and_shape_errors():
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    assert accuracy(logits, torch.tensor([0, 0])) == 0.5
    assert nll(logits, torch.tensor([0, 1])) == pytest.approx(
        float(torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1])))
    )
    with pytest.raises(PriorkitError, match="labels must have shape"):
        accuracy(logits, torch.tensor([0]))


def test_auroc_fpr95():
    s_in, s_out = torch.arange(100.0, 200.0), torch.arange(0.0, 100.0)
    assert auroc(s_in, s_out) == 1.0 and fpr_at_95_tpr(s_in, s_out) == 0.0
    assert auroc(s_out, s_in) == 0.0 and fpr_at_95_tpr(s_out, s_in) == 1.0


def test_model_sparsity():
    lin = torch.nn.Linear(4, 5)
    with torch.no_grad():
        lin.weight[:2] = 0
    assert model_sparsity(lin) == pytest.approx(0.4)
