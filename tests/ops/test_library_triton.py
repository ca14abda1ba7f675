"""The fused ops as ``torch.library`` custom ops: ``torch.library.opcheck`` on each (schema,
fake tensors, autograd registration, AOT dispatch), in the Triton interpreter (float32) and
through the PyTorch twins (float64), and the eager and registered paths agree."""
import pytest
import torch

from torch_mhc.ops import _library
from torch_mhc.ops.coefficients import coefficients_op
from torch_mhc.ops.connection import _connection_post, _connection_pre, _link, _pre_backward
from torch_mhc.ops.post_res import post_res_backward_op, post_res_op
from torch_mhc.ops.pre_mix import pre_mix_backward_op, pre_mix_op
from torch_mhc.testing import rel_error

DEV = "cuda" if torch.cuda.is_available() else "cpu"
# test_aot_dispatch_dynamic compiles each op with dynamic shapes (slow in the interpreter);
# the other checks run everywhere
FAST = ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_static")


def _inputs(T, n, C, dtype, grad=True):
    g = torch.Generator().manual_seed(T * 100 + C)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(DEV, dtype)  # noqa: E731
    x = r(T, n, C).requires_grad_(grad)
    fn = (r((n + 2) * n, n * C) * 0.1).to(torch.float64 if dtype == torch.float64 else torch.float32)
    base, scale = r((n + 2) * n).to(fn.dtype), (r(3).abs() + 0.5).to(fn.dtype)
    return x, fn.requires_grad_(grad), base.requires_grad_(grad), scale.requires_grad_(grad)


def _cases():
    # (dtype, T, n, C): float32 runs the interpreted kernels, float64 the PyTorch twins
    return [(torch.float32, 5, 4, 24), (torch.float32, 3, 2, 40), (torch.float64, 4, 4, 16)]


@pytest.mark.parametrize("dtype,T,n,C", _cases())
def test_opcheck_forward_ops(dtype, T, n, C):
    x, fn, base, scale = _inputs(T, n, C, dtype)
    cdt = fn.dtype
    h_pre = torch.rand(T, n, dtype=cdt, device=DEV).requires_grad_()
    h_post = torch.rand(T, n, dtype=cdt, device=DEV).requires_grad_()
    h_res = torch.rand(T, n, n, dtype=cdt, device=DEV).requires_grad_()
    y = torch.randn(T, C, dtype=dtype, device=DEV).requires_grad_()
    cases = [
        (coefficients_op, (x, fn, base, scale, 20, 1e-6, 0.0)),
        (coefficients_op, (x, fn, base, scale, 5, 1e-6, 1e-6)),  # V4's eps form
        (pre_mix_op, (x, h_pre)),
        (post_res_op, (x, y, h_post, h_res)),
        (_connection_pre, (x, fn, base, scale, 20, 1e-6, 0.0)),
        (_connection_post, (x, _link(x.detach()).requires_grad_(), y, h_post, h_res)),
    ]
    for op, args in cases:
        torch.library.opcheck(op.op, args, test_utils=FAST)


@pytest.mark.parametrize("dtype,T,n,C", _cases()[:1] + _cases()[2:])
def test_opcheck_backward_ops(dtype, T, n, C):
    x, fn, base, scale = (t.detach() for t in _inputs(T, n, C, dtype))
    h_pre, h_post, h_res, mix = coefficients_op.impl(x, fn, base, scale, 20, 1e-6, 0.0)
    dh, y = torch.randn(T, C, dtype=dtype, device=DEV), torch.randn(T, C, dtype=dtype, device=DEV)
    g = torch.randn(T, n, C, dtype=dtype, device=DEV)
    dp = torch.randn_like(h_pre)
    cases = [
        (pre_mix_backward_op, (x, h_pre, dh, True)),
        (pre_mix_backward_op, (x, h_pre, dh, False)),
        (post_res_backward_op, (x, y, h_post, h_res, g, True)),
        (post_res_backward_op, (x, y, h_post, h_res, g, False)),
        (_pre_backward, (x, fn, base, scale, mix, h_pre, h_res, dh, None, dp, None, g, 20, 0.0)),
        (_pre_backward, (x, fn, base, scale, mix, h_pre, h_res, None, dp, None, None, None,
                         20, 0.0)),
    ]
    for op, args in cases:
        torch.library.opcheck(op.op, args, test_utils=FAST)


