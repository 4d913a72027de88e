"""What each adapter costs next to LoRA: trainable and total parameters, the size of the file that restores it,
the median train-step time and the peak training memory, measured side by side on one pretrained base
(``priorkit costs``; a table of the bench report).

Arms, all applied to the *same* base (a fresh copy built by the base factory in each run) and trained through the
engine (:func:`priorkit.train.fit`) with each method's own hooks, recipe and optimizer:

- ``full``: full fine-tuning, every parameter trains (the reference);
- ``lora``: stock PEFT LoRA, r 8, alpha 16, on the base's adapter targets (the baseline every ratio divides by);
- the eight adapter methods: ``sora`` (SoRA r 8, its recipe and gate optimizer), ``sorsa`` (SORSA r 8 with its
  orthonormal regulariser), ``sara`` (SaRA's ``small`` preset on every backbone tensor), ``glad`` (PEFT LoRA r 8 +
  the GLAD two-pass step), ``pela`` (the PELA hook: compressed student, frozen teacher, feature distillation),
  ``my3dgen`` (PEFT LoRA r 8 on every Linear/Conv2d, rank ``r k`` on k x k convs, lazy Adam; the symmetry and
  identity losses need a renderer and an identity network and are not part of a classifier's cost), ``said``
  (SAID, Fastfood, ``d = 1000``, the head inside the subspace as its card says), ``gs_lora`` (PEFT LoRA r 8 on the
  FFN linears + :class:`~priorkit.adapters.gs_lora.GSLoRALoss`: the bounded forget term on a second, forget batch
  every step and the group lasso over blocks; the driver's EMA evaluation copy is not included).

Each method uses its ``small`` preset where it has one, with rank 8 wherever the method has a rank. The task head
is a fresh ``Linear`` that trains in every arm (PEFT's ``modules_to_save`` for the PEFT-based ones), except in
SAID, which reparameterises it with the rest of the network.

Columns of a row:

- ``trainable_params``: entries that receive gradients in the run (counted after the engine froze the rest);
- ``total_params``: parameters of the network the method leaves behind (adapters merged; PELA's compressed
  student is smaller than the base);
- ``file_bytes``: the size on disk of what restores the trained method on the base: PEFT's ``save_pretrained``
  folder for the PEFT-based arms, a ``torch.save`` of exactly the method's state for the others (full: the
  state dict; SaRA: its adapter state and the head; PELA: the student; SAID: ``z``, ``lambda`` and the subspace
  record; the projection is regenerated from the seed);
- ``step_ms``: median wall time of one optimizer step over ``steps`` steps after ``warmup`` untimed ones, from the
  first hook's ``transform_batch`` to the last hook's ``on_step_end`` (every hook of the method, the forward,
  backward and optimizer step; not the batch gathering, which is the same for every arm), on one thread;
- ``peak_mem_mb``: the CPU process peak-RSS increase during the timed steps, the CPU stand-in for
  ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``: each method runs in a fresh process
  (multiprocessing spawn) and first runs one step of a 2-parameter model through the engine (so that what a
  process's first fit sets up once is not charged to the method); after the base and the adapter are built, freed
  memory is returned to the system and the kernel's peak-RSS mark is reset (``/proc/self/clear_refs``), and the
  row reports the increase of the peak (``VmHWM``) over the resident size at that point. ``maxrss_increase_mb``
  is the increase of ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` over the same span; it equals ``peak_mem_mb``
  up to page rounding unless the child's ``ru_maxrss`` still holds the launching process's peak (Linux passes it
  on through ``exec``), which hides growth below that value; where the mark cannot be reset, ``peak_mem_mb`` is
  this number;
- ``time_vs_lora``, ``mem_vs_lora``, ``params_vs_lora``, ``file_vs_lora``: the row's value over LoRA's.

The default base is the pretrained all-MiniLM-L6-v2 (:mod:`priorkit.models.minilm`, offline) with a linear head on
a templated 4-topic sentence task generated here (token ids padded to ``max_len``; the mask is ``x != pad``);
LoRA-style adapters sit on the attention query/value linears, GS-LoRA's on the FFN linears, My3DGen's on every
block linear, PELA compresses the block linears, SAID keeps the word-embedding table frozen (as its MiniLM
experiment does, for cost). :func:`mlp_base` is a small MLP base for tests and quick looks. Timings are wall time
on a shared machine: compare rows of one run, not runs.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import math
import os
import random
import resource
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from priorkit.core.errors import PriorkitError, check_choice, check_positive_int
from priorkit.data.datasets import IndexedTensorDataset

__all__ = [
    "BASELINE",
    "METHODS",
    "REFERENCE",
    "CostBase",
    "adapter_costs_html",
    "adapter_costs_markdown",
    "build_costs_parser",
    "load_adapter_costs",
    "main_costs",
    "measure_adapter_costs",
    "minilm_base",
    "mlp_base",
    "mlp_task",
    "run_costs",
    "text_task",
    "write_adapter_costs",
]

REFERENCE, BASELINE = "full", "lora"
METHODS = (REFERENCE, BASELINE, "sora", "sorsa", "sara", "glad", "pela", "my3dgen", "said", "gs_lora")
RANK = 8  # the card's rank wherever a method has one
SAID_D = 1000  # SAID's subspace size (the largest d of its MiniLM experiment's grid)
FORGET_CLASS = 0  # GS-LoRA's deletion request: this class is forgotten, the others retained
JSON_NAME, MD_NAME = "adapter_costs.json", "adapter_costs.md"


# ------------------------------------------------------------------------------------------------------ bases
@dataclass
class CostBase:
    """A pretrained base and where each method attaches to it (module names of ``model``).

    - ``targets``: the LoRA-style adapters' layers (attention query/value; sora, sorsa, glad, lora);
    - ``ffn``: GS-LoRA's layers (the FFN linears), each mapped to its block (one group-lasso group per block);
    - ``linears``: My3DGen's layers (every Linear/Conv2d except the head);
    - ``blocks``: the modules whose outputs PELA distils (PELA compresses every Linear except the head);
    - ``backbone``: the module holding every pretrained tensor (SaRA selects inside it; the head trains fully);
    - ``head``: the task head, trained in every arm; ``said_exclude``: parameters SAID keeps frozen.
    """

    model: nn.Module
    targets: list[str]
    ffn: dict[str, str]
    linears: list[str]
    blocks: list[str]
    backbone: str
    num_classes: int
    head: str = "head"
    said_exclude: list[str] = field(default_factory=list)
    name: str = "base"


def mlp_base(in_features: int = 16, hidden: Sequence[int] = (32, 32), num_classes: int = 4, seed: int = 0) -> CostBase:
    """A seeded MLP ``in -> hidden... -> num_classes`` (priorkit's ``MLP``): every hidden Linear is a target, an
    FFN layer (its own group) and a PELA layer; the ReLU outputs are PELA's blocks. Random weights stand in for
    pretraining (the costs do not depend on the values)."""
    from priorkit.models import MLP

    torch.manual_seed(seed)
    model = MLP(in_features, tuple(hidden), num_classes)
    lin = [f"body.{2 * i}" for i in range(len(hidden))]
    sizes = "-".join(str(k) for k in (in_features, *hidden, num_classes))
    return CostBase(model=model, targets=lin, ffn={n: n for n in lin}, linears=lin,
                    blocks=[f"body.{2 * i + 1}" for i in range(len(hidden))], backbone="body",
                    num_classes=num_classes, name=f"MLP {sizes}")  # fmt: skip


class _TokenClassifier(nn.Module):
    """MiniLM encoder + attention-masked mean pooling + linear head; ``x`` is ``[B, L]`` token ids, the mask is
    ``x != pad_id``."""

    def __init__(self, encoder: nn.Module, num_classes: int, pad_id: int) -> None:
        super().__init__()
        self.encoder, self.pad_id = encoder, int(pad_id)
        self.head = nn.Linear(encoder.config.hidden_size, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = (x != self.pad_id).long()
        h = self.encoder(input_ids=x, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).to(h.dtype)
        return self.head((h * m).sum(1) / m.sum(1).clamp_min(1.0))


def minilm_base(num_classes: int = 4, seed: int = 0) -> CostBase:
    """all-MiniLM-L6-v2 (offline) without its unused pooler, with a seeded linear head: adapters on the attention
    query/value linears, GS-LoRA on the FFN linears (one group per layer), My3DGen on every block linear, PELA's
    blocks are the six transformer layers, SAID keeps the word-embedding table frozen."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from priorkit.models.minilm import MiniLM

    mini = MiniLM()
    enc = mini.encoder.train()
    enc.pooler = None  # the mean-pooled hidden states feed the head; the pooler would only cost time
    torch.manual_seed(seed)
    model = _TokenClassifier(enc, num_classes, mini.tokenizer.pad_token_id)
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and ".layer." in n]
    ffn = {n: "layer." + n.split(".layer.")[1].split(".")[0] for n in names
           if n.endswith(("intermediate.dense", ".output.dense")) and ".attention." not in n}  # fmt: skip
    return CostBase(
        model=model,
        targets=[n for n in names if n.endswith(("attention.self.query", "attention.self.value"))],
        ffn=ffn,
        linears=names,
        blocks=[f"encoder.encoder.layer.{i}" for i in range(len(enc.encoder.layer))],
        backbone="encoder",
        num_classes=num_classes,
        said_exclude=["encoder.embeddings.word_embeddings"],
        name="all-MiniLM-L6-v2 + linear head",
    )


