"""Turning masks into saved time and memory: physical channel removal, low-rank factorisation and CSR layers.

A mask alone saves nothing: ``W * mask`` is a dense matmul (plus the multiplication). What does save is a
smaller dense network (pruned channels removed, :func:`remove_pruned_channels`), a factorised layer
(:func:`factorize_linear`, the deploy form of low-rank methods such as TRP), or a sparse kernel
(:class:`CSRLinear`, CSR ``torch.sparse.mm``, which pays off only at high sparsity). ``priorkit speed``
(:mod:`priorkit.report.sparse_speed`) measures all of them side by side.

Library parts: channel removal uses Torch-Pruning's ``DependencyGraph`` (the optional ``sparsity`` extra,
``pip install torch-pruning``), which also removes the matching input channels of the following layers and
normalisation channels, through flattening; channels coupled through a residual addition are removed together
(one Torch-Pruning group), so the network's function is unchanged only when every coupled channel was pruned.
N:M semi-structured kernels (``torch.sparse.to_sparse_semi_structured``) exist only for CUDA in this build.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from priorkit.core.errors import PriorkitError, check_positive_int
from priorkit.sparsity.masks import MaskSet

__all__ = ["CSRLinear", "factorize_linear", "remove_pruned_channels"]


def _torch_pruning():
    try:
        import torch_pruning
    except ImportError as e:  # pragma: no cover - exercised only without the extra
        raise PriorkitError(
            "physical channel removal needs Torch-Pruning: pip install 'priorkit[sparsity]' (torch-pruning)"
        ) from e
    return torch_pruning


def remove_pruned_channels(model: nn.Module, masks: MaskSet, example_inputs: torch.Tensor) -> nn.Module:
    """Remove, in place, the output channels a channel-granularity ``masks`` pruned; returns ``model``.

    The masks are baked and detached first; the result is a plain, smaller network. ``example_inputs`` is one
    batch the model accepts (Torch-Pruning traces the graph with it).
    """
    if not isinstance(masks, MaskSet) or masks.granularity.kind != "channel":
        raise PriorkitError("masks must be a MaskSet with granularity 'channel' (only whole channels can be removed)")
    if not isinstance(example_inputs, torch.Tensor):
        raise PriorkitError(f"example_inputs must be a tensor batch, got {type(example_inputs).__name__}")
    tp = _torch_pruning()
    pruned = {n: (~m.flatten(1).any(dim=1)).nonzero().flatten().tolist() for n, m in masks.masks().items()}
    for name, ids in pruned.items():
        if len(ids) == masks.layers[name].weight.shape[0]:
            raise PriorkitError(f"layer {name!r} has every output channel pruned; it cannot be removed physically")
    masks.remove(bake=True)
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs)
    for name, ids in pruned.items():
        if not ids:
            continue
        layer = masks.layers[name]
        fn = tp.prune_linear_out_channels if isinstance(layer, nn.Linear) else tp.prune_conv_out_channels
        graph.get_pruning_group(layer, fn, idxs=ids).prune()
    return model


def factorize_linear(layer: nn.Linear, rank: int) -> nn.Sequential:
    """``W ~ U_r S_r V_r^T`` as two linears (``in -> rank -> out``); exact when ``rank >= rank(W)``."""
    if not isinstance(layer, nn.Linear):
        raise PriorkitError(f"layer must be an nn.Linear, got {type(layer).__name__}")
    check_positive_int("rank", rank)
    if rank > min(layer.weight.shape):
        raise PriorkitError(f"rank must be <= min(out, in) = {min(layer.weight.shape)}, got {rank}")
    with torch.no_grad():
        u, s, vh = torch.linalg.svd(layer.weight.detach(), full_matrices=False)
        sq = s[:rank].sqrt()
        first = nn.Linear(layer.in_features, rank, bias=False)
        second = nn.Linear(rank, layer.out_features, bias=layer.bias is not None)
        first.weight.copy_(sq[:, None] * vh[:rank])
        second.weight.copy_(u[:, :rank] * sq[None, :])
        if layer.bias is not None:
            second.bias.copy_(layer.bias.detach())
    return nn.Sequential(first, second)


class CSRLinear(nn.Module):
    """An inference-only linear layer with its weight in CSR (``torch.sparse.mm``); built from a (masked) Linear."""

    def __init__(self, layer: nn.Linear) -> None:
        super().__init__()
        if not isinstance(layer, nn.Linear):
            raise PriorkitError(f"layer must be an nn.Linear, got {type(layer).__name__}")
        w = layer.weight.detach()
        with warnings.catch_warnings():  # "sparse CSR support is in beta": known, and the tests check the results
            warnings.simplefilter("ignore", UserWarning)
            csr = w.to_sparse_csr()
        self.register_buffer("weight", csr)
        self.register_buffer("bias", None if layer.bias is None else layer.bias.detach().clone())
        self.in_features, self.out_features = layer.in_features, layer.out_features

    @property
    def nbytes(self) -> int:
        """Bytes of the stored weight (values + column indices + row pointers) and bias."""
        w = self.weight
        n = sum(t.numel() * t.element_size() for t in (w.values(), w.col_indices(), w.crow_indices()))
        return n + (0 if self.bias is None else self.bias.numel() * self.bias.element_size())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        out = torch.sparse.mm(self.weight, x.reshape(-1, self.in_features).T).T
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*shape[:-1], self.out_features)
