"""The launchers take every launch configuration from ``torch_mhc.ops.tuning``'s table, and
the table holds the sweep winners we measured.

``benchmarks/sweep.py`` finds the fastest launch configuration of each kernel at the
``layer`` shape (T = C = 4096, n = 4, bf16); our numbers are only what users get if the
launchers use those configurations *without* ``TORCH_MHC_TUNING``. A default that drifted
from its sweep once cost a kernel 3x (the pre-mix forward: 160 us with its default, 53 us
with the winner). So: (1) each launch is recorded (kernels replaced by no-ops) with the
table patched, and must carry the patched values; (2) the table, resolved at the sweep's
shape, must equal the winners written below.
"""
import importlib

import pytest
import torch

pytest.importorskip("triton")

_launch, coefficients, post_res, pre_mix, streams, tuning = (  # the modules (ops/__init__
    importlib.import_module(f"torch_mhc.ops.{m}")  # exports functions of some of the same names)
    for m in ("_launch", "coefficients", "post_res", "pre_mix", "streams", "tuning"))

#: The winners of ``benchmarks/sweep.py`` at T = C = 4096, n = 4, bf16, as the sweeps wrote
#: them: an H100 at commit 1b2e553 (``tuning_h100_s3.json``, committed in 9856c47) and, for
#: ``coef_dx4``, an H200 at commit b0af22d (``tuning_h200_s7.json``: ``gtl``). Not compared:
#: ``coef_dfn`` (that sweep timed it while the dx4 pass, which computes dfn itself, ran, so
#: its "winner" measured nothing) and the removed ``coef_bwd_x`` / ``coef_bwd`` choices.
WINNERS = {
    "coef_gemm": {"BT": 128, "BK": 128, "num_warps": 8, "num_stages": 3, "waves": 4},
    # (``pre_mix``, ``BC``: the 2026-12-02 token sweep at commit 239e078,
    # ``sweep_h200_2026-12-02_239e078_token-premix_c4096.json``: the pre-mix in the token
    # kernel, 109.9 us at BT 2, BC 256, 2 warps, against 115.3 us in its own kernel, inside
    # the latter's round-to-round spread (102-141 us), so the forward keeps its own kernel;
    # backward: its own kernel 233 us, in the token kernel 241 us at best)
    "coef_token": {"BT": 8, "BC": 64, "num_warps": 1, "pre_mix": False},
    "coef_token_bwd": {"BT": 4, "BC": 128, "num_warps": 1, "pre_mix": False},
    "coef_dx4": {"BT": 32, "BC": 64, "num_warps": 4, "num_stages": 2, "loop": 32, "dfn": True,
                 "ls": 2, "gtl": True},
    "coef_dx": {"BT": 64, "BC": 32, "num_warps": 4, "num_stages": 2, "loop": 16, "ls": 3},
    "pre_mix_fwd": {"BT": 1, "BC": 2048, "num_warps": 8},
    "pre_mix_bwd": {"BT": 1, "BC": 2048, "num_warps": 8},
    "post_res_fwd": {"BT": 1, "BC": 4096, "num_warps": 8},
    "post_res_bwd": {"BT": 1, "BC": 1024, "num_warps": 4},
}
#: The winners at gpt-small's shape (T = 8192, C = 1024, n = 4, bf16): an H200 at commit
#: 059fdc3 (``sweep_h200_2026-12-02_059fdc3_c1024.json``); ``post_res_bwd`` kept its default.
WINNERS_C1024 = {
    "coef_gemm": {"BT": 64, "BK": 128, "num_warps": 4, "num_stages": 3, "waves": 2},
    # tiles_per_program 16 (was 8): 93.1 against 96.2 us, with half the dfn partials to sum
    # (H100, commit a7cdd65, ``connection-kernels_h100_2026-12-07_a7cdd65_c1024-variants.json``)
    "coef_dx4": {"BT": 32, "BC": 64, "num_warps": 4, "num_stages": 2, "loop": 16, "ls": 2},
    "pre_mix_fwd": {"BT": 8, "BC": 256, "num_warps": 4},
    "pre_mix_bwd": {"BT": 2, "BC": 256, "num_warps": 4},
    "post_res_fwd": {"BT": 2, "BC": 1024, "num_warps": 8},
    "post_res_bwd": {"BT": 1, "BC": 1024, "num_warps": 4},
    # the token kernels doing the pre-mix (commit 239e078,
    # ``sweep_h200_2026-12-02_239e078_token-premix_c1024.json``): backward 161 us (160-222)
    # against 312 us (180-327) with the pre-mix kernel; forward 62.9 us against 61.9 us,
    # taken for the launch it saves (eager mode is host-bound at this width)
    # and their pre-mix loops software-pipelined, 3 stages (H200, commit 1bde13c,
    # ``connection-kernels_h200_2026-12-07_1bde13c_c1024-variants.json``): backward 41.5
    # against 48.3 us, forward 27.6 against 29.4 us
    # and their programs' phases split (H100, commit f5e5c99,
    # ``connection-kernels_h100_2026-12-07_f5e5c99_phase-split.json``): backward 33.0 against
    # 43.0 us, forward 31.0 against 34.8 us
    "coef_token": {"BT": 4, "BC": 64, "num_warps": 1, "pre_mix": True, "ls": 3,
                   "phase_split": True},
    "coef_token_bwd": {"BT": 8, "BC": 64, "num_warps": 1, "pre_mix": True, "ls": 3,
                       "phase_split": True},
}
#: option names the sweeps used then, as the table names them now
RENAMED = {"loop": "tiles_per_program", "ls": "pipeline_stages"}
#: switches the dx4 kernel no longer has: it always computes dfn in the same pass and loads
#: G^T as such (the winners' choice)
BUILT_IN = {"dfn": True, "gtl": True}