def mlp_task(n: int = 256, in_features: int = 16, num_classes: int = 4, seed: int = 0) -> IndexedTensorDataset:
    """``n`` Gaussian points around ``num_classes`` seeded means (the MLP base's task)."""
    check_positive_int("n", n)
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % num_classes
    means = 2.0 * torch.randn(num_classes, in_features, generator=g)
    return IndexedTensorDataset(means[y] + torch.randn(n, in_features, generator=g), y)


_TOPICS = {
    "sport": (["the striker", "our team", "the coach", "the young runner"],
              ["won the cup final", "scored in the derby", "missed a penalty", "set a new record"]),
    "food": (["the chef", "my aunt", "the bakery", "the small cafe"],
             ["baked sourdough bread", "cooked a spicy stew", "served fresh pasta", "burnt the onion soup"]),
    "tech": (["the developer", "the startup", "the chip maker", "our it team"],
             ["shipped a security patch", "released a faster laptop", "rewrote the database code",
              "launched a phone app"]),
    "weather": (["the forecast", "the coast", "the old city", "the mountain pass"],
                ["expects heavy snow", "had a violent storm", "stayed foggy all day", "warned of a heat wave"]),
}  # fmt: skip
_OPEN = ["", "today ", "last week ", "people say that ", "according to the radio , "]


