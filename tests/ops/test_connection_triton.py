"""The fused mHC connection (ops/connection.py) and a whole GPT: backend="triton" vs "torch".

Runs in Triton's interpreter on CPU (module fixture in tests/ops/conftest.py) and compiled on CUDA when present.
"""
import pytest
import torch
from torch import nn

pytest.importorskip("triton")

from torch_mhc.testing import rel_error  # noqa: E402
from torch_mhc import HyperConnection  # noqa: E402
from torch_mhc.models import GPT, gpt_config  # noqa: E402

CUDA = torch.cuda.is_available()
DEV = "cuda" if CUDA else "cpu"


def _randomise(module):
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith(".fn") or name == "fn":
                p.normal_(0, 0.1)
            elif name.endswith(".base") or name == "base":
                p.normal_(0, 1.0)
            elif name.endswith(".scale") or name == "scale":
                p.uniform_(0.5, 1.5)


class _TupleBranch(nn.Module):
    """A branch with an extra argument and a tuple output (both are passed through)."""

    def __init__(self, C):
        super().__init__()
        self.lin = nn.Linear(C, C)

    def forward(self, h, gain):
        return torch.tanh(self.lin(h)) * gain, h.mean()


def _place_pre_mix(where: str, monkeypatch) -> None:
    """Launch options that put the pre-mix in its own kernels or the coefficients' token
    kernels (with their channel loop software-pipelined: ``pipeline_stages``; with odd
    programs running it after the Sinkhorn: ``phase_split``)."""
    from torch_mhc.ops import tuning
    for key in ("coef_token", "coef_token_bwd"):
        monkeypatch.setitem(tuning.TUNING, key, {"pre_mix": where != "own kernels",
                                                 "pipeline_stages": 2 if "pipelined" in where
                                                 else 1,
                                                 "phase_split": "split" in where})


@pytest.mark.parametrize("n,C,hc_eps", [(4, 48, 0.0), (2, 100, 1e-6), (1, 40, 0.0), (8, 24, 1e-6),
                                        (3, 36, 0.0)])
@pytest.mark.parametrize("pre_mix_in", ["own kernels", "token kernels", "token kernels, pipelined",
                                        "token kernels, phases split"])
def test_fused_connection_matches_reference(n, C, hc_eps, pre_mix_in, monkeypatch):
    """Every place of the pre-mix, forward and backward (its own kernels, the coefficients'
    token kernels: the ``pre_mix`` launch option), gives the reference's outputs and
    gradients."""
    _place_pre_mix(pre_mix_in, monkeypatch)
    hc = HyperConnection(_TupleBranch(C), C, n, backend="triton", hc_eps=hc_eps,
                         rms_eps=1e-6).to(DEV)
    _randomise(hc)
    x = torch.randn(2, 5, n, C, device=DEV, requires_grad=True)
    gain = torch.tensor(1.5, device=DEV, requires_grad=True)
    leaves = [x, gain] + list(hc.parameters())
    results = []
    for backend in ("triton", "torch"):
        hc.backend = backend
        out, aux = hc(x, gain)
        w = torch.randn_like(out) if not results else results[0][2]
        loss = (out * w).sum() + aux
        results.append((out, torch.autograd.grad(loss, leaves), w))
    (out, g, _), (ref, g_ref, _) = results
    assert rel_error(out, ref) < 1e-5
    names = ["x", "gain"] + [k for k, _ in hc.named_parameters()]
    for name, a, b in zip(names, g, g_ref):
        assert rel_error(a, b) < 3e-5, (name, rel_error(a, b))


def test_fused_connection_bf16_and_record_mappings():
    n, C = 4, 100
    hc = HyperConnection(nn.Linear(C, C), C, n, backend="triton").to(DEV)
    _randomise(hc)
    hc.record_mappings = True
    x = torch.randn(9, n, C, device=DEV).bfloat16().requires_grad_()
    hc.bfloat16()
    with torch.no_grad():
        for p in (hc.fn, hc.base, hc.scale):
            p.data = p.data.float()  # mHC parameters stay fp32, as in training
    out = hc(x)
    assert out.dtype == torch.bfloat16 and hc.last_mappings[2].shape == (9, n, n)
    w = torch.randn_like(out)
    leaves = [x, hc.fn, hc.base, hc.scale, hc.branch.weight]
    g = torch.autograd.grad((out.float() * w).sum(), leaves)
    hc.backend = "torch"
    ref = hc(x)
    g_ref = torch.autograd.grad((ref.float() * w).sum(), leaves)
    assert rel_error(out, ref) < 1e-2
    for a, b in zip(g, g_ref):
        assert rel_error(a, b) < 2e-2


