"""Bad input for ISS-P's public entry points and its SR data / PSNR helpers."""

import torch
from torch import nn

from priorkit.data.sr_patches import load_image, sr_patches
from priorkit.metrics.restoration import psnr
from priorkit.sparsity.iss_p import ISSP, n_prune, shrink_, shrink_set


def _net():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3))


CASES = [
    ("ratio 1", lambda: ISSP(_net(), prune_ratio=1.0), r"prune_ratio must be in \[0, 1\)"),
    ("alpha > 1", lambda: ISSP(_net(), alpha=1.5), r"alpha must be in"),
    ("prune_steps 0", lambda: ISSP(_net(), prune_steps=0), r"prune_steps"),
    ("exclude string", lambda: ISSP(_net(), exclude="tail*"), r"list of glob patterns"),
    ("group axis", lambda: ISSP(_net(), group_axis="out"), r"group_axis must be one of"),
    ("nm N >= M", lambda: ISSP(_net(), nm=(4, 4)), r"N < M"),
    ("not a module", lambda: ISSP("net"), r"model must be a torch.nn.Module"),
    ("everything excluded", lambda: ISSP(_net(), exclude=("*",)), r"no prunable layers"),
    ("n_prune p", lambda: n_prune(10, -0.1), r"p must be in"),
    ("shrink set int", lambda: shrink_set(torch.ones(3, dtype=torch.long), 0.5), r"floating-point weight"),
    ("nm indivisible", lambda: shrink_set(torch.randn(4, 6), 0.5, nm=(1, 4)), r"divisible by M"),
    ("shrink alpha", lambda: shrink_(torch.ones(3), torch.ones(3, dtype=torch.bool), -0.5), r"alpha must be in"),
    ("unknown image", lambda: load_image("lena"), r"name must be one of"),
    ("hr not divisible", lambda: sr_patches(hr_size=9, scale=2), r"divisible by scale"),
    ("test in train", lambda: sr_patches(test_image="camera"), r"must not be one of the train_images"),
    ("psnr shapes", lambda: psnr(torch.rand(1, 3, 4, 4), torch.rand(1, 3, 4, 5)), r"equal \[N, C, H, W\]"),
    ("psnr channel", lambda: psnr(torch.rand(1, 3, 4, 4), torch.rand(1, 3, 4, 4), channel="cb"), r"channel"),
]