def text_task(n: int = 256, max_len: int = 32, seed: int = 0, tokenizer: Any = None) -> IndexedTensorDataset:
    """``n`` templated sentences of four topics (sport, food, tech, weather; label = topic), tokenised with
    MiniLM's tokenizer and padded or cut to ``max_len`` ids (the base's input)."""
    check_positive_int("n", n)
    check_positive_int("max_len", max_len, 4)
    if tokenizer is None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoTokenizer

        from priorkit.models.minilm import minilm_path

        tokenizer = AutoTokenizer.from_pretrained(minilm_path(), local_files_only=True)
    rng = random.Random(f"adapter-costs:{seed}")
    names = sorted(_TOPICS)
    texts, labels = [], []
    for i in range(n):
        k = i % len(names)
        subjects, predicates = _TOPICS[names[k]]
        texts.append(f"{rng.choice(_OPEN)}{rng.choice(subjects)} {rng.choice(predicates)}")
        labels.append(k)
    tok = tokenizer(texts, padding="max_length", truncation=True, max_length=max_len, return_tensors="pt")
    return IndexedTensorDataset(tok["input_ids"], torch.tensor(labels))


# ------------------------------------------------------------------------------------------------------ arms
@dataclass
class _Arm:
    """One method applied to a base: what to train, how, and how to save and count it afterwards."""

    model: nn.Module
    save: Callable[[Path], Path]
    deployed: Callable[[], nn.Module]
    file_kind: str
    note: str
    hooks: list[Any] = field(default_factory=list)
    recipe: Any = None
    config: dict[str, Any] = field(default_factory=dict)
    data: Any = None


def _peft_save(model: nn.Module) -> Callable[[Path], Path]:
    def save(folder: Path) -> Path:
        out = folder / "adapter"
        model.save_pretrained(str(out))
        return out

    return save


def _torch_save(state: Callable[[], Any]) -> Callable[[Path], Path]:
    def save(folder: Path) -> Path:
        out = folder / "state.pt"
        torch.save(state(), out)
        return out

    return save


def _merged(model: nn.Module) -> Callable[[], nn.Module]:
    return lambda: model.merge_and_unload()


def _arm_full(base: CostBase, data: Any, batch_size: int) -> _Arm:
    m = base.model.requires_grad_(True)
    return _Arm(
        m,
        _torch_save(m.state_dict),
        lambda: m,
        "torch.save(state_dict)",
        "reference: every parameter trains (AdamW)",
        config={"optimizer": "adamw", "lr": 2e-5},
    )


def _arm_lora(base: CostBase, data: Any, batch_size: int) -> _Arm:
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=RANK, lora_alpha=2 * RANK, lora_dropout=0.0, target_modules=list(base.targets),
                     modules_to_save=[base.head])  # fmt: skip
    m = get_peft_model(base.model, cfg)
    return _Arm(m, _peft_save(m), _merged(m), "PEFT save_pretrained", f"baseline: PEFT LoRA r={RANK}, alpha "
                f"{2 * RANK} on {len(base.targets)} layers", config={"optimizer": "adamw", "lr": 1e-3})  # fmt: skip


def _arm_sora(base: CostBase, data: Any, batch_size: int) -> _Arm:
    from peft import get_peft_model

    from priorkit.adapters.sora import SPEC, SoraConfig, SoraHook, sora_recipe

    preset = {**SPEC.presets["small"], "r": RANK, "target_modules": list(base.targets)}
    cfg = SoraConfig(**preset, modules_to_save=[base.head])
    m = get_peft_model(base.model, cfg)
    hook = SoraHook.from_config(cfg)
    recipe = sora_recipe(m, len(data), batch_size, epochs=1, hook=hook)
    return _Arm(m, _peft_save(m), _merged(m), "PEFT save_pretrained",
                f"SoRA r={RANK}: gated LoRA, gates by Adam + proximal step (sora_recipe: AdamW, clip 0.1)",
                hooks=[hook], recipe=recipe)  # fmt: skip