def test_output_unused_and_grad_wrt_input_only():
    n, C = 4, 24
    hc = HyperConnection(nn.Linear(C, C), C, n, backend="triton").to(DEV)
    _randomise(hc)
    x = torch.randn(6, n, C, device=DEV, requires_grad=True)
    out = hc(x)
    (gx,) = torch.autograd.grad(out[..., 0, :].sum(), [x], retain_graph=True)
    (gx2,) = torch.autograd.grad(out[..., 0, :].sum(), [x])  # retain_graph: second pass
    hc.backend = "torch"
    (gr,) = torch.autograd.grad(hc(x)[..., 0, :].sum(), [x])
    assert rel_error(gx, gr) < 3e-5 and rel_error(gx2, gr) < 3e-5


@pytest.mark.parametrize("dtype,n,C,tol", [(torch.float32, 4, 40, 3e-5),
                                          (torch.float32, 3, 36, 3e-5),
                                          (torch.bfloat16, 4, 64, 3e-2),
                                          (torch.bfloat16, 2, 40, 3e-2)])
@pytest.mark.parametrize("pre_mix_in", ["own kernels", "token kernels", "token kernels, pipelined",
                                        "token kernels, phases split"])
def test_broadcast_streams_read_in_place(dtype, n, C, tol, pre_mix_in, monkeypatch):
    """expand_streams(view=True) feeds the connection a stream-stride-0 view and
    reduce_streams sends back a stride-0 gradient: every kernel reads them in place (one
    (T, C) row per token) and gives the reference's values and gradients (bf16: the default
    dx pass reads both as they are; float32: the general one reads copies)."""
    from torch_mhc import expand_streams, reduce_streams
    from torch_mhc.ops._backend import is_broadcast
    _place_pre_mix(pre_mix_in, monkeypatch)
    torch.manual_seed(3)
    hc = HyperConnection(nn.Linear(C, C), C, n, backend="triton", rms_eps=1e-6).to(DEV)
    _randomise(hc)
    for p in hc.branch.parameters():
        p.data = p.data.to(dtype)
    x0 = torch.randn(2, 7, C, device=DEV).to(dtype).requires_grad_()
    w = torch.randn(2, 7, C, device=DEV)
    leaves = [x0, hc.fn, hc.base, hc.scale, hc.branch.weight]
    results = []
    for backend, view in (("triton", True), ("triton", False), ("torch", False)):
        hc.backend = backend
        streams = expand_streams(x0, n, view=view)
        assert is_broadcast(streams.reshape(-1, n, C)) == view
        out = hc(hc(streams))  # the second connection: a dense input, a broadcast gradient
        loss = (reduce_streams(out).float() * w).sum()
        results.append((out, torch.autograd.grad(loss, leaves)))
    (out, g), (dense, g_dense), (ref, g_ref) = results
    # the broadcast layout changes only the rounding of sum_j H_res[i, j] x_j; bf16 against
    # the fp32 reference differs by the bf16 rounding of h, y and dx
    assert rel_error(out, dense) < tol / 4 and rel_error(out, ref) < tol
    # d scale is three sums over every token and logit whose terms largely cancel: in bf16
    # its error against the fp32 reference is relative to the terms, not to the small sum
    # (n = 2 on an H200: 0.067 while x, fn, base and the branch stay under 0.03, and the
    # broadcast and dense layouts agree within tol / 4)
    loose = {"scale": 0.1} if dtype == torch.bfloat16 else {}
    for name, a, b, c in zip(["x", "fn", "base", "scale", "branch"], g, g_dense, g_ref):
        assert rel_error(a, b) < tol / 4, (name, rel_error(a, b))
        assert rel_error(a, c) < loose.get(name, tol), (name, rel_error(a, c))


