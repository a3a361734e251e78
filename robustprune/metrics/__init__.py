"""Compressibility, dispersion, operator norms, alignment, Lipschitz and gap bounds.

Definitions follow DESIGN.md ("Definitions"); ``q`` defaults to 2. For a non-negative
vector ``theta`` of length ``n`` sorted descending, ``theta_k`` keeps its ``k`` largest
entries. A weight is matricized with rows = output units (:func:`robustprune.layers.matricize`);
neuron compressibility uses the row l1 norms ``nu_i = ||W_i||_1``, spectral compressibility
the singular values ``sigma`` of the matricized weight.

Everything here is deterministic: power iterations start from a vector drawn from a local,
fixed-seed generator and never touch the global RNG. Spectra, residual curves and
dispersions are computed in float64 (one ``svdvals`` per weight, no loop over rows);
power iterations through convolutions run in the layer's own dtype.

- :mod:`~robustprune.metrics.compressibility`: residual curve, ``k``, dispersion, structure factor;
- :mod:`~robustprune.metrics.norms`: row norms, singular values, operator norms, adjoints;
- :mod:`~robustprune.metrics._lanczos`: the Lanczos-accelerated power iteration;
- :mod:`~robustprune.metrics.alignment`: alignment of consecutive layers;
- :mod:`~robustprune.metrics.bounds`: Lipschitz and gap bounds (the gap bound's factor
  follows the head's loss: binary logistic or softmax cross-entropy), certified fraction;
- :mod:`~robustprune.metrics.audit`: the dominant-direction audit.
"""

from __future__ import annotations

from robustprune.metrics._checks import Norm as Norm
from robustprune.metrics._checks import check_budget as check_budget
from robustprune.metrics._checks import check_count as check_count
from robustprune.metrics._checks import check_eps as check_eps
from robustprune.metrics._checks import check_norm as check_norm
from robustprune.metrics._checks import check_real as check_real
from robustprune.metrics._lanczos import ALIGNMENT_TOL as ALIGNMENT_TOL
from robustprune.metrics._lanczos import POWER_TOL as POWER_TOL
from robustprune.metrics.alignment import alignment as alignment
from robustprune.metrics.audit import AuditResult as AuditResult
from robustprune.metrics.audit import dominant_direction_audit as dominant_direction_audit
from robustprune.metrics.audit import top_input_direction as top_input_direction
from robustprune.metrics.bounds import HEAD_LOSSES as HEAD_LOSSES
from robustprune.metrics.bounds import aligned_lipschitz_bound as aligned_lipschitz_bound
from robustprune.metrics.bounds import certified_fraction as certified_fraction
from robustprune.metrics.bounds import gap_bound as gap_bound
from robustprune.metrics.bounds import gap_factor as gap_factor
from robustprune.metrics.bounds import head_loss as head_loss
from robustprune.metrics.bounds import logit_margins as logit_margins
from robustprune.metrics.bounds import naive_lipschitz_bound as naive_lipschitz_bound
from robustprune.metrics.compressibility import Compressibility as Compressibility
from robustprune.metrics.compressibility import compressibility as compressibility
from robustprune.metrics.compressibility import dispersion as dispersion
from robustprune.metrics.compressibility import k_for_eps as k_for_eps
from robustprune.metrics.compressibility import neuron_compressibility as neuron_compressibility
from robustprune.metrics.compressibility import relative_residual as relative_residual
from robustprune.metrics.compressibility import residual_curve as residual_curve
from robustprune.metrics.compressibility import spectral_compressibility as spectral_compressibility
from robustprune.metrics.compressibility import structure_factor as structure_factor
from robustprune.metrics.norms import conv_norm_bound_factor as conv_norm_bound_factor
from robustprune.metrics.norms import operator_norm as operator_norm
from robustprune.metrics.norms import row_norms as row_norms
from robustprune.metrics.norms import singular_values as singular_values
from robustprune.metrics.norms import weight_matrix as weight_matrix

__all__ = [
    "Norm",
    "residual_curve",
    "relative_residual",
    "k_for_eps",
    "dispersion",
    "structure_factor",
    "Compressibility",
    "compressibility",
    "neuron_compressibility",
    "spectral_compressibility",
    "row_norms",
    "singular_values",
    "weight_matrix",
    "operator_norm",
    "conv_norm_bound_factor",
    "alignment",
    "naive_lipschitz_bound",
    "aligned_lipschitz_bound",
    "gap_bound",
    "gap_factor",
    "head_loss",
    "HEAD_LOSSES",
    "logit_margins",
    "certified_fraction",
    "AuditResult",
    "top_input_direction",
    "dominant_direction_audit",
    "check_eps",
    "check_norm",
    "check_budget",
    "check_real",
    "check_count",
    "POWER_TOL",
    "ALIGNMENT_TOL",
]
