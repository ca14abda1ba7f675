"""Modules: the hyper-connection layer and the stream helpers."""
from .hyper_connection import MODES, HyperConnection
from .norm import RMSNorm
from .streams import expand_streams, reduce_streams

__all__ = ["HyperConnection", "MODES", "RMSNorm", "expand_streams", "reduce_streams"]