def test_gradcheck_fp64_connection_glue():
    """float64 runs the kernels' PyTorch twins through the fused autograd Functions, so the
    hand-off of d out from the post half to the pre half's single dx pass is gradchecked."""
    n, C = 2, 3
    hc = HyperConnection(nn.Linear(C, C), C, n, backend="triton", rms_eps=1e-6,
                         sinkhorn_iters=5).double().to(DEV)
    _randomise(hc)
    x = torch.randn(2, n, C, dtype=torch.float64, device=DEV, requires_grad=True)
    params = (hc.fn, hc.base, hc.scale, hc.branch.weight)
    assert torch.autograd.gradcheck(lambda x_, *p: hc(x_), (x, *params), atol=1e-6)


def test_gpt_triton_matches_torch():
    torch.manual_seed(0)
    cfg = gpt_config("tiny", d_model=48, n_layer=2, n_head=2, seq_len=12, vocab_size=64,
                     mlp_hidden=64, backend="triton")
    model = GPT(cfg).to(DEV)
    _randomise(model)
    idx = torch.randint(0, 64, (2, 12), device=DEV)
    tgt = torch.randint(0, 64, (2, 12), device=DEV)
    _, loss = model(idx, tgt)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    for hc in model.connections():
        hc.backend = "torch"
    _, loss_ref = model(idx, tgt)
    grads_ref = torch.autograd.grad(loss_ref, list(model.parameters()))
    assert abs(loss.item() - loss_ref.item()) < 1e-5 * abs(loss_ref.item())
    for (name, _), a, b in zip(model.named_parameters(), grads, grads_ref):
        assert rel_error(a, b) < 1e-4, (name, rel_error(a, b))


def test_torch_compile_graph_breaks_around_fused_halves():
    """torch.compile keeps working: the two fused halves are excluded from the graph
    (``torch.compiler.disable``), the branch in between is compiled; same values."""
    n, C = 4, 32
    hc = HyperConnection(nn.Linear(C, C), C, n, backend="triton").to(DEV)
    _randomise(hc)
    x = torch.randn(2, 3, n, C, device=DEV, requires_grad=True)
    ref = hc(x)
    g_ref = torch.autograd.grad(ref.sum(), [x, hc.fn])
    compiled = torch.compile(hc, backend="eager")
    out = compiled(x)
    g = torch.autograd.grad(out.sum(), [x, hc.fn])
    assert torch.equal(out, ref)
    for a, b in zip(g, g_ref):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("extra", ["none", "post", "res", "both"])
def test_mappings_with_other_consumers(extra):
    """The post half returns dH_post / dH_res as ordinary gradients; when H_post or H_res
    also feed the loss directly, autograd adds their gradient before the pre half's backward."""
    from torch_mhc.ops.connection import connection_post, connection_pre
    from torch_mhc.ops.coefficients import mhc_coefficients_reference
    from torch_mhc.ops.post_res import post_res_reference
    from torch_mhc.ops.pre_mix import pre_mix_reference
    n, C, T = 4, 40, 7
    x = torch.randn(T, n, C, device=DEV, requires_grad=True)
    fn = (torch.randn((n + 2) * n, n * C, device=DEV) * 0.1).requires_grad_()
    base = torch.randn((n + 2) * n, device=DEV).requires_grad_()
    scale = (torch.rand(3, device=DEV) + 0.5).requires_grad_()
    lin = nn.Linear(C, C).to(DEV)
    w_out = torch.randn(T, n, C, device=DEV)
    w_post, w_res = torch.randn(T, n, device=DEV), torch.randn(T, n, n, device=DEV)

    def loss_of(out, hq, hr):
        loss = (out * w_out).sum()
        if extra in ("post", "both"):
            loss = loss + (hq * w_post).sum()
        if extra in ("res", "both"):
            loss = loss + (hr * w_res).sum()
        return loss

    h, hp, hq, hr, link = connection_pre(x, fn, base, scale, 20, 1e-6, 0.0)
    out = connection_post(x, lin(h), hq, hr, link)
    leaves = [x, fn, base, scale, lin.weight]
    g = torch.autograd.grad(loss_of(out, hq, hr), leaves)
    hp, hq, hr = mhc_coefficients_reference(x, fn, base, scale, 20, 1e-6, 0.0)
    ref = post_res_reference(x, lin(pre_mix_reference(x, hp)), hq, hr)
    g_ref = torch.autograd.grad(loss_of(ref, hq, hr), leaves)
    assert rel_error(out, ref) < 1e-5
    for a, b in zip(g, g_ref):
        assert rel_error(a, b) < 3e-5
