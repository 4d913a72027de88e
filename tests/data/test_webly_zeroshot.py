"""Web-noisy few-shot data and zero-shot splits: determinism, structure, noise and errors."""

import pytest
import torch

from priorkit.core.errors import PriorkitError
from priorkit.data.webly import make_webly, web_shift
from priorkit.data.zeroshot import SEVEN_SEGMENT, digits_zeroshot


@pytest.mark.parametrize("source", ["digits", "digits_image", "gaussian"])
def test_webly_structure_and_determinism(source):
    a = make_webly(source, shots=3, web_size=300, test_size=100, seed=1)
    b = make_webly(source, shots=3, web_size=300, test_size=100, seed=1)
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.train.y, b.train.y)
    assert len(a.train) == 330 and len(a.test) == 100 and a.num_classes == 10
    few = a.fewshot_index
    assert len(few) == 30 and torch.equal(torch.bincount(a.train.y[few], minlength=10), torch.full((10,), 3))
    assert torch.equal(a.train.y[few], a.train.clean_y[few])  # real shots are clean
    web = a.web_index
    flipped = a.train.y[web] != a.train.clean_y[web]
    assert torch.equal(a.train.y[web][flipped], (a.train.clean_y[web][flipped] + 1) % 10)  # asymmetric y -> y+1
    assert 0.3 < a.noise_rate < 0.5
    c = make_webly(source, shots=3, web_size=300, test_size=100, seed=2)
    assert not torch.equal(a.train.x, c.train.x)


def test_web_and_real_parts_are_disjoint_and_shifted():
    d = make_webly("digits", shots=5, web_size=400, test_size=200, seed=0, noise_std=0.0, noise="none")
    few = d.train.x[d.fewshot_index]
    assert d.noise_rate == 0.0
    # no test sample is one of the few shots
    dist = torch.cdist(d.test.x, few)
    assert bool((dist > 0).all())
    # the web images are inverted for about half the samples: their mean intensity differs from the real ones
    assert abs(float(d.train.x[d.web_index].mean() - d.test.x.mean())) > 0.05


def test_web_shift_is_deterministic_and_checks_shape():
    x = torch.rand(10, 1, 8, 8)
    assert torch.equal(web_shift(x, image=True, seed=3), web_shift(x, image=True, seed=3))
    with pytest.raises(PriorkitError, match="image=True"):
        web_shift(torch.rand(10, 64), image=True)


def test_webly_errors():
    with pytest.raises(PriorkitError, match="source"):
        make_webly("cifar")
    with pytest.raises(PriorkitError, match="web_size"):
        make_webly("digits", web_size=1700, test_size=400)
    with pytest.raises(PriorkitError, match="noise"):
        make_webly("digits", noise="pair")
    with pytest.raises(PriorkitError, match="noise_rate"):
        make_webly("digits", noise_rate=1.5)


def test_zeroshot_split_and_views():
    words = torch.randn(10, 6)
    d = digits_zeroshot((2, 5, 8), words=words)
    assert d.seen == (0, 1, 3, 4, 6, 7, 9) and d.unseen == (2, 5, 8)
    assert set(d.seen_y.tolist()) == set(d.seen) and set(d.unseen_y.tolist()) == set(d.unseen)
    assert len(d.seen_y) + len(d.unseen_y) == len(d.y) == 1797
    assert torch.equal(d.views["attributes"], SEVEN_SEGMENT) and torch.equal(d.views["words"], words)
    assert SEVEN_SEGMENT[8].sum() == 7 and SEVEN_SEGMENT[1].sum() == 2
    assert len({tuple(r.tolist()) for r in SEVEN_SEGMENT}) == 10  # every digit has its own code


def test_zeroshot_errors():
    with pytest.raises(PriorkitError, match="unseen"):
        digits_zeroshot((7, 7), words=torch.randn(10, 3))
    with pytest.raises(PriorkitError, match="unseen"):
        digits_zeroshot((10,), words=torch.randn(10, 3))
    with pytest.raises(PriorkitError, match="words"):
        digits_zeroshot((7,), words="glove")
    with pytest.raises(PriorkitError, match="words"):
        digits_zeroshot((7,), words=torch.randn(9, 3))


def test_builders_accept_the_users_own_arrays():
    import numpy as np

    from priorkit.data.zeroshot import make_zeroshot

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(300, 6)), np.repeat(np.arange(5), 60)
    w = make_webly((x, y), shots=2, web_size=150, test_size=50, seed=0)
    assert w.num_classes == 5 and len(w.train) == 160 and w.train.x.dtype == torch.float32
    z = make_zeroshot(x, y, unseen=(3, 4), views={"attributes": rng.random((5, 3)), "words": rng.normal(size=(5, 4))})
    assert z.seen == (0, 1, 2) and len(z.unseen_y) == 120
    with pytest.raises(PriorkitError, match="unseen"):
        make_zeroshot(x, y, unseen=(7,), views={})
    with pytest.raises(PriorkitError, match="source y"):
        make_webly((x, y.astype(float)), shots=1, web_size=10, test_size=10)