#: which table key each kernel's launch reads
KERNEL_KEYS = {
    "_coef_gemm_kernel": "coef_gemm", "_coef_token_kernel": "coef_token",
    "_coef_token_bwd_kernel": "coef_token_bwd", "_coef_dx4_kernel": "coef_dx4",
    "_coef_bwd_x_kernel": "coef_dx", "_coef_dfn_kernel": "coef_dfn",
    "_pre_mix_fwd_kernel": "pre_mix_fwd", "_pre_mix_bwd_kernel": "pre_mix_bwd",
    "_post_res_fwd_kernel": "post_res_fwd", "_post_res_bwd_kernel": "post_res_bwd",
    "_broadcast_kernel": "broadcast_streams", "_sum_kernel": "sum_streams",
    "_grad_sums_kernel": "grad_sums",
}
#: a configuration no built-in one resembles (kernels are no-ops here: any value launches)
SENTINEL = dict(BT=8, BC=32, BK=16, num_warps=2, num_stages=5, waves=3, tiles_per_program=2,
                pipeline_stages=4, pre_mix=True, phase_split=True)
#: launch arguments that carry a configuration value as it is
AS_PASSED = {"BT": "BT", "BC": "BC", "BK": "BK", "num_warps": "num_warps",
             "num_stages": "num_stages", "PIPELINE_STAGES": "pipeline_stages",
             "PHASE_SPLIT": "phase_split"}


@pytest.fixture
def launches(monkeypatch):
    """Kernel launches replaced by records ``(kernel name, grid, keyword arguments)``; the
    launchers run as on a GPU (no interpreter tile shrinking) and without overrides."""
    seen = []

    def record(self, grid):
        return lambda *args, **kwargs: seen.append((self.fn.__name__, tuple(grid), kwargs))

    monkeypatch.setattr(_launch.LazyJit, "__getitem__", record)
    monkeypatch.setattr(_launch.Launch, "__call__", lambda self, *args: seen.append(
        (self.kernel.fn.__name__, self.grid, self.kw)))  # the launches a plan holds
    monkeypatch.setattr(streams, "_fast", lambda x: True)  # CPU tensors: launch anyway
    monkeypatch.setattr(tuning, "TUNING", {})
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    return seen


def _run_every_launcher(T=64, C=64):
    """Every launcher once: the default dx pass (bf16, n = 4) and the general one (float32)."""
    for dtype, n in ((torch.bfloat16, 4), (torch.float32, 4)):
        x = torch.randn(T, n, C).to(dtype)
        y = torch.randn(T, C).to(dtype)
        fn, base, scale = torch.randn((n + 2) * n, n * C), torch.randn((n + 2) * n), torch.rand(3)
        hp, hq, hr = torch.rand(T, n), torch.rand(T, n), torch.rand(T, n, n)
        mix = torch.rand(T, (n + 2) * n + 1)
        coefficients.coef_forward_triton(x, fn, base, scale, 20, 1e-20, 0.0)
        coefficients.coef_backward_triton(x, fn, base, scale, mix, hp, hq, hr, 20, 0.0,
                                          h_pre=hp, dh=y, h_res=hr, gout=x)
    pre_mix.pre_mix_forward_triton(x, hp)
    pre_mix.pre_mix_backward_triton(x, hp, y, False)
    post_res.post_res_forward_triton(x, y, hq, hr)
    post_res.post_res_backward_triton(x, y, hq, hr, x, False)
    streams._broadcast_impl(y, n, 1.0)
    streams._sum_impl(x, 1.0)


