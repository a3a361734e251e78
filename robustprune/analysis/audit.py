"""The dominant-direction audit (DESIGN.md): accuracy under ``x +- delta * sign(v_1)``, ``v_1``
the top right singular vector of the first layer.

The code lives in :mod:`robustprune.metrics.audit` so that ``robustprune.metrics`` can
export it without importing this package (which imports the metrics: no import cycle); it
is re-exported here, next to :func:`~robustprune.analysis.analyze` that runs it.
"""

from __future__ import annotations

from robustprune.metrics.audit import AuditResult as AuditResult
from robustprune.metrics.audit import dominant_direction_audit as dominant_direction_audit
from robustprune.metrics.audit import top_input_direction as top_input_direction

__all__ = ["AuditResult", "top_input_direction", "dominant_direction_audit"]
