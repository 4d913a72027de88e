"""Consistency and stability scores (eval_protopnet card) on hand-built activation maps with known answers."""

import pytest
import torch

from priorkit.core.errors import PriorkitError
from priorkit.data.parts import make_parts
from priorkit.metrics.interpretability import (
    class_prototype_table,
    consistency_from_coverage,
    consistency_score,
    coverage_from_maps,
    cub_keypoints_to_frame,
    interpretability_scores,
    parts_keypoints,
    prototype_part_coverage,
    stability_from_coverage,
    stability_score,
)

S = 32  # image side


def _peak_maps(points: torch.Tensor, k: int, height: float = 1.0) -> torch.Tensor:
    """[N, k, S, S] maps that are 0 except ``height`` at (x, y) = points[n, k]."""
    n = points.shape[0]
    maps = torch.zeros(n, k, S, S)
    for i in range(n):
        for j in range(k):
            x, y = int(points[i, j, 0]), int(points[i, j, 1])
            maps[i, j, y, x] = height
    return maps


def _toy(n_per_class: int = 6, num_classes: int = 2, parts: int = 3, seed: int = 0):
    """Images with ``parts`` keypoints at random, well-separated places; labels balanced."""
    g = torch.Generator().manual_seed(seed)
    n = n_per_class * num_classes
    labels = torch.arange(n) % num_classes
    anchors = torch.tensor([[4.0, 4.0], [27.0, 4.0], [4.0, 27.0], [27.0, 27.0]])
    kp = torch.zeros(n, parts, 3)
    for i in range(n):
        perm = torch.randperm(4, generator=g)[:parts]
        kp[i, :, :2] = anchors[perm]
        kp[i, :, 2] = 1.0
    return labels, kp


def test_full_resolution_maps_argmax_is_exact_and_box_inclusive():
    maps = torch.zeros(1, 1, S, S)
    maps[0, 0, 10, 20] = 5.0  # row 10, col 20
    kp = torch.tensor([[[24.0, 14.0, 1.0], [25.0, 10.0, 1.0], [20.0, 6.0, 1.0], [20.0, 5.9, 1.0], [20, 10, 0]]])
    cov = coverage_from_maps(maps, kp, (S, S), half_size=4)
    # (24, 14): corner of the inclusive box; (25, 10): one column outside; (20, 6) on the edge; 5.9 outside;
    # the last is inside but not visible
    assert cov[0, 0].tolist() == [True, False, True, False, False]


def test_box_is_clipped_to_the_image():
    maps = torch.zeros(1, 1, S, S)
    maps[0, 0, 0, 0] = 1.0
    kp = torch.tensor([[[0.0, 0.0, 1.0], [4.0, 4.0, 1.0], [-1.0, 0.0, 1.0]]])
    assert coverage_from_maps(maps, kp, (S, S), 4)[0, 0].tolist() == [True, True, False]


def test_low_resolution_maps_are_upsampled_to_the_image():
    # a peak in cell (1, 6) of an 8x8 map lands in the 4x4 block rows 4..7, cols 24..27 of a 32x32 image
    maps = torch.zeros(1, 1, 8, 8)
    maps[0, 0, 1, 6] = 1.0
    up = torch.nn.functional.interpolate(maps, size=(S, S), mode="bicubic", align_corners=False)
    r, c = divmod(int(up.flatten().argmax()), S)
    assert 4 <= r <= 7 and 24 <= c <= 27
    kp = torch.tensor([[[float(c), float(r), 1.0], [float(c) - 5, float(r), 1.0]]])
    assert coverage_from_maps(maps, kp, (S, S), 4)[0, 0].tolist() == [True, False]


