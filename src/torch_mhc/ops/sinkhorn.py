"""Sinkhorn-Knopp projection onto the doubly stochastic matrices (mHC paper, Eq. 9).

``sinkhorn(logits)`` maps ``(..., n, n)`` logits ``H~res`` to ``H_res``: start from
``M0 = exp(H~res)`` and repeat ``M <- T_r(T_c(M))`` (normalise columns, then rows)
``iters`` times (``t_max = 20`` in the paper). After a finite number of iterations the rows
sum to 1 exactly and the columns approximately.

Two numerics, one result:

* ``eps == 0`` (the paper): log domain, ``L <- L - logsumexp(L)`` along columns then rows.
  Stable for any finite logits (1e3 and beyond), since nothing is ever exponentiated
  before the final step.
* ``eps > 0`` (the DeepSeek-V4 convention): linear domain exactly as the
  released checkpoints compute it: ``softmax`` along columns ``+ eps``, then row
  normalisation, then ``iters - 1`` (column, row) normalisations, each ``x / (sum + eps)``.
  (V4 writes this on ``comb = H_res^T``; here it is written on ``H_res``.)

The math runs in float32 (float64 stays float64) whatever the input dtype and the result
is returned in the input dtype.

Gradients: ``backward="recompute"`` (default) is a custom autograd Function that keeps
only the logits and re-runs the iterations inside backward, so the ``2 * iters``
intermediates live only transiently during backward (memory-light). ``backward="unrolled"``
is plain autograd through the loop: the readable reference the custom one is tested against.
"""
from __future__ import annotations

from typing import Optional

import torch

__all__ = ["sinkhorn", "sinkhorn_reference", "sinkhorn_vjp", "SinkhornError"]


class SinkhornError(ValueError):
    """Raised for logits that cannot be projected (wrong shape or non-finite values)."""


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def sinkhorn_reference(logits: torch.Tensor, iters: int = 20, eps: float = 0.0,
                       tol: Optional[float] = None) -> torch.Tensor:
    """Unrolled Sinkhorn-Knopp (Eq. 9); plain autograd differentiates through the loop.

    Computes in float32 (float64 if given) and returns that compute dtype; ``sinkhorn``
    casts back. ``tol`` stops early once every column sum is within ``tol`` of 1 (rows are
    exact after each row step); it synchronises with the device every iteration, so it is
    meant for analysis, not training.
    """
    x = logits.to(_compute_dtype(logits.dtype))
    if eps == 0.0:
        for _ in range(iters):
            x = x - torch.logsumexp(x, dim=-2, keepdim=True)  # T_c: columns sum to 1
            x = x - torch.logsumexp(x, dim=-1, keepdim=True)  # T_r: rows sum to 1
            if tol is not None and _column_error(x.exp()) < tol:
                break
        return x.exp()
    m = torch.softmax(x, dim=-2) + eps  # V4: softmax (on comb rows = H_res columns) + eps
    m = m / (m.sum(dim=-1, keepdim=True) + eps)
    for _ in range(iters - 1):
        m = m / (m.sum(dim=-2, keepdim=True) + eps)
        m = m / (m.sum(dim=-1, keepdim=True) + eps)
        if tol is not None and _column_error(m) < tol:
            break
    return m


def _column_error(m: torch.Tensor) -> float:
    return float((m.sum(dim=-2) - 1).abs().max()) if m.numel() else 0.0


