"""The tiny ViT: shapes, features = the head's input, timm-style names that PEFT targets, bad input."""

import pytest
import torch

from priorkit.core.errors import PriorkitError
from priorkit.models.vit import ViT


def test_shapes_features_and_flat_inputs():
    torch.manual_seed(0)
    m = ViT().eval()
    x = torch.rand(3, 1, 8, 8)
    feats = m.features(x)
    assert feats.shape == (3, 64) and m(x).shape == (3, 10)
    assert torch.equal(m.head(feats), m(x))
    assert torch.equal(m(x.flatten(1)), m(x))
    assert m.pos_embed.shape == (1, 17, 64)  # 16 patches of 2x2 + the class token


def test_ffn_names_follow_timm():
    names = {n for n, _ in ViT(depth=3).named_modules()}
    for i in range(3):
        assert {f"blocks.{i}.mlp.fc1", f"blocks.{i}.mlp.fc2", f"blocks.{i}.attn.qkv", f"blocks.{i}.attn.proj"} <= names
    assert "head" in names


def test_attention_mixes_tokens():
    torch.manual_seed(0)
    m = ViT(depth=1).eval()
    x = torch.rand(1, 1, 8, 8)
    y = x.clone()
    y[0, 0, 7, 7] += 1.0  # one patch changes: the class token's feature must change through attention
    assert not torch.allclose(m.features(x), m.features(y))


def test_bad_configuration_and_input_are_named():
    with pytest.raises(PriorkitError, match="patch_size must divide image_size"):
        ViT(image_size=8, patch_size=3)
    with pytest.raises(PriorkitError, match="heads must divide dim"):
        ViT(dim=10, heads=4)
    with pytest.raises(PriorkitError, match="depth must be an integer >= 1"):
        ViT(depth=0)
    with pytest.raises(PriorkitError, match=r"ViT expects inputs of shape \[B, 1, 8, 8\]"):
        ViT()(torch.rand(2, 3, 8, 8))