def test_oracle_on_one_part_gives_consistency_100_and_away_gives_0():
    labels, kp = _toy()
    k = 3
    # prototype j of every class always peaks at part j ("head" = part 0 for j = 0)
    on_part = _peak_maps(kp[:, :k, :2], k)
    cov = coverage_from_maps(on_part, kp, (S, S), 4)
    score, flags = consistency_from_coverage(cov, kp[..., 2] > 0, labels, 2)
    assert score == 100.0 and bool(flags.all())
    # peaking at the image centre, more than 4 px from every keypoint
    centre = torch.full((len(labels), k, 2), 16.0)
    cov = coverage_from_maps(_peak_maps(centre, k), kp, (S, S), 4)
    assert not cov.any()
    assert consistency_from_coverage(cov, kp[..., 2] > 0, labels, 2)[0] == 0.0
    # background firing: never covers a part, yet perfectly "stable" (part_hit_rate tells them apart)
    maps = _peak_maps(centre, k).repeat(1, 2, 1, 1)  # 2 classes x k prototypes
    scores = interpretability_scores(
        lambda inp: maps[: inp.shape[0]], torch.zeros(len(labels), 3, S, S), kp, labels, 2, half_size=4
    )
    assert scores == {"consistency": 0.0, "stability": 100.0, "part_hit_rate": 0.0}


def test_prototype_on_random_parts_is_not_consistent():
    labels, kp = _toy(n_per_class=9)
    # prototype 0 cycles through the 3 parts (each covered in 1/3 of the images); prototype 1 stays on part 2
    pts = torch.stack([kp[torch.arange(len(labels)), torch.arange(len(labels)) % 3, :2], kp[:, 2, :2]], dim=1)
    cov = coverage_from_maps(_peak_maps(pts, 2), kp, (S, S), 4)
    score, flags = consistency_from_coverage(cov, kp[..., 2] > 0, labels, 2)
    assert flags[:, 0].tolist() == [False, False] and flags[:, 1].tolist() == [True, True]
    assert score == 50.0


def test_threshold_is_inclusive_and_frequency_uses_visible_images_only():
    # 5 images of class 0, one prototype, two parts; part 0 covered in 4 of 5 (= 0.8); part 1 visible in 2,
    # covered in both: frequency 1 although it is covered in only 2 of 5 images
    cov = torch.zeros(5, 1, 2, dtype=torch.bool)
    cov[:4, 0, 0] = True
    vis = torch.ones(5, 2, dtype=torch.bool)
    labels = torch.zeros(5, dtype=torch.long)
    assert consistency_from_coverage(cov, vis, labels, 1, part_thresh=0.8)[0] == 100.0
    assert consistency_from_coverage(cov, vis, labels, 1, part_thresh=0.81)[0] == 0.0
    cov2 = torch.zeros(5, 1, 2, dtype=torch.bool)
    cov2[:2, 0, 1] = True
    vis2 = vis.clone()
    vis2[2:, 1] = False
    assert consistency_from_coverage(cov2, vis2, labels, 1)[0] == 100.0


def test_consistency_matches_a_brute_force_loop():
    g = torch.Generator().manual_seed(3)
    n, k, p, c = 40, 3, 5, 4
    labels = torch.arange(n) % c
    vis = torch.rand(n, p, generator=g) > 0.2
    cov = (torch.rand(n, k, p, generator=g) > 0.3) & vis[:, None, :]
    thresh = 0.6
    consistent = []
    for cls in range(c):
        rows = [i for i in range(n) if labels[i] == cls]
        for j in range(k):
            best = 0.0
            for q in range(p):
                seen = sum(bool(vis[i, q]) for i in rows)
                hit = sum(bool(cov[i, j, q]) for i in rows)
                best = max(best, hit / max(seen, 1))
            consistent.append(best >= thresh)
    expected = 100.0 * sum(consistent) / len(consistent)
    got, flags = consistency_from_coverage(cov, vis, labels, c, thresh)
    assert got == pytest.approx(expected, abs=1e-12)
    assert flags.flatten().tolist() == consistent