def test_every_launch_reads_the_table(launches, monkeypatch):
    for key in tuning.LAUNCH_DEFAULTS:
        monkeypatch.setitem(tuning.LAUNCH_DEFAULTS, key, dict(SENTINEL))
    _run_every_launcher()
    keys = set()
    for kernel, _, kwargs in launches:
        keys.add(KERNEL_KEYS[kernel])
        for arg, option in AS_PASSED.items():
            if arg in kwargs:
                assert kwargs[arg] == SENTINEL[option], (kernel, arg, kwargs[arg])
        assert "num_warps" in kwargs, kernel
    assert keys == set(tuning.LAUNCH_DEFAULTS), set(tuning.LAUNCH_DEFAULTS) ^ keys


@pytest.mark.parametrize("option", ["waves", "tiles_per_program"])
def test_grid_options_read_the_table(launches, monkeypatch, option):
    """The options that only shape the grid (how many programs split K or the tokens)."""
    grids = []
    for value in (1, 64):
        for key in tuning.LAUNCH_DEFAULTS:
            monkeypatch.setitem(tuning.LAUNCH_DEFAULTS, key, dict(SENTINEL, **{option: value}))
        launches.clear()
        _run_every_launcher(T=256, C=512)
        grids.append({kernel: grid for kernel, grid, _ in launches})
    users = {"waves": {"_coef_gemm_kernel", "_coef_dfn_kernel"},
             "tiles_per_program": {"_coef_dx4_kernel", "_coef_bwd_x_kernel"}}[option]
    for kernel in users:
        assert grids[0][kernel] != grids[1][kernel], (kernel, grids[0][kernel])


def test_table_holds_the_sweep_winners(monkeypatch):
    monkeypatch.setattr(tuning, "TUNING", {})
    shape = dict(T=4096, n=4, C=4096, dtype_bytes=2)  # the sweep's (coef_dx: float16 streams)
    for key, winner in WINNERS.items():
        want = {RENAMED.get(k, k): v for k, v in winner.items() if k not in BUILT_IN}
        assert all(winner[k] == v for k, v in BUILT_IN.items() if k in winner), key
        got = tuning.launch_config(key, **shape)
        assert got == want, f"{key}: the table gives {got}, the sweep's winner is {want}"


def test_table_holds_the_small_width_winners(monkeypatch):
    monkeypatch.setattr(tuning, "TUNING", {})
    shape = dict(T=8192, n=4, C=1024, dtype_bytes=2)
    for key, winner in WINNERS_C1024.items():
        want = {RENAMED.get(k, k): v for k, v in winner.items()}
        got = tuning.launch_config(key, **shape)
        assert got == want, f"{key}: the table gives {got}, the sweep's winner is {want}"
    # the C = 4096 winners stay where they were measured
    assert tuning.launch_config("pre_mix_fwd", T=8192, n=4, C=2048, dtype_bytes=2)["BT"] == 1


def test_rules_and_overrides(monkeypatch):
    """Shape rules are tried in order; ``TORCH_MHC_TUNING`` entries update the result, and
    an explicit ``BC`` replaces a ``BC_x_NB``."""
    monkeypatch.setattr(tuning, "TUNING", {})
    monkeypatch.setitem(tuning.LAUNCH_DEFAULTS, "probe", [
        ({"C_max": 1024, "dtype_bytes": 2}, dict(BT=2, BC=256, num_warps=4)),
        ({"row_max": 8192}, dict(BT=4, BC_x_NB=1024, num_warps=4)),
        ({}, dict(BT=8, BC_x_NB=4096, num_warps=8))])
    cfg = tuning.launch_config
    assert cfg("probe", n=4, C=1024, dtype_bytes=2) == dict(BT=2, BC=256, num_warps=4)
    assert cfg("probe", n=4, C=1024, dtype_bytes=4) == dict(BT=4, BC=256, num_warps=4)
    assert cfg("probe", n=4, C=2048, dtype_bytes=2) == dict(BT=4, BC=256, num_warps=4)
    assert cfg("probe", n=3, C=4096, dtype_bytes=2) == dict(BT=8, BC=1024, num_warps=8)
    assert cfg("probe", n=64, C=4096, dtype_bytes=2)["BC"] == 64
    assert cfg("probe", n=256, C=4096, dtype_bytes=2)["BC"] == 16  # at least 16
    monkeypatch.setitem(tuning.TUNING, "probe", {"BC": 512, "num_warps": 2})
    assert cfg("probe", n=4, C=4096, dtype_bytes=2) == dict(BT=8, BC=512, num_warps=2)
    monkeypatch.setitem(tuning.TUNING, "probe", {"BC_x_NB": 512})
    assert cfg("probe", n=4, C=1024, dtype_bytes=2) == dict(BT=2, BC=128, num_warps=4)
    # an option the launchers do not read (an old tuning file's ``loop``) is refused
    monkeypatch.setitem(tuning.TUNING, "probe", {"loop": 8})
    with pytest.raises(ValueError, match="unknown launch option.*loop.*tiles_per_program"):
        cfg("probe", n=4, C=1024, dtype_bytes=2)


