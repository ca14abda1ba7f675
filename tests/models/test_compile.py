"""``torch.compile`` and ``torch.export`` of an mHC GPT on the fused ops (CPU: the Triton
kernels run in the interpreter inside the compiled graph): no graph breaks, compiled equals
eager forward and gradients, the exported program equals the module."""
import pytest
import torch

from torch_mhc.models import GPT, GPTConfig, compile_blocks
from torch_mhc.testing import rel_error, triton_interpreter

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
DEV = "cuda" if torch.cuda.is_available() else "cpu"


def _model(connection="mhc", seed=0):
    torch.manual_seed(seed)
    cfg = GPTConfig(vocab_size=64, seq_len=16, n_layer=2, n_head=2, d_model=32,
                    connection=connection, backend="triton" if connection == "mhc" else "auto")
    model = GPT(cfg).to(DEV)
    with torch.no_grad():  # away from the symmetric init, so every gradient is exercised
        for hc in model.connections():
            if connection == "mhc":
                hc.fn.normal_(0, 0.05)
                hc.scale.uniform_(0.5, 1.5)
    return model


def _batch():
    g = torch.Generator().manual_seed(1)
    return (torch.randint(0, 64, (2, 16), generator=g).to(DEV),
            torch.randint(0, 64, (2, 16), generator=g).to(DEV))


def _loss_and_grads(model, step):
    idx, tgt = _batch()
    model.zero_grad(set_to_none=True)
    _, loss = step(idx, tgt)
    loss.backward()
    return loss.detach(), {k: p.grad.clone() for k, p in model.named_parameters()}


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    with triton_interpreter(enabled=not torch.cuda.is_available()):
        yield
    torch._dynamo.reset()


def test_no_graph_breaks(monkeypatch):
    from torch_mhc.ops import _backend
    monkeypatch.setattr(_backend, "_TRITON_OK", None)  # first check inside the traced model
    model = _model()
    idx, tgt = _batch()
    explain = torch._dynamo.explain(model)(idx, tgt)
    assert explain.graph_break_count == 0, explain.break_reasons
    assert explain.graph_count == 1
    ops = {str(n.target) for g in explain.graphs for n in g.graph.nodes if n.op == "call_function"}
    assert any("torch_mhc.connection_pre" in o for o in ops), ops  # the fused ops are in it


@pytest.mark.parametrize("scope", ["model", "block"])
def test_compiled_equals_eager(scope):
    model = _model()
    eager_loss, eager_grads = _loss_and_grads(model, model)
    if scope == "block":  # each block compiled on its own (torch_mhc.models.regional)
        compiled = compile_blocks(model)
    else:
        compiled = torch.compile(model, fullgraph=True)
    for _ in range(2):  # the second call runs the cached compiled graph
        loss, grads = _loss_and_grads(model, compiled)
        assert rel_error(loss, eager_loss) < 1e-5
        for k, g in eager_grads.items():
            assert rel_error(grads[k], g) < 1e-4, k
    assert sorted(k for k, _ in model.named_parameters()) == sorted(eager_grads)  # names unchanged


def test_compile_blocks_needs_compile_units():
    with pytest.raises(TypeError, match="compile_units"):
        compile_blocks(torch.nn.Linear(2, 2))


def test_export():
    model = _model().eval()
    idx, _ = _batch()
    ep = torch.export.export(model, (idx,))
    assert any("torch_mhc" in str(n.target) for n in ep.graph.nodes)
    with torch.no_grad():
        ref, _ = model(idx)
        out, _ = ep.module()(idx)
    assert rel_error(out, ref) < 1e-6


@pytest.mark.parametrize("how", [
    "mark_dynamic",  # (the CPU runs the ops opaque: one variant is enough there)
    pytest.param("dynamic", marks=pytest.mark.skipif(DEV == "cpu", reason="CUDA: inlined kernels"))])
def test_dynamic_sequence_length_compiles_once(how):
    """Sequences of several lengths through one compiled graph (the length marked dynamic, or
    ``dynamic=True``): no recompilation, and each equals eager mode. On CUDA the ops' Triton
    kernels are traced into the graph, so their grids and sizes must stay symbolic."""
    from torch._dynamo.testing import CompileCounterWithBackend
    model = _model()
    counter = CompileCounterWithBackend("inductor")
    compiled = torch.compile(model, backend=counter, fullgraph=True,
                             dynamic=True if how == "dynamic" else None)
    g = torch.Generator().manual_seed(2)
    frames = None
    for T in (16, 11, 6):
        idx = torch.randint(0, 64, (2, T), generator=g).to(DEV)
        tgt = torch.randint(0, 64, (2, T), generator=g).to(DEV)
        if how == "mark_dynamic":
            torch._dynamo.mark_dynamic(idx, 1)
            torch._dynamo.mark_dynamic(tgt, 1)
        model.zero_grad(set_to_none=True)
        _, ref = model(idx, tgt)
        ref.backward()
        ref_grads = {k: p.grad.clone() for k, p in model.named_parameters()}
        model.zero_grad(set_to_none=True)
        _, loss = compiled(idx, tgt)
        loss.backward()
        assert rel_error(loss, ref) < 1e-5, T
        for k, p in model.named_parameters():
            assert rel_error(p.grad, ref_grads[k]) < 1e-4, (T, k)
        frames = frames or counter.frame_count  # (the first call may trace twice: a restart)
        assert counter.frame_count == frames, f"recompiled for length {T}"