def sinkhorn_vjp(logits: torch.Tensor, grad_out: torch.Tensor, iters: int = 20,
                 eps: float = 0.0) -> torch.Tensor:
    """The gradient of :func:`sinkhorn_reference` at ``logits`` against ``grad_out``,
    written out (no autograd; the iterates are recomputed). In the compute dtype.

    * ``eps == 0``: each step ``z' = z - logsumexp(z)`` along a dim has the vector-Jacobian
      product ``dz = dz' - exp(z') * sum(dz')`` (``exp(z')`` is the softmax of ``z``);
    * ``eps > 0``: each normalisation ``y = m / (sum(m) + eps)`` has
      ``dm = (dy - sum(dy * y)) / (sum(m) + eps)``, the first softmax ``s`` has
      ``dz = s * (ds - sum(ds * s))``.
    """
    z = logits.to(_compute_dtype(logits.dtype))
    grad = grad_out.to(z.dtype)
    if eps == 0.0:
        probs = []  # exp of every iterate, alternately after a column and a row step
        for _ in range(iters):
            z = z - torch.logsumexp(z, dim=-2, keepdim=True)
            probs.append(z.exp())
            z = z - torch.logsumexp(z, dim=-1, keepdim=True)
            probs.append(z.exp())
        grad = grad * probs[-1]
        for k in reversed(range(len(probs))):
            grad = grad - probs[k] * grad.sum(dim=-1 if k % 2 else -2, keepdim=True)
        return grad
    soft = torch.softmax(z, dim=-2)
    steps, m = [], soft + eps  # (input, dim) of each normalisation, as sinkhorn_reference
    for dim in [-1] + [-2, -1] * (iters - 1):
        steps.append((m, dim))
        m = m / (m.sum(dim=dim, keepdim=True) + eps)
    for m, dim in reversed(steps):
        den = m.sum(dim=dim, keepdim=True) + eps
        grad = (grad - (grad * m / den).sum(dim=dim, keepdim=True)) / den
    return soft * (grad - (grad * soft).sum(dim=-2, keepdim=True))


class _SinkhornRecompute(torch.autograd.Function):
    """Forward without a graph; backward re-runs the iterations (:func:`sinkhorn_vjp`)."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, iters: int, eps: float) -> torch.Tensor:
        ctx.save_for_backward(logits)
        ctx.iters, ctx.eps = iters, eps
        with torch.no_grad():
            return sinkhorn_reference(logits, iters, eps)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        (logits,) = ctx.saved_tensors
        grad = sinkhorn_vjp(logits, grad_out, ctx.iters, ctx.eps)
        return grad.to(logits.dtype), None, None


def _validate(logits: torch.Tensor, iters: int, eps: float, check_finite: bool) -> None:
    if not isinstance(logits, torch.Tensor):
        raise SinkhornError(f"sinkhorn expects a tensor, got {type(logits).__name__}")
    if logits.dim() < 2 or logits.shape[-1] != logits.shape[-2]:
        raise SinkhornError(
            f"sinkhorn expects square logits of shape (..., n, n), got {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise SinkhornError(f"sinkhorn expects floating-point logits, got {logits.dtype}")
    if int(iters) < 1:
        raise SinkhornError(f"iters must be >= 1, got {iters}")
    if eps < 0:
        raise SinkhornError(f"eps must be >= 0, got {eps}")
    if check_finite and logits.numel() and not bool(torch.isfinite(logits).all()):
        bad = int((~torch.isfinite(logits)).sum())
        raise SinkhornError(
            f"sinkhorn got {bad} non-finite logit(s) (NaN or Inf); pass check_finite=False to "
            "let them propagate as NaN instead (no device sync)")


def sinkhorn(logits: torch.Tensor, iters: int = 20, *, eps: float = 0.0,
             tol: Optional[float] = None, backward: str = "recompute",
             check_finite: bool = True) -> torch.Tensor:
    """Project ``(..., n, n)`` logits onto the doubly stochastic matrices (Eq. 9).

    Args:
        logits: ``H~res`` of shape ``(..., n, n)``, any floating dtype, any leading dims.
        iters: Sinkhorn iterations ``t_max``, each one column then one row normalisation.
        eps: 0 for the paper; ``1e-6`` reproduces DeepSeek-V4's ``+eps`` terms.
        tol: optional early stop once column sums are within ``tol`` of 1 (analysis only:
            one host sync per iteration; uses the unrolled gradient).
        backward: ``"recompute"`` (memory-light custom backward) or ``"unrolled"``.
        check_finite: raise :class:`SinkhornError` on NaN/Inf logits. This costs one host
            sync; the layers pass ``False`` and let NaN reach the loss, where the trainer
            stops cleanly.

    Returns:
        The doubly stochastic matrix, same shape and dtype as ``logits``. Rows sum to 1
        exactly; columns to within ~1e-6 for logits of scale <= 5 after 20 iterations.
    """
    _validate(logits, iters, eps, check_finite)
    if backward not in ("recompute", "unrolled"):
        raise SinkhornError(f"backward must be 'recompute' or 'unrolled', got {backward!r}")
    if tol is not None or backward == "unrolled" or not logits.requires_grad:
        out = sinkhorn_reference(logits, int(iters), float(eps), tol)
    else:
        out = _SinkhornRecompute.apply(logits, int(iters), float(eps))
    return out.to(logits.dtype)
