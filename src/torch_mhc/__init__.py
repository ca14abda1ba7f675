"""torch-mhc: Manifold-Constrained Hyper-Connections (DeepSeek, arXiv 2512.24880) for PyTorch.

Public API:

* :func:`sinkhorn` -- project ``(..., n, n)`` logits onto the doubly stochastic matrices.
* :func:`expand_streams`, :func:`reduce_streams` -- widen a hidden state to ``n`` streams and back.
* :class:`HyperConnection` -- mHC, HC or plain residual around any branch module.
* :class:`HyperHead` -- DeepSeek-V4's learned collapse of the streams.
* :mod:`torch_mhc.models` -- a GPT-style LM and a deep plain stack with the same switch.
"""
from .nn import HyperConnection, HyperHead, RMSNorm, expand_streams, reduce_streams
from .ops import SinkhornError, sinkhorn

__version__ = "0.1.0"

__all__ = ["sinkhorn", "SinkhornError", "expand_streams", "reduce_streams", "HyperConnection",
           "HyperHead", "RMSNorm", "__version__"]
