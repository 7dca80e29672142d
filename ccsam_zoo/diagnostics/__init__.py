"""Sharpness and loss-landscape diagnostics (CC-SAM Sec. 2.2.1, Fig. 1 and Appendix E).

- ``loss_curves``: loss vs. relative noise norm ``||eps|| / ||theta||`` per shot group, global and local range,
  with scalar summaries (loss increase at fixed norms, worst-case sharpness).
- ``worst_case_sharpness``: ``max_{||eps_f|| <= rho ||theta_f||} L(theta + eps) - L(theta)`` per group (a ball
  per filter f by default; per tensor, one global or an absolute ball on request).
- ``landscape_2d``: loss on a plane spanned by two filter-normalised random directions.
- ``save_report``: JSON + PNG plots (+ a markdown summary table).
"""

from .landscape import landscape_2d
from .sharpness import loss_curves, save_report, worst_case_sharpness

__all__ = ["loss_curves", "worst_case_sharpness", "landscape_2d", "save_report"]