def _arm_sorsa(base: CostBase, data: Any, batch_size: int) -> _Arm:
    from peft import get_peft_model

    from priorkit.adapters.sorsa import SPEC, SorsaConfig, SorsaHook

    preset = {**SPEC.presets["small"], "r": RANK, "target_modules": list(base.targets)}
    cfg = SorsaConfig(**preset, modules_to_save=[base.head])
    m = get_peft_model(base.model, cfg)
    return _Arm(m, _peft_save(m), _merged(m), "PEFT save_pretrained",
                f"SORSA r={RANK}: SVD-initialised U, sigma, V^T + orthonormal regulariser (AdamW)",
                hooks=[SorsaHook.from_config(cfg)], config={"optimizer": "adamw", "lr": 1e-3})  # fmt: skip


def _arm_sara(base: CostBase, data: Any, batch_size: int) -> _Arm:
    from priorkit.adapters.sara import SPEC, SaRA
    from priorkit.train import Phase, Recipe

    m = base.model
    sara = SaRA(m.get_submodule(base.backbone), **SPEC.presets["small"], allow_others=True)
    head = m.get_submodule(base.head).requires_grad_(True)
    names = sara.trainable_names(m) + [n for n, p in m.named_parameters() if n.startswith(base.head + ".")]

    def opt(model: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.AdamW([*sara.params, *head.parameters()], lr=sara.lr, betas=sara.betas, eps=sara.eps,
                                 weight_decay=sara.weight_decay)  # fmt: skip

    recipe = Recipe([Phase("sara", epochs=1, trainable=names, optimizer=opt, grad_clip=sara.grad_clip)])

    def state() -> dict[str, Any]:
        return {"sara": sara.adapter_state_dict(), "head": head.state_dict()}

    def merged() -> nn.Module:
        sara.merge()  # bakes the backbone's tensors; the head is a plain Linear
        return m

    return _Arm(m, _torch_save(state), merged, "torch.save(SaRA adapter state + head)",
                "SaRA small preset: the 10% smallest entries of every backbone tensor train, nuclear-norm term on one "
                "tensor per step (AdamW)", hooks=[sara], recipe=recipe)  # fmt: skip


def _arm_glad(base: CostBase, data: Any, batch_size: int) -> _Arm:
    from priorkit.adapters.glad import SPEC, GLADRecipe, glad_lora

    m = glad_lora(base.model, list(base.targets), r=RANK, modules_to_save=[base.head])
    recipe = GLADRecipe(m, epochs=1, **SPEC.presets["small"])
    return _Arm(m, _peft_save(m), _merged(m), "PEFT save_pretrained",
                f"PEFT LoRA r={RANK} (CLIP-LoRA alpha 1, dropout 0.25) + GLAD: a second forward/backward at the SAM "
                "point every step", recipe=recipe)  # fmt: skip


def _arm_pela(base: CostBase, data: Any, batch_size: int) -> _Arm:
    from priorkit.adapters.pela import PELA, SPEC

    pela = PELA(base.model, list(base.blocks), **SPEC.presets["small"])
    s = pela.student
    return _Arm(s, _torch_save(s.state_dict), lambda: s, "torch.save(student state_dict)",
                f"PELA small preset: {len(pela.layers)} Linears factorised (ratio 2), every student parameter trains; "
                "the frozen teacher runs each step for the feature distillation", hooks=[pela],
                config={"optimizer": "adamw", "lr": 1e-4})  # fmt: skip


def _arm_my3dgen(base: CostBase, data: Any, batch_size: int) -> _Arm:
    from peft import get_peft_model

    from priorkit.adapters.my3dgen import SPEC, lazy_adam, lora_config
    from priorkit.train import Phase, Recipe

    p = SPEC.presets["small"]
    cfg = lora_config(base.model, r=RANK, lora_alpha=p["lora_alpha"], target_modules=list(base.linears))
    cfg.modules_to_save = [base.head]
    m = get_peft_model(base.model, cfg)

    def opt(model: nn.Module) -> torch.optim.Optimizer:
        params = [q for q in model.parameters() if q.requires_grad]
        return lazy_adam(params, lr=p["lr"], betas=p["betas"], eps=p["eps"], interval=p["lazy_interval"])

    return _Arm(m, _peft_save(m), _merged(m), "PEFT save_pretrained",
                f"PEFT LoRA r={RANK} on all {len(base.linears)} Linears (r k on k x k convs), lazy Adam; the symmetry "
                "and identity losses need a renderer and are not included", recipe=Recipe([Phase("my3dgen",
                optimizer=opt)]))  # fmt: skip


def _arm_said(base: CostBase, data: Any, batch_size: int) -> _Arm:
    from priorkit.adapters.said import SPEC, SubspaceModel

    sub = SubspaceModel(base.model, SAID_D, **SPEC.presets["small"], exclude=list(base.said_exclude), seed=0)

    def state() -> dict[str, Any]:
        out = {"z": sub.z.detach(), "config": sub.get_extra_state()}
        if sub.lam is not None:
            out["lam"] = sub.lam.detach()
        return out

    frozen = f", {', '.join(base.said_exclude)} frozen" if base.said_exclude else ""
    return _Arm(sub, _torch_save(state), sub.merge_and_unload, "torch.save(z, lambda, subspace record)",
                f"SAID d={SAID_D} (Fastfood, one scale per module, head in the subspace{frozen}; Adam)",
                config={"optimizer": "adam", "lr": 1e-2})  # fmt: skip


def _paired_batches(retain: IndexedTensorDataset, forget: IndexedTensorDataset, batch_size: int) -> Callable:
    """``Phase.make_batch`` for GS-LoRA: the retain rows of the plan plus a forget batch of the same size, cycling
    over the forget set in order of ``state.step``."""
    from priorkit.train import Batch

    def make(state: Any, idx: torch.Tensor) -> Any:
        f = (torch.arange(batch_size) + state.step * batch_size) % len(forget)
        extras = {"forget_x": forget.x[f], "forget_y": forget.y[f]}
        return Batch(x=retain.x[idx], y=retain.y[idx], index=idx, extras=extras)

    return make


def _arm_gs_lora(base: CostBase, data: Any, batch_size: int) -> _Arm:
    from peft import LoraConfig, get_peft_model

    from priorkit.adapters.gs_lora import SPEC, GSLoRALoss, default_bnd
    from priorkit.train import Phase, Recipe

    p = SPEC.presets["small"]
    retain, forget = data
    cfg = LoraConfig(r=RANK, lora_alpha=p["lora_alpha"], lora_dropout=0.0, target_modules=list(base.ffn),
                     modules_to_save=[base.head])  # fmt: skip
    m = get_peft_model(base.model, cfg)
    groups = dict(base.ffn)

    def group_fn(name: str) -> str | None:
        return next((g for layer, g in groups.items() if f"{layer}.lora_" in name), None)

    loss = GSLoRALoss(beta=p["beta"], bnd=default_bnd(base.num_classes, p["bnd_k"]), alpha=p["alpha"],
                      alpha_warmup=0, group_fn=group_fn, head=base.head)  # fmt: skip
    phase = Phase("gs_lora", data=retain, make_batch=_paired_batches(retain, forget, batch_size))
    return _Arm(m, _peft_save(m), _merged(m), "PEFT save_pretrained",
                f"PEFT LoRA r={RANK} on {len(base.ffn)} FFN Linears + GSLoRALoss (bounded forget CE on a second batch "
                f"of the forgotten class {FORGET_CLASS} each step, group lasso over {len(set(groups.values()))} "
                "blocks; AdamW); the EMA evaluation copy is not included", hooks=[loss], recipe=Recipe([phase]),
                config={"optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.05})  # fmt: skip


_BUILDERS: dict[str, Callable[[CostBase, Any, int], _Arm]] = {
    "full": _arm_full, "lora": _arm_lora, "sora": _arm_sora, "sorsa": _arm_sorsa, "sara": _arm_sara,
    "glad": _arm_glad, "pela": _arm_pela, "my3dgen": _arm_my3dgen, "said": _arm_said, "gs_lora": _arm_gs_lora,
}  # fmt: skip
_MODULES = {"sora": "sora", "sorsa": "sorsa", "sara": "sara", "glad": "glad", "pela": "pela", "my3dgen": "my3dgen",
            "said": "said", "gs_lora": "gs_lora"}  # fmt: skip


# -------------------------------------------------------------------------------------------- measurement
def _status_mb(key: str) -> float | None:
    """``VmRSS`` / ``VmHWM`` of this process in MiB (``None`` off Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _settle_and_reset_peak() -> bool:
    """Collect garbage, hand freed heap back to the system and reset the kernel's peak-RSS mark; ``True`` when the
    mark was reset (Linux >= 4.0)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _take(data: IndexedTensorDataset, n: int) -> IndexedTensorDataset:
    """The first ``n`` rows of ``data`` (cycled when it is shorter)."""
    idx = torch.arange(n) % len(data)
    return IndexedTensorDataset(data.x[idx], data.y[idx])


def _clocks(steps: int, warmup: int, record: dict[str, Any]) -> tuple[Any, Any]:
    """Two hooks around every other hook: the first starts a step's clock in ``transform_batch`` and counts the
    trainable parameters at the phase start; the last stops it in ``on_step_end`` and reads the peak memory after
    the last timed step."""
    from priorkit.train import Hook

    class Start(Hook):
        @property
        def state_key(self) -> str:
            return "AdapterCostStart"

        def on_phase_start(self, state: Any) -> None:
            seen = {id(p): p for p in state.model.parameters() if p.requires_grad}
            record["trainable_params"] = sum(p.numel() for p in seen.values())

        def transform_batch(self, state: Any, batch: Any) -> Any:
            record["_t0"] = time.perf_counter()
            return batch

    class Stop(Hook):
        @property
        def state_key(self) -> str:
            return "AdapterCostStop"

        def on_step_end(self, state: Any, batch: Any) -> None:
            record["_times"].append(time.perf_counter() - record["_t0"])
            if len(record["_times"]) == warmup + steps:
                record["_hwm"], record["_maxrss"] = _status_mb("VmHWM"), _maxrss_mb()

    record["_times"] = []
    return Start(), Stop()


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def _warm_engine() -> None:
    """One step of a 2-parameter model through the engine, so that what the first run of a process loads and
    allocates once (lazy imports, autograd's and Fabric's set-up) is not counted as a method's training memory."""
    from priorkit.train import fit

    data = IndexedTensorDataset(torch.zeros(2, 1), torch.tensor([0, 1]))
    fit(nn.Linear(1, 2), data, config={"epochs": 1, "batch_size": 2, "progress": False})


def _measure_one(method: str, model_factory: Callable[[], CostBase], data: IndexedTensorDataset, steps: int,
                 warmup: int, batch_size: int, threads: int) -> dict[str, Any]:  # fmt: skip
    """One arm, measured in the calling process (the child of :func:`measure_adapter_costs`); errors become a row
    with ``error`` so that one failing method does not hide the others."""
    from priorkit.core.seeding import seed_everything
    from priorkit.train import TrainConfig, fit

    row: dict[str, Any] = {"method": method}
    torch.set_num_threads(threads)
    try:
        _warm_engine()
        seed_everything(0)
        t0 = time.perf_counter()
        base = model_factory()
        if not isinstance(base, CostBase):
            raise PriorkitError(f"model_factory must return a CostBase, got {type(base).__name__}")
        row["base_params"] = _count(base.model)
        n = (warmup + steps) * batch_size
        if method == "gs_lora":
            keep = data.y != FORGET_CLASS
            if keep.all() or not keep.any():
                raise PriorkitError(f"gs_lora needs rows of class {FORGET_CLASS} (forgotten) and of other classes")
            forget = IndexedTensorDataset(data.x[~keep], data.y[~keep])
            train: Any = _take(IndexedTensorDataset(data.x[keep], data.y[keep]), n)
            arm = _BUILDERS[method](base, (train, forget), batch_size)
        else:
            train = _take(data, n)
            arm = _BUILDERS[method](base, train, batch_size)
        del base
        row.update(note=arm.note, file_kind=arm.file_kind, setup_s=time.perf_counter() - t0)
        record: dict[str, Any] = {}
        start, stop = _clocks(steps, warmup, record)
        config = TrainConfig(epochs=1, batch_size=batch_size, seed=0, progress=False, **arm.config)
        reset = _settle_and_reset_peak()
        rss0, maxrss0 = _status_mb("VmRSS"), _maxrss_mb()
        fit(arm.model, train, arm.recipe, hooks=[start, *arm.hooks, stop], config=config)
        times = record["_times"][warmup:]
        if len(times) != steps:
            raise PriorkitError(f"{method}: timed {len(times)} steps, expected {steps} (the run ended early)")
        row["trainable_params"] = record["trainable_params"]
        row["step_ms"] = 1e3 * statistics.median(times)
        row["step_ms_min"], row["step_ms_max"] = 1e3 * min(times), 1e3 * max(times)
        row["maxrss_increase_mb"] = record["_maxrss"] - maxrss0
        if reset and rss0 is not None and record.get("_hwm") is not None:
            row["peak_mem_mb"], row["mem_source"] = record["_hwm"] - rss0, "VmHWM - VmRSS after a peak reset"
        else:
            row["peak_mem_mb"], row["mem_source"] = row["maxrss_increase_mb"], "ru_maxrss increase"
        with tempfile.TemporaryDirectory(prefix="priorkit-costs-") as tmp:
            row["file_bytes"] = _size(arm.save(Path(tmp)))
        row["total_params"] = _count(arm.deployed())
    except Exception as err:  # one failing method must not hide the others' numbers
        row["error"] = f"{type(err).__name__}: {err}"
        row["traceback"] = traceback.format_exc()
    return row


def _missing_method(method: str) -> str | None:
    """Why ``method``'s module cannot be used (``None`` when it is there)."""
    import importlib.util

    if method in _MODULES and importlib.util.find_spec(f"priorkit.adapters.{_MODULES[method]}") is None:
        return f"priorkit/adapters/{_MODULES[method]}.py is missing"
    return None


def _ratio(a: Any, b: Any) -> float | None:
    if a is None or b is None or not isinstance(b, int | float) or b <= 0:
        return None
    return float(a) / float(b)


def measure_adapter_costs(
    model_factory: Callable[[], CostBase],
    data: IndexedTensorDataset,
    *,
    methods: Sequence[str] = METHODS,
    steps: int = 10,
    warmup: int = 2,
    batch_size: int = 16,
    threads: int = 1,
    isolate: bool = True,
) -> list[dict[str, Any]]:
    """One row per method (in ``methods`` order) with its parameter counts, file size, median step time, peak
    training memory and the ratios to LoRA's row (module docstring). ``model_factory()`` builds the pretrained base
    (a :class:`CostBase`; a module-level function or a ``functools.partial`` of one, so that a spawned process can
    call it); ``data`` is the training set (cycled to ``(warmup + steps) * batch_size`` rows). ``isolate``: every
    method in a fresh spawned process (the memory column needs it; ``False`` runs them here, one after another,
    for tests). Ratios are ``None`` when ``"lora"`` is not among ``methods`` or failed."""
    if isinstance(methods, str) or not isinstance(methods, Sequence) or not methods:
        raise PriorkitError(f"methods must be a non-empty list of method names from {list(METHODS)}, got {methods!r}")
    for m in methods:
        check_choice("method", m, METHODS)
    if len(set(methods)) != len(methods):
        raise PriorkitError(f"methods must not repeat a name, got {list(methods)}")
    check_positive_int("steps", steps)
    check_positive_int("warmup", warmup, 0)
    check_positive_int("batch_size", batch_size)
    check_positive_int("threads", threads)
    if not callable(model_factory):
        raise PriorkitError(f"model_factory must be a callable returning a CostBase, got {model_factory!r}")
    if not isinstance(data, IndexedTensorDataset) or len(data) == 0:
        raise PriorkitError(f"data must be a non-empty priorkit IndexedTensorDataset, got {type(data).__name__}")
    rows = []
    for m in methods:
        why = _missing_method(m)
        if why is not None:
            rows.append({"method": m, "error": f"not measured: {why}"})
            continue
        args = (m, model_factory, data, steps, warmup, batch_size, threads)
        rows.append(_in_child(args) if isolate else _measure_one(*args))
    lora = next((r for r in rows if r["method"] == BASELINE and not r.get("error")), {})
    for r in rows:
        r["steps"], r["warmup"], r["batch_size"] = steps, warmup, batch_size
        r["time_vs_lora"] = _ratio(r.get("step_ms"), lora.get("step_ms"))
        r["mem_vs_lora"] = _ratio(r.get("peak_mem_mb"), lora.get("peak_mem_mb"))
        r["params_vs_lora"] = _ratio(r.get("trainable_params"), lora.get("trainable_params"))
        r["file_vs_lora"] = _ratio(r.get("file_bytes"), lora.get("file_bytes"))
    return rows


def _in_child(args: tuple[Any, ...]) -> dict[str, Any]:
    """:func:`_measure_one` in a fresh spawned process with one OpenMP/MKL thread."""
    import concurrent.futures
    import multiprocessing

    saved = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    os.environ.update({k: str(args[-1]) for k in saved})
    try:
        ctx = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
            return pool.submit(_measure_one, *args).result()
    except Exception as err:  # the child died (killed for memory, a crash): report it as the row
        return {"method": args[0], "error": f"child process failed: {type(err).__name__}: {err}"}
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# ------------------------------------------------------------------------------------------------- output
def _stamp(threads: int, seconds: float) -> dict[str, Any]:
    from priorkit.experiments.base import run_stamp

    return run_stamp(threads, seconds)


def write_adapter_costs(
    out_dir: str | os.PathLike,
    rows: list[dict[str, Any]],
    *,
    settings: dict[str, Any] | None = None,
    threads: int = 1,
    seconds: float = 0.0,
) -> dict[str, Path]:
    """Write ``adapter_costs.json`` (``{"stamp", "settings", "rows"}``; the stamp: priorkit commit, torch, CPU,
    threads, wall seconds, as the bench stamps its records) and the Markdown table ``adapter_costs.md`` into
    ``out_dir``; returns both paths."""
    if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) and "method" in r for r in rows):
        raise PriorkitError("rows must be the non-empty list of row dicts measure_adapter_costs returns")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    settings = dict(settings or {})
    for k in ("steps", "warmup", "batch_size"):  # what the rows say, unless the caller said it
        settings.setdefault(k, rows[0].get(k))
    record = {"stamp": _stamp(threads, seconds), "settings": settings,
              "rows": [{k: v for k, v in r.items() if k != "traceback"} for r in rows]}  # fmt: skip
    paths = {"json": out / JSON_NAME, "md": out / MD_NAME}
    paths["json"].write_text(json.dumps(_clean(record), indent=1, allow_nan=False) + "\n")
    paths["md"].write_text(adapter_costs_markdown(record))
    return paths


def _clean(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    return obj


def load_adapter_costs(path: str | os.PathLike) -> dict[str, Any]:
    """Read an ``adapter_costs.json`` written by :func:`write_adapter_costs`."""
    return json.loads(Path(path).read_text())


_HEAD = ["method", "trainable", "% of full", "total after", "file", "ms/step", "peak MB", "time x LoRA",
         "mem x LoRA", "params x LoRA", "what was measured"]  # fmt: skip


def _n(v: Any) -> str:
    if v is None:
        return "-"
    if v >= 1e6:
        return f"{v / 1e6:.2f}M"
    if v >= 1e4:
        return f"{v / 1e3:.1f}k"
    return str(int(v))


def _bytes(v: Any) -> str:
    if v is None:
        return "-"
    return f"{v / 2**20:.2f} MiB" if v >= 2**20 else f"{v / 2**10:.1f} KiB"


def _x(v: Any, digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _cells(rows: list[dict[str, Any]]) -> list[list[str]]:
    full = next((r.get("trainable_params") for r in rows if r["method"] == REFERENCE and not r.get("error")), None)
    out = []
    for r in rows:
        if r.get("error"):
            out.append([r["method"], *["-"] * (len(_HEAD) - 2), f"not measured: {r['error']}"])
            continue
        pct = _ratio(r.get("trainable_params"), full)
        out.append([
            r["method"], _n(r.get("trainable_params")), "-" if pct is None else f"{100 * pct:.3g}%",
            _n(r.get("total_params")), _bytes(r.get("file_bytes")), _x(r.get("step_ms"), 1),
            _x(r.get("peak_mem_mb"), 1), _x(r.get("time_vs_lora")), _x(r.get("mem_vs_lora")),
            _x(r.get("params_vs_lora")), r.get("note", ""),
        ])  # fmt: skip
    return out


def _intro(record: dict[str, Any]) -> str:
    s, st = record.get("settings", {}), record.get("stamp", {})
    commit = str(st.get("commit", "unknown"))[:10] + (" (dirty)" if st.get("dirty") else "")
    return (
        f"Base: {s.get('base', '-')}; {s.get('steps', '-')} timed steps after {s.get('warmup', '-')} warm-up, batch "
        f"{s.get('batch_size', '-')}, each method in a fresh process on {st.get('threads', '-')} thread(s). Median "
        "wall ms per optimizer step through the engine; peak MB is the CPU process peak-RSS increase during the "
        "timed steps (the CPU stand-in for torch.cuda.max_memory_allocated); total after = parameters of the network "
        "the method leaves (adapters merged); file = what restores the method on the base. Stamp: priorkit "
        f"{commit}, torch {st.get('torch', '-')}, {st.get('cpu', '-')}, {st.get('seconds', '-')} s."
    )


def adapter_costs_markdown(record: dict[str, Any]) -> str:
    """The Markdown section (heading, settings and stamp, one table row per method)."""
    lines = ["## Adapter costs", "", _intro(record), "", "| " + " | ".join(_HEAD) + " |", "|" + "---|" * len(_HEAD)]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in _cells(record["rows"])]
    return "\n".join(lines) + "\n"


def adapter_costs_html(record: dict[str, Any]) -> str:
    """The same section for the HTML report."""
    import html

    e = html.escape
    head = "".join(f"<th>{e(h)}</th>" for h in _HEAD)
    body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in _cells(record["rows"]))
    return (f"<h2 id='adapter-costs'>Adapter costs</h2><p class='small'>{e(_intro(record))}</p>"
            f"<table><tr>{head}</tr>{body}</table>")  # fmt: skip


# ---------------------------------------------------------------------------------------------------- CLI
def build_costs_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """The arguments of ``priorkit costs`` (added to ``parser`` when given)."""
    p = parser or argparse.ArgumentParser(prog="priorkit costs", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="bench-out", help="folder for adapter_costs.json / .md (default bench-out)")
    p.add_argument("--base", choices=["minilm", "mlp"], default="minilm", help="the pretrained base (default minilm)")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {','.join(METHODS)}")
    p.add_argument("--steps", type=int, default=10, help="timed steps per method (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps before them (default 2)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-len", type=int, default=32, help="token ids per sentence (minilm base)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--in-process", action="store_true", help="no fresh process per method (memory less exact)")
    return p


def run_costs(args: argparse.Namespace) -> int:
    """Run ``priorkit costs`` from parsed arguments (:func:`build_costs_parser`): measure, write the JSON and the
    Markdown table into ``--out`` and print the table. Bad arguments raise PriorkitError."""
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    check_positive_int("--max-len", args.max_len, 4)
    check_positive_int("--steps", args.steps)
    check_positive_int("--warmup", args.warmup, 0)
    check_positive_int("--batch-size", args.batch_size)
    n = max(64, (args.warmup + args.steps) * args.batch_size)
    if args.base == "minilm":
        factory: Callable[[], CostBase] = minilm_base
        data, name = text_task(n, args.max_len), "all-MiniLM-L6-v2 + linear head, 4-topic templated sentences"
    else:
        factory, data, name = mlp_base, mlp_task(n), "MLP 16-32-32-4 (random weights), Gaussian 4-class task"
    t0 = time.perf_counter()
    rows = measure_adapter_costs(
        factory,
        data,
        methods=methods,
        steps=args.steps,
        warmup=args.warmup,
        batch_size=args.batch_size,
        threads=args.threads,
        isolate=not args.in_process,
    )
    settings = {
        "base": name,
        "steps": args.steps,
        "warmup": args.warmup,
        "batch_size": args.batch_size,
        "max_len": args.max_len if args.base == "minilm" else None,
        "isolated": not args.in_process,
    }
    paths = write_adapter_costs(args.out, rows, settings=settings, threads=args.threads,
                                seconds=time.perf_counter() - t0)  # fmt: skip
    print(paths["md"].read_text())
    print(f"wrote {paths['json']} and {paths['md']}")
    return 0


def main_costs(argv: Sequence[str] | None = None) -> int:
    """``priorkit costs [options]`` as a stand-alone entry: parse ``argv`` and :func:`run_costs`; a PriorkitError is
    printed and returns 2, as the main CLI does."""
    args = build_costs_parser().parse_args(list(argv) if argv is not None else None)
    try:
        return run_costs(args)
    except PriorkitError as err:
        print(f"priorkit: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main_costs())