def test_opcheck_connection_leading_dims():
    """The connection halves take streams with leading dimensions (..., n, C) themselves
    (no view nodes around them): opcheck on (2, 3, n, C), forward and backward ops."""
    T, n, C = 6, 4, 16
    x, fn, base, scale = _inputs(T, n, C, torch.float32)
    x4 = x.detach().view(2, 3, n, C).requires_grad_()
    h, h_pre, h_post, h_res, mix, link = _connection_pre.impl(x4.detach(), fn.detach(),
                                                              base.detach(), scale.detach(),
                                                              20, 1e-6, 0.0)
    assert h.shape == (2, 3, C) and h_res.shape == (2, 3, n, n) and link.shape == x4.shape
    y = torch.randn(2, 3, C, device=DEV).requires_grad_()
    torch.library.opcheck(_connection_pre.op, (x4, fn, base, scale, 20, 1e-6, 0.0),
                          test_utils=FAST)
    torch.library.opcheck(_connection_post.op, (x4, _link(x4.detach()).requires_grad_(), y,
                                                h_post.requires_grad_(), h_res.requires_grad_()),
                          test_utils=FAST)
    dh, g = torch.randn(2, 3, C, device=DEV), torch.randn(2, 3, n, C, device=DEV)
    torch.library.opcheck(_pre_backward.op, (x4.detach(), fn.detach(), base.detach(),
                                             scale.detach(), mix, h_pre.detach(),
                                             h_res.detach(), dh, None, torch.randn_like(h_pre),
                                             None, g, 20, 0.0), test_utils=FAST)


def test_opcheck_dynamic_shapes():
    """AOT dispatch with dynamic shapes, once for the connection pair (the slowest check)."""
    x, fn, base, scale = _inputs(4, 4, 16, torch.float32)
    torch.library.opcheck(_connection_pre.op, (x, fn, base, scale, 20, 1e-6, 0.0),
                          test_utils="test_aot_dispatch_dynamic")


