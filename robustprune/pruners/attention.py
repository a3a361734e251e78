"""timm-style multi-head attention under channel pruning: finding the attention modules,
refusing what torch-pruning cannot resize, and keeping the head bookkeeping consistent.

torch-pruning prunes the head dimensions of a fused ``qkv`` Linear (``[q | k | v]`` rows of
``num_heads * head_dim`` each) evenly in every head; afterwards ``head_dim`` (and
``attn_dim`` on newer timm) must follow the new width, and the fused path
(``scaled_dot_product_attention``, scaling by the *current* ``head_dim**-0.5``) and the
non-fused path (``self.scale``) must agree.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from robustprune.errors import ModelNotSupportedError, PruningError
from robustprune.layers import LowRankLinear

__all__ = ["attention_modules", "qkv_producer", "check_attention_supported", "sync_attention"]


def attention_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """Multi-head attention modules in timm's layout: a fused ``qkv`` Linear (or a
    factorized :class:`LowRankLinear`) producing ``[q | k | v]`` of ``num_heads * head_dim``
    each."""
    for name, m in model.named_modules():
        if (
            qkv_producer(m) is not None
            and isinstance(getattr(m, "num_heads", None), int)
            and isinstance(getattr(m, "head_dim", None), int)
        ):
            yield name, m


def qkv_producer(attention: nn.Module) -> nn.Linear | None:
    """The Linear whose output rows are ``[q | k | v]`` (``qkv`` itself, or the second
    factor of a spectrally factorized ``qkv``)."""
    qkv = getattr(attention, "qkv", None)
    if isinstance(qkv, nn.Linear):
        return qkv
    if isinstance(qkv, LowRankLinear):
        return qkv.b
    return None


def check_attention_supported(attention: dict[str, nn.Module], qkv: Sequence[nn.Module]) -> None:
    """Refuse to prune the head dimensions of attention modules (among ``attention``, by
    name) whose ``qkv`` producer is in ``qkv`` and that normalize queries and keys per head."""
    for name, m in attention.items():
        if qkv_producer(m) in qkv:
            for attr in ("q_norm", "k_norm"):
                norm = getattr(m, attr, None)
                if norm is not None and not isinstance(norm, nn.Identity):
                    raise ModelNotSupportedError(
                        f"Cannot prune the head dimensions of '{name}': it normalizes queries and "
                        f"keys per head ({attr}), which torch-pruning does not resize. Workaround: "
                        f"ignored_layers=[model.get_submodule('{name}.qkv')]."
                    )


def sync_attention(model: nn.Module, *, rescale: bool) -> None:
    """After head dimensions were pruned, set ``head_dim`` (and ``attn_dim``) from the new
    ``qkv`` width and make the fused (``scaled_dot_product_attention``, which scales by
    ``head_dim**-0.5`` of the *current* width) and non-fused (``self.scale``) paths agree:
    ``scale = new_head_dim**-0.5`` and, with ``rescale``, the query rows of ``qkv`` are
    multiplied by ``old_scale * sqrt(new_head_dim)``, so both paths compute exactly the
    pruned attention logits at the original temperature. Replays (``rescale=False``) only
    set the attributes: the saved weights are already rescaled."""
    for name, m in attention_modules(model):
        heads = int(m.num_heads)
        producer = qkv_producer(m)
        width = producer.out_features
        if width % (3 * heads):
            raise PruningError(
                f"'{name}.qkv' has {width} outputs, not a multiple of 3 x {heads} heads; the head "
                f"dimensions were pruned unevenly. Ignore it: ignored_layers=[model.get_submodule('{name}.qkv')]."
            )
        new_hd, old_hd = width // (3 * heads), int(m.head_dim)
        if new_hd == old_hd:
            continue
        if rescale:
            _rescale_queries(producer, heads * new_hd, float(getattr(m, "scale", old_hd**-0.5)) * math.sqrt(new_hd))
        m.head_dim = new_hd
        if isinstance(getattr(m, "attn_dim", None), int):
            m.attn_dim = heads * new_hd
        if isinstance(getattr(m, "scale", None), float):
            m.scale = new_hd**-0.5


def _rescale_queries(producer: nn.Linear, rows: int, factor: float) -> None:
    """Multiply the first ``rows`` outputs (the queries) of ``producer`` by ``factor``, in
    new Parameters."""
    with torch.no_grad():
        for pname in ("weight", "bias"):
            p = getattr(producer, pname, None)
            if p is None:
                continue
            new = p.detach().clone()
            new[:rows] *= factor
            setattr(producer, pname, nn.Parameter(new, requires_grad=p.requires_grad))