def test_launch_plan_is_derived_once_per_shape_and_follows_overrides(monkeypatch):
    """``launch_plan`` calls ``derive`` once per configuration and shape, and again when a
    tuning entry replaces the configuration."""
    monkeypatch.setattr(tuning, "TUNING", {})
    monkeypatch.setitem(tuning.LAUNCH_DEFAULTS, "probe", dict(BT=2, BC=256, num_warps=4))
    calls = []

    def derive(cfg, T, n, C, **_):
        calls.append(dict(cfg))
        return (T // cfg["BT"],), cfg["num_warps"]

    plan = tuning.launch_plan
    assert plan("probe", derive, T=64, n=4, C=256, dtype_bytes=2) == ((32,), 4)
    assert plan("probe", derive, T=64, n=4, C=256, dtype_bytes=2) == ((32,), 4)
    assert len(calls) == 1
    assert plan("probe", derive, T=128, n=4, C=256, dtype_bytes=2) == ((64,), 4)
    assert len(calls) == 2
    monkeypatch.setitem(tuning.TUNING, "probe", {"BT": 8, "num_warps": 8})
    assert plan("probe", derive, T=64, n=4, C=256, dtype_bytes=2) == ((8,), 8)
    assert calls[-1] == dict(BT=8, BC=256, num_warps=8)


@pytest.mark.parametrize("C", [1024, 4096])
def test_launch_plans_keep_a_dynamic_token_count_symbolic(C, monkeypatch):
    """Under ``torch.compile`` with dynamic shapes the kernels are traced with a symbolic
    token count T: every launch plan (grids, split counts, buffer sizes) must come out as an
    expression of T with no guard on it, or a compiled model would specialise (or recompile
    for) each sequence length. (On a GPU, ``tests/models/test_compile.py`` runs lengths
    through one compiled graph.)"""
    from torch._dynamo.source import ConstantSource
    from torch.fx.experimental.symbolic_shapes import DimDynamic, ShapeEnv
    from torch_mhc.ops.coefficients import backward, backward_x, forward
    env = ShapeEnv()
    T = env.create_symintnode(env.create_symbol(8192, ConstantSource("T"),
                                                dynamic_dim=DimDynamic.DYNAMIC), hint=8192)
    monkeypatch.setattr(forward, "num_sms", lambda index: 132)
    shape = dict(T=T, n=4, C=C, dtype_bytes=2, dtype=torch.bfloat16, broadcast=False,
                 interpret=False, device=0)
    plans = {
        "coef_gemm": tuning.launch_plan("coef_gemm", forward._gemm_plan, **shape),
        "coef_token": tuning.launch_plan("coef_token", forward._token_plan, log=True,
                                         with_h=True, **shape),
        "coef_token_bwd": tuning.launch_plan("coef_token_bwd", backward._token_plan, log=True,
                                             has=(True,) * 4, **shape),
        "coef_dx4": tuning.launch_plan("coef_dx4", backward_x._dx4_plan,
                                       flags=(True, True, False), **shape),
        "post_res_fwd": tuning.launch_plan("post_res_fwd", post_res._fwd_plan, **shape),
        "post_res_bwd": tuning.launch_plan("post_res_bwd", post_res._bwd_plan, write_dx=False,
                                           g_broadcast=False, **shape),
        "pre_mix_fwd": tuning.launch_plan("pre_mix_fwd", pre_mix._fwd_plan, **shape),
        "pre_mix_bwd": tuning.launch_plan("pre_mix_bwd", pre_mix._bwd_plan, write_dx=True,
                                          **shape),
    }
    for key, plan in plans.items():
        values = plan if isinstance(plan, tuple) else (plan,)
        grid = values[-1].grid
        assert any(isinstance(g, torch.SymInt) for g in grid), (key, grid)  # T is in it
        for v in (*values[:-1], *grid):
            if isinstance(v, torch.SymInt):  # an expression of T, evaluated at its hint
                assert v.node.expr.free_symbols, (key, v)
    assert not env.guards, [str(g.expr) for g in env.guards]
