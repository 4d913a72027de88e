"""Domain-generalisation data: builders, training-domain validation, and the one-minibatch-per-domain phase."""

import torch

from priorkit.data.domains import colored_digits, noise_domains, rotated_domains, split_by_domain
from priorkit.train import Phase, Recipe, TrainConfig, Trainer, domain_phase_parts


def test_rotated_domains_hold_out_the_target_and_split_images_disjointly():
    d = rotated_domains(angles=(0, 30, 60, 90), target=3, seed=0)
    assert d.names == ["rot0", "rot30", "rot60"] and d.target == "rot90" and d.num_classes == 10
    assert d.input_shape == (1, 8, 8)
    total = sum(len(t) + len(v) for t, v in zip(d.train, d.val)) + len(d.test)
    assert total == 1797
    # rotation by 0 keeps the images exactly; 90 degrees is an exact transpose-flip of an 8x8 grid
    again = rotated_domains(angles=(0, 30, 60, 90), target=3, seed=0)
    assert torch.equal(again.train[0].x, d.train[0].x) and torch.equal(again.test.x, d.test.x)


def test_colored_digits_colour_agrees_with_label_at_the_domain_rate():
    d = colored_digits(envs=(0.1, 0.2, 0.9), target=2, seed=0)
    assert d.input_shape == (2, 8, 8) and d.num_classes == 2
    for ds, e in [(d.train[0], 0.1), (d.train[1], 0.2), (d.test, 0.9)]:
        color = (ds.x[:, 1].flatten(1).sum(1) > ds.x[:, 0].flatten(1).sum(1)).long()
        agree = (color == ds.y).float().mean().item()
        assert abs(agree - (1 - e)) < 0.08, (e, agree)
        assert torch.all((ds.x[:, 0].flatten(1).sum(1) == 0) | (ds.x[:, 1].flatten(1).sum(1) == 0))


def test_noise_domains_shapes():
    d = noise_domains(sigmas=(0.0, 0.1, 0.3), target=2, seed=1)
    assert d.names == ["noise0", "noise0.1"] and len(d.pooled()) == sum(len(t) for t in d.train)


def test_bad_arguments_are_named():
    import pytest

    from priorkit.core.errors import PriorkitError

    with pytest.raises(PriorkitError, match="target must be a domain index"):
        rotated_domains(angles=(0, 30, 60), target=5)
    with pytest.raises(PriorkitError, match="at least 2 source domains"):
        rotated_domains(angles=(0, 30), target=1)
    with pytest.raises(PriorkitError, match="envs entry"):
        colored_digits(envs=(0.1, 1.5, 0.9))
    with pytest.raises(PriorkitError, match="base must be one of"):
        rotated_domains(base="cifar")


class _Counter(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(64, 10)
        self.seen = []

    def forward(self, x):
        return self.lin(x.flatten(1))


def test_domain_phase_draws_every_domain_every_step_through_the_engine():
    d = rotated_domains(angles=(0, 30, 60, 90), target=3, seed=0)
    batches, make_batch = domain_phase_parts(d, per_domain=8, steps=5)
    seen = []

    def loss(state, batch):
        parts = split_by_domain(batch.output, batch.extras["domain"], d.num_domains)
        seen.append([len(p) for p in parts])
        ys = split_by_domain(batch.y, batch.extras["domain"], d.num_domains)
        return {"ce": sum(torch.nn.functional.cross_entropy(p, y) for p, y in zip(parts, ys)) / len(parts)}

    phase = Phase("dg", epochs=2, batches=batches, make_batch=make_batch, loss=loss)
    Trainer(_Counter(), None, recipe=Recipe([phase]), config=TrainConfig(lr=0.1, progress=False)).fit()
    assert seen == [[8, 8, 8]] * 10
    # each global batch, sliced for 2 ranks, gives each rank 4 rows of every domain
    from types import SimpleNamespace

    from priorkit.train import rank_slice

    glob = batches(SimpleNamespace(world_size=2, epoch=0, config=SimpleNamespace(seed=0)))[0]
    for r in range(2):
        local = torch.tensor(rank_slice(glob, r, 2))
        b = make_batch(SimpleNamespace(device=torch.device("cpu")), local)
        assert torch.bincount(b.extras["domain"], minlength=3).tolist() == [4, 4, 4]
