"""Modules: the hyper-connection layer, its modes and the stream helpers."""
from .hyper_connection import HyperConnection
from .modes import MODES, ConnectionMode, connection_mode, register_mode
from .hyper_head import HyperHead
from .norm import RMSNorm
from .streams import expand_streams, reduce_streams

__all__ = ["HyperConnection", "HyperHead", "MODES", "ConnectionMode", "register_mode",
           "connection_mode", "RMSNorm", "expand_streams", "reduce_streams"]
