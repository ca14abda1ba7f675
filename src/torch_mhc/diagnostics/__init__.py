"""Diagnostics of hyper-connections (mHC paper, Sec. 3.1 and 4): what the constraint buys.

* :mod:`.gain` -- Amax gain magnitude (forward: max absolute row sum, backward: max
  absolute column sum) of each layer's ``H_res`` and of the composite over layers ``1..l``.
* :mod:`.stats` -- distance of ``H_res`` from doubly stochastic and from the identity, its
  entropy; ranges of ``H_pre`` and ``H_post``.
* :mod:`.gradients` -- per-layer gradient norms (parameters and residual stream), the
  deepest/shallowest ratio, gradient-norm spikes.
* :mod:`.paper` -- the same gains in the paper's convention (composite over layers
  ``l..L``, averaged over the tokens of a sequence) and the per-step metrics (last/first
  layer gradient-norm ratio, mean ``||H_res||_F``).
* :mod:`.probe` -- all of the above in one forward/backward on a probe batch, as the
  trainer records it every ``--diag-interval`` steps.
"""
from .gain import amax_gain, composite_products, gain_profile
from .gradients import StreamGradRecorder, depth_ratio, find_spikes, param_grad_norms
from .paper import hres_frobenius, paper_gains, step_stats
from .probe import collect_mappings, probe_diagnostics
from .stats import hres_stats, mean_matrix, range_stats

__all__ = ["amax_gain", "composite_products", "gain_profile", "hres_stats", "range_stats",
           "mean_matrix", "StreamGradRecorder", "param_grad_norms", "depth_ratio",
           "find_spikes", "probe_diagnostics", "collect_mappings", "paper_gains",
           "hres_frobenius", "step_stats"]