def test_eager_and_registered_paths_agree():
    """The eager autograd.Function and the dispatcher path (forced by a dispatch mode) run
    the same code: equal outputs and gradients for a whole connection."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Passthrough(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))

    from torch_mhc.ops.connection import connection_post, connection_pre
    x, fn, base, scale = _inputs(6, 4, 24, torch.float32)
    lin = torch.nn.Linear(24, 24).to(DEV)

    def run():
        h, _, hq, hr, link = connection_pre(x, fn, base, scale, 20, 1e-6, 0.0)
        out = connection_post(x, lin(h), hq, hr, link)
        return (out,) + torch.autograd.grad((out * out).sum(), [x, fn, base, scale])

    assert not _library.tracing(x)
    eager = run()
    with Passthrough():
        assert _library.tracing(x)
        traced = run()
    for a, b in zip(eager, traced):
        assert rel_error(a, b) < 1e-6


def test_kernel_analysis_cached_per_argument_description(monkeypatch):
    """PyTorch's read/write analysis of a fused kernel's launch (it builds the kernel's TTIR,
    here for an sm_90 target with no GPU) runs once per kernel, constant arguments and
    argument dtypes, not once per launch site: the same description with other tensors is
    served from the cache, and equals the uncached analysis; another constant (no pre-mix)
    is analysed anew and no longer writes ``h``."""
    triton = pytest.importorskip("triton")
    tkw = pytest.importorskip("torch._higher_order_ops.triton_kernel_wrap")
    if not hasattr(tkw, "identify_accessed_tensors"):
        pytest.skip("this PyTorch analyses user-defined kernels under another name")
    from triton.backends.compiler import GPUTarget
    from torch_mhc.ops.coefficients import forward

    class Sm90:  # the target Triton builds the TTIR for, in place of a GPU driver
        def get_current_target(self):
            return GPUTarget("cuda", 90, 32)

    uncached = tkw.identify_accessed_tensors
    uncached = getattr(uncached, "__wrapped__", uncached)  # (a traced op may have cached it)
    monkeypatch.setattr(tkw, "identify_accessed_tensors", uncached)
    monkeypatch.setattr(_library, "_ANALYSES", {})
    built = []
    monkeypatch.setattr(tkw, "generate_ttir",
                        lambda *a, _gen=tkw.generate_ttir, **k: built.append(1) or _gen(*a, **k))
    _library._cache_kernel_analysis()
    assert tkw.identify_accessed_tensors is not uncached
    kernel = forward._coef_token.jit(False)
    T, C = 64, 32

    def args(pre_mix=True):
        f32, bf16 = (lambda *s: torch.randn(*s)), (lambda *s: torch.randn(*s).bfloat16())
        return dict(part_ptr=f32(2, T, 25), scale_ptr=f32(3), base_ptr=f32(24),
                    mix_ptr=f32(T, 25), hpre_ptr=f32(T, 4), hpost_ptr=f32(T, 4),
                    hres_ptr=f32(T, 4, 4), x_ptr=bf16(T, 4, C), h_ptr=bf16(T, C), T=T, SPLIT=2,
                    K=4 * C, C=C, iters=20, rms_eps=1e-20, hc_eps=0.0, n=4, N=24, NB=4, BT=4,
                    BC=32, LOG=True, PRE_MIX=pre_mix, X_BROADCAST=False, PIPELINE_STAGES=1,
                    PHASE_SPLIT=True)

    def writes(result):
        return sorted(d.name for d in result.read_writes.writes)

    driver = triton.runtime.driver
    monkeypatch.setattr(driver, "_active", getattr(driver, "_active", None), raising=False)
    driver.set_active(Sm90())  # undone by monkeypatch (a CPU has no driver to reset to)
    first = tkw.identify_accessed_tensors(kernel, args(), {})
    again = tkw.identify_accessed_tensors(kernel, args(), {})
    assert len(built) == 1, "the second launch site built the TTIR again"
    assert again is not first and writes(again) == writes(first)
    assert writes(first) == writes(uncached(kernel, args(), {}))
    assert writes(first) == ["h_ptr", "hpost_ptr", "hpre_ptr", "hres_ptr", "mix_ptr"]
    no_mix = tkw.identify_accessed_tensors(kernel, args(pre_mix=False), {})
    assert "h_ptr" not in writes(no_mix)


def test_kernel_analysis_cached_under_the_older_name(monkeypatch):
    """PyTorch releases that call their analysis ``identify_mutated_tensors`` (it returns
    the written arguments' names) get the same cache: one analysis per kernel and argument
    description, a copy per call; other kernels pass through uncached."""
    tkw = pytest.importorskip("torch._higher_order_ops.triton_kernel_wrap")
    from torch_mhc.ops.coefficients import forward
    calls = []

    def identify_mutated_tensors(kernel, kwargs, tma_descriptor_metadata=None):
        calls.append(kernel)
        return ["h_ptr", "mix_ptr"]

    for name in _library._ANALYSIS_NAMES:
        monkeypatch.delattr(tkw, name, raising=False)
    monkeypatch.setattr(tkw, "identify_mutated_tensors", identify_mutated_tensors,
                        raising=False)
    monkeypatch.setattr(_library, "_ANALYSES", {})
    _library._cache_kernel_analysis()
    cached = tkw.identify_mutated_tensors
    assert cached is not identify_mutated_tensors
    kernel = forward._coef_token.jit(False)
    args = lambda: dict(x_ptr=torch.randn(8, 4, 16).bfloat16(), T=8, BT=4)  # noqa: E731
    first, again = cached(kernel, args(), {}), cached(kernel, args(), {})
    assert first == again == ["h_ptr", "mix_ptr"] and first is not again
    assert calls == [kernel]
    cached(kernel, dict(args(), BT=8), {})  # another constant: analysed anew
    other = object()  # not a torch_mhc kernel: never cached
    cached(other, args(), {})
    cached(other, args(), {})
    assert calls == [kernel, kernel, other, other]


def _float_kernels():
    """Each fused kernel that takes float arguments, its runtime signature (the float
    arguments typed float64, as Inductor passes Python floats) and a configuration."""
    import importlib
    co = importlib.import_module("torch_mhc.ops.coefficients")
    st = importlib.import_module("torch_mhc.ops.streams")
    f32, i32, f64 = "*fp32", "i32", "fp64"
    token = dict(part_ptr=f32, scale_ptr=f32, base_ptr=f32, mix_ptr=f32, hpre_ptr=f32,
                 hpost_ptr=f32, hres_ptr=f32, x_ptr="*bf16", h_ptr="*bf16", T=i32, SPLIT=i32,
                 K=i32, C=i32, iters=i32, rms_eps=f64, hc_eps=f64)
    token_bwd = dict(mix_ptr=f32, scale_ptr=f32, base_ptr=f32, dpre_ptr=f32, dpost_ptr=f32,
                     dres_ptr=f32, x_ptr="*bf16", dh_ptr="*bf16", g_ptr=f32, dss_ptr=f32,
                     red_ptr=f32, scr_ptr=f32, T=i32, C=i32, K=i32, iters=i32, hc_eps=f64,
                     st_pre=i32, st_post=i32, st_res=i32)
    tile = dict(n=4, N=24, NB=4, BT=4, BC=64, X_BROADCAST=False, PIPELINE_STAGES=1,
                PHASE_SPLIT=False)
    streams = dict(x_ptr="*bf16", out_ptr="*bf16", C=i32, s=f64)
    cases = []
    for log in (True, False):  # the log-domain chain (paper) and DeepSeek-V4's (eps > 0)
        cases.append((co._coef_token, token, dict(tile, LOG=log, PRE_MIX=True)))
        cases.append((co._coef_token_bwd, token_bwd,
                      dict(tile, NN=16, NP=32, LOG=log, HAS_DPRE=True, HAS_DPOST=True,
                           HAS_DRES=True, HAS_DH=True)))
    for kernel in (st._broadcast, st._sum):
        cases.append((kernel, streams, dict(n=4, NB=4, BC=256)))
    return cases


def test_float_arguments_do_not_make_kernels_float64():
    """Inductor launches a traced kernel with its Python float arguments (epsilons, scales)
    typed float64, where Triton's own launch types them float32. A kernel that computes with
    such an argument as it comes promotes everything it touches to float64: once, the whole
    Sinkhorn chain of the token forward, 44.6 against 31.4 us on an H100. Each kernel must
    turn them to float32 first: compiled for sm_90 (no GPU needed) with float64 float
    arguments, its PTX holds no float64 instruction but those conversions."""
    triton = pytest.importorskip("triton")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    for lazy, sig, const in _float_kernels():
        fn = lazy.jit(interpret=False)
        full = {k: sig.get(k, "constexpr") for k in fn.arg_names}
        assert set(full) - set(const) == set(sig), (fn.__name__, set(full) ^ set(sig) ^ set(const))
        ptx = triton.compile(ASTSource(fn=fn, signature=full, constexprs=const),
                             target=GPUTarget("cuda", 90, 32),
                             options=dict(num_warps=1)).asm["ptx"]
        f64 = [ln.strip() for ln in ptx.splitlines()
               if ".f64" in ln and not ln.strip().startswith((".param", "ld.param", "cvt.rn.f32.f64"))]
        assert not f64, (fn.__name__, const.get("LOG"), f64[:5])