def test_stability_from_coverage_known_values_and_official_sum_quirk():
    labels = torch.tensor([0, 0, 1, 1])
    cov = torch.zeros(4, 2, 3, dtype=torch.bool)
    cov[:, :, 0] = True
    noisy = cov.clone()
    assert stability_from_coverage(cov, noisy, labels, 2) == 100.0
    noisy[0, 0] = torch.tensor([False, True, False])  # moved from part 0 to part 1: 1 of 4 class-0 pairs
    noisy[2, :, 2] = True  # extra part: both class-1 pairs of image 2 change
    expected = 100.0 * ((3 / 4) + (2 / 4)) / 2
    assert stability_from_coverage(cov, noisy, labels, 2) == pytest.approx(expected)
    # the repo's sum test: the +1/-1 move cancels, the extra part does not
    assert stability_from_coverage(cov, noisy, labels, 2, official_sum=True) == pytest.approx(100.0 * (1 + 0.5) / 2)


def _peak_images(labels: torch.Tensor, kp: torch.Tensor) -> torch.Tensor:
    """Images whose channel 0 has a tall peak at part 0's keypoint (own class) and nothing else."""
    x = torch.zeros(len(labels), 3, S, S)
    for i in range(len(labels)):
        x[i, 0, int(kp[i, 0, 1]), int(kp[i, 0, 0])] = 100.0
    return x


def test_model_level_scores_with_an_image_driven_oracle():
    labels, kp = _toy(n_per_class=5)
    x = _peak_images(labels, kp)
    k, c = 2, 2

    def maps_fn(inp: torch.Tensor) -> torch.Tensor:  # every prototype fires where channel 0 peaks
        return inp[:, :1].expand(-1, c * k, -1, -1)

    assert consistency_score(maps_fn, x, kp, labels, c, half_size=4) == 100.0
    # noise N(0, 0.2^2) cannot move a peak of height 100: the argmax stays, stability 100
    assert stability_score(maps_fn, x, kp, labels, c, half_size=4, noise_std=0.2) == 100.0
    assert stability_score(maps_fn, x, kp, labels, c, half_size=4, noise_std=0.0) == 100.0
    both = interpretability_scores(maps_fn, x, kp, labels, c, half_size=4, batch_size=3)
    assert both == {"consistency": 100.0, "stability": 100.0, "part_hit_rate": 100.0}


def test_stability_drops_when_noise_moves_the_argmax():
    labels, kp = _toy(n_per_class=10)
    x = _peak_images(labels, kp) * 0.01  # a peak of 1.0: far below the noise (std 5) maxima
    k, c = 1, 2

    def maps_fn(inp: torch.Tensor) -> torch.Tensor:
        return inp[:, :1].expand(-1, c * k, -1, -1)

    assert stability_score(maps_fn, x, kp, labels, c, half_size=2, noise_std=0.0) == 100.0
    assert stability_score(maps_fn, x, kp, labels, c, half_size=2, noise_std=5.0, noise_space="raw") < 50.0


def test_own_class_prototypes_are_selected():
    # class 1's prototypes fire on part 1, class 0's on part 2; images of class c only see their own
    labels, kp = _toy(n_per_class=4)
    k, c = 2, 2
    n = len(labels)
    maps = torch.zeros(n, c * k, S, S)
    for i in range(n):
        for j in range(c * k):
            part = 1 if j // k == 1 else 2
            maps[i, j, int(kp[i, part, 1]), int(kp[i, part, 0])] = 1.0

    cov = prototype_part_coverage(lambda inp: maps[: inp.shape[0]], torch.zeros(n, 3, S, S), kp, labels, c, half_size=3)
    assert bool(cov[labels == 1][:, :, 1].all()) and not cov[labels == 1][:, :, 2].any()
    assert bool(cov[labels == 0][:, :, 2].all()) and not cov[labels == 0][:, :, 1].any()
    # an explicit table that swaps the classes' prototypes
    table = torch.tensor([[2, 3], [0, 1]])
    cov2 = prototype_part_coverage(
        lambda inp: maps[: inp.shape[0]], torch.zeros(n, 3, S, S), kp, labels, c, half_size=3, class_prototypes=table
    )
    assert bool(cov2[labels == 0][:, :, 1].all())


