"""Ops: each file holds a pure-PyTorch reference, its fused kernel and the autograd glue."""
from .coefficients import mhc_coefficients, mhc_coefficients_reference
from .post_res import post_res, post_res_reference
from .pre_mix import pre_mix, pre_mix_reference
from .sinkhorn import SinkhornError, sinkhorn, sinkhorn_reference

__all__ = [
    "sinkhorn", "sinkhorn_reference", "SinkhornError",
    "mhc_coefficients", "mhc_coefficients_reference",
    "pre_mix", "pre_mix_reference", "post_res", "post_res_reference",
]
