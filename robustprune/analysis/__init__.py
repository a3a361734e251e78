"""``analyze(model, ...) -> Report``: per-layer compressibility table, network bounds, audit.

All quantities are measured on :func:`robustprune.layers.fold_for_analysis` of the model
(eval-mode BatchNorm and the input normalization folded into the adjacent weights), so they
describe the map from raw inputs in [0, 1] to logits. The model itself is never modified.

Per layer (rows = output units of the matricized weight):
spectral compressibility ``k_sigma`` at the chosen ``eps``, the achieved ``eps_sigma``,
dispersion ``beta_sigma`` and structure factor ``S_sigma = sqrt(1-eps^2)/(sqrt(k)(1-beta))``;
the same for the row l1 norms ``nu`` (neuron compressibility); the scale ``||W||_F``; the
matricized ``sigma_max`` (``= S_sigma ||W||_F`` exactly), the conv operator l2 norm when
``conv_norm="operator"``, ``||W||_inf``; and the alignment ``A_p`` with the layer(s) it feeds.

Network (sequential chains only; residual or attention models get ``None`` and the reason):
the naive Lipschitz bound ``prod ||W^l||_p`` of the encoder (every layer but the head, times
the Lipschitz constants of the ops between), the aligned estimate (not a bound), the head's
norm ``||C||_(p->p)``, the gap bound that holds for the head (``delta L ||c||`` for a
one-logit logistic head; ``2 delta L ||C||`` in l-infinity, ``sqrt(2) delta L ||C||`` in l2
for a softmax cross-entropy head) and, with labelled data, the certified fraction. With
labelled data, the dominant-direction audit runs for every norm.

- :mod:`~robustprune.analysis.analyze`: :func:`analyze`, step by step;
- :mod:`~robustprune.analysis.report`: :class:`Report`, :class:`LayerRow`,
  :class:`NetworkBound` and their text, markdown and JSON rendering;
- :mod:`~robustprune.analysis.audit`: the dominant-direction audit;
- private helpers: ``_checks`` (the argument checks), ``_data`` (data, example inputs,
  recording forwards), ``_pairs`` (pair alignment), ``_network`` (chain bounds).
"""

from __future__ import annotations

from robustprune.analysis._checks import DEFAULT_DELTA as DEFAULT_DELTA
from robustprune.analysis._pairs import CONV_ALIGNMENT_SAMPLES as CONV_ALIGNMENT_SAMPLES
from robustprune.analysis.analyze import analyze as analyze
from robustprune.analysis.audit import AuditResult as AuditResult
from robustprune.analysis.audit import dominant_direction_audit as dominant_direction_audit
from robustprune.analysis.audit import top_input_direction as top_input_direction
from robustprune.analysis.report import LayerRow as LayerRow
from robustprune.analysis.report import NetworkBound as NetworkBound
from robustprune.analysis.report import Report as Report

__all__ = ["LayerRow", "NetworkBound", "Report", "analyze", "DEFAULT_DELTA"]