def _post_res_calls(gm) -> int:
    """Calls of the fused post-res forward in a graph: the op itself (CPU: kept opaque) or
    its Triton kernel (CUDA: the op traced into the graph)."""
    from torch._higher_order_ops.triton_kernel_wrap import kernel_side_table
    post, calls = torch.ops.torch_mhc.connection_post.default, 0
    for node in gm.graph.nodes:
        if node.target is post:
            calls += 1
        elif "triton_kernel_wrapper" in str(node.target):
            kernel = kernel_side_table.get_kernel(node.kwargs["kernel_idx"])
            calls += getattr(kernel, "fn", kernel).__name__ == "_post_res_fwd_kernel"
    return calls


@pytest.mark.parametrize("block, recomputed", [(0, 0), (2, 2)])
def test_compiled_stream_recompute(block, recomputed):
    """``recompute_block`` under ``torch.compile``: the compiled backward reruns the fused
    post-res op once for each dropped stream it needs (4 connections, blocks of 2: the
    outputs of connections 1 and 3 are dropped; the last one is needed by no backward) and
    none without recomputation; loss and gradients equal eager mode."""
    from functorch.compile import min_cut_rematerialization_partition
    from torch._dynamo.backends.common import aot_autograd
    graphs = {}

    def keep(kind):
        def compiler(gm, _):
            graphs[kind] = gm
            return gm
        return compiler

    backend = aot_autograd(fw_compiler=keep("fw"), bw_compiler=keep("bw"),
                           partition_fn=min_cut_rematerialization_partition)
    model = _model()
    model.cfg.recompute_block = block
    eager_loss, eager_grads = _loss_and_grads(model, model)
    loss, grads = _loss_and_grads(model, torch.compile(model, backend=backend, fullgraph=True))
    counts = {k: _post_res_calls(gm) for k, gm in graphs.items()}
    assert counts == {"fw": 4, "bw": recomputed}, counts
    assert rel_error(loss, eager_loss) < 1e-5
    for k, g in eager_grads.items():
        assert rel_error(grads[k], g) < 1e-4, k


_STATIC_LAUNCH_SCRIPT = '''
import sys
import torch
from torch._inductor.runtime import static_triton_launcher as stl
sys.path.insert(0, sys.argv[1])
import test_compile as t

names = []
for cls in (getattr(stl, "StaticallyLaunchedCudaKernel", None),
            getattr(stl, "StaticallyLaunchedTritonKernel", None)):
    if cls is not None and "run" in vars(cls):
        def counted(self, *args, _run=vars(cls)["run"], **kwargs):
            names.append(getattr(self, "name", ""))
            return _run(self, *args, **kwargs)
        cls.run = counted
model = t._model()
eager_loss, eager_grads = t._loss_and_grads(model, model)
loss, grads = t._loss_and_grads(model, torch.compile(model, fullgraph=True))
fused = sorted({n for n in names if n.startswith(("_coef", "_post_res", "_pre_mix"))})
assert fused, f"no fused kernel was launched statically: {sorted(set(names))}"
assert t.rel_error(loss, eager_loss) < 1e-5, (loss, eager_loss)
for k, g in eager_grads.items():
    assert t.rel_error(grads[k], g) < 1e-4, k
print("static:", fused)
'''


@pytest.mark.skipif(not torch.cuda.is_available(), reason="Inductor launches the fused "
                    "kernels itself on CUDA only")
def test_static_launch_of_fused_kernels_equals_eager(tmp_path):
    """With PyTorch's opt-in static launcher for user-defined Triton kernels
    (``TORCHINDUCTOR_STATIC_LAUNCH_USER_DEFINED_TRITON_KERNELS=1``, read when Python starts:
    a fresh process), the compiled model launches the fused kernels through it and its loss
    and gradients still equal eager mode's (docs/compile.md)."""
    import os
    import subprocess
    import sys
    env = dict(os.environ, TORCHINDUCTOR_STATIC_LAUNCH_USER_DEFINED_TRITON_KERNELS="1",
               TORCHINDUCTOR_CACHE_DIR=str(tmp_path))
    r = subprocess.run([sys.executable, "-c", _STATIC_LAUNCH_SCRIPT,
                        os.path.dirname(os.path.abspath(__file__))],
                       env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "static: " in r.stdout
