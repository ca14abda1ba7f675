"""Modules: the hyper-connection layer and the stream helpers."""
from .hyper_connection import MODES, HyperConnection
from .hyper_head import HyperHead
from .norm import RMSNorm
from .streams import expand_streams, reduce_streams

__all__ = ["HyperConnection", "HyperHead", "MODES", "RMSNorm", "expand_streams", "reduce_streams"]