def test_parts_keypoints_oracle_on_the_first_diagnostic_part():
    data = make_parts(24, n_classes=3, seed=1)
    kp = parts_keypoints(data)
    head = data.class_parts[data.labels, 0]  # the "head": each class's first diagnostic part type
    pts = kp[torch.arange(len(data)), head, :2]
    k = 2
    maps = _peak_maps(pts[:, None].expand(-1, 3 * k, -1), 3 * k)
    assert consistency_score(lambda inp: maps, data.images, kp, data.labels, 3, half_size=4) == 100.0


def test_cub_keypoints_to_frame():
    locs = torch.tensor([[[60.0, 30.0, 1.0], [10.0, 10.0, 0.0]]])
    bbox = torch.tensor([[10.0, 20.0, 110.0, 70.0]])  # 100 x 50 crop
    out = cub_keypoints_to_frame(locs, bbox, 224)
    assert out[0, 0].tolist() == [112.0, 44.0, 1.0]  # int(224 * 50/100), int(224 * 10/50) = 44
    assert out[0, 1].tolist() == [0.0, 0.0, 0.0]
    with pytest.raises(PriorkitError, match="bbox"):
        cub_keypoints_to_frame(locs, torch.tensor([[10.0, 20.0, 10.0, 70.0]]), 224)


def test_bad_inputs():
    labels, kp = _toy()
    cov = torch.zeros(len(labels), 2, 3, dtype=torch.bool)
    vis = kp[..., 2] > 0
    with pytest.raises(PriorkitError, match="part_thresh"):
        consistency_from_coverage(cov, vis, labels, 2, part_thresh=0.0)
    with pytest.raises(PriorkitError, match="labels must lie"):
        consistency_from_coverage(cov, vis, labels + 5, 2)
    with pytest.raises(PriorkitError, match="classes \\[2\\] have none"):
        consistency_from_coverage(cov, vis, labels, 3)
    with pytest.raises(PriorkitError, match="integer"):
        consistency_from_coverage(cov, vis, labels.float(), 2)
    with pytest.raises(PriorkitError, match="coverage_noisy"):
        stability_from_coverage(cov, cov[:, :1], labels, 2)
    with pytest.raises(PriorkitError, match="keypoints"):
        coverage_from_maps(torch.zeros(2, 1, 4, 4), torch.zeros(2, 3, 2), (S, S), 4)
    with pytest.raises(PriorkitError, match="finite"):
        coverage_from_maps(torch.full((1, 1, 4, 4), float("nan")), torch.zeros(1, 3, 3), (S, S), 4)
    with pytest.raises(PriorkitError, match="half_size"):
        coverage_from_maps(torch.zeros(1, 1, 4, 4), torch.zeros(1, 3, 3), (S, S), -1)
    with pytest.raises(PriorkitError, match="multiple"):
        class_prototype_table(7, 2)
    x = torch.zeros(len(labels), 3, S, S)

    def maps_fn(inp):
        return torch.zeros(inp.shape[0], 4, 4, 4)

    with pytest.raises(PriorkitError, match="noise_space"):
        prototype_part_coverage(maps_fn, x, kp, labels, 2, noise_std=0.1, noise_space="pixel")
    with pytest.raises(PriorkitError, match="noise_std"):
        prototype_part_coverage(maps_fn, x, kp, labels, 2, noise_std=-0.1)
    with pytest.raises(PriorkitError, match="class_prototypes"):
        prototype_part_coverage(maps_fn, x, kp, labels, 2, class_prototypes=torch.tensor([[0, 1], [2, 9]]))
    with pytest.raises(PriorkitError, match="maps_fn"):
        prototype_part_coverage(lambda inp: torch.zeros(1, 4, 4, 4), x, kp, labels, 2)
    with pytest.raises(PriorkitError, match="PartsData"):
        parts_keypoints(torch.zeros(3))
