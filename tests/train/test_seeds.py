import json

import pytest

from torch_mhc.train import resolve_config
from torch_mhc.train.cli import main
from torch_mhc.train.seeds import aggregate, count_params, match_params


def test_aggregate_mean_spread_and_counts():
    per_seed = {"1": {"mhc": {"loss": 1.0, "diverged": False, "x": None}},
                "2": {"mhc": {"loss": 3.0, "diverged": True, "x": None}}}
    agg = aggregate(per_seed)["mhc"]
    assert agg["loss"] == {"mean": 2.0, "std": pytest.approx(2 ** 0.5), "min": 1.0,
                           "max": 3.0, "n": 2}
    assert agg["diverged"] == {"count": 1, "n": 2} and "x" not in agg


@pytest.mark.parametrize("how,key", [("width", "d_model"), ("depth", "n_layer")])
def test_match_params_closest_count(how, key):
    cfg, _ = resolve_config({"n_layer": 2, "d_model": 32, "n_head": 2, "vocab_size": 256})
    over, st = match_params(cfg, ["residual", "mhc"], how)
    value = over["residual"][key]
    assert value > getattr(cfg, key) and st["setting"] == key
    target = count_params(cfg.__class__(**{**vars(cfg), "connection": "mhc"}), 256)
    got = st["residual"]["params"][1]
    assert st["target_params"] == target
    step = 4 if how == "width" else 1  # 2 * n_head for the width
    for other in (value - step, value + step):  # no neighbour is closer
        c = count_params(cfg.__class__(**{**vars(cfg), "connection": "residual",
                                          key: other}), 256)
        assert abs(c - target) >= abs(got - target)
    assert f"{got:,}" in st["text"] and f"{target:,}" in st["text"]
    assert match_params(cfg, ["hc", "mhc"], how) == ({}, None)


def test_compare_two_seeds_matched(flags, tmp_path, capsys):
    out = tmp_path / "seeds"
    rc = main(["compare", *flags(max_steps=2, eval_interval=2, diag_interval=2),
               "--modes", "residual,mhc", "--seeds", "2", "--match-params", "width",
               "--optimizer", "paper", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seeds"] == [1337, 1338] and summary["modes"] == ["residual", "mhc"]
    for seed in ("1337", "1338"):
        s = summary["per_seed"][seed]
        assert s["residual"]["params"] > 0 and s["mhc"]["steps"] == 2
        assert (out / f"seed-{seed}" / "report.html").is_file()
    losses = [summary["per_seed"][s]["mhc"]["final_train_loss"] for s in ("1337", "1338")]
    agg = summary["aggregate"]["mhc"]["final_train_loss"]
    assert agg["n"] == 2 and agg["mean"] == pytest.approx(sum(losses) / 2)
    assert losses[0] != losses[1]  # the seeds differ
    log = (out / "seed-1337" / "residual" / "log.jsonl").read_text().splitlines()
    cfg0 = json.loads(log[0])["config"]
    assert cfg0["d_model"] > 32 and cfg0["seed"] == 1337 and cfg0["adam_eps"] == 1e-20
    html = (out / "report.html").read_text()
    assert "Parameter matching" in html and "&plusmn;" in html and "seed-1338/report.html" in html
    assert "Curves of every seed" in html and (out / "plots" / "seeds.png").stat().st_size > 0
    assert "mean over 2 seeds" in capsys.readouterr().out
    (out / "report.html").unlink()
    assert main(["report", str(out)]) == 0 and (out / "report.html").is_file()
    assert main(["compare", *flags(), "--seeds", "0", "--out", str(tmp_path / "x")]) == 2
    assert "seeds must be" in capsys.readouterr().err


def test_plot_seeds_draws_every_seed_and_skips_empty_logs(tmp_path, monkeypatch):
    """One line per seed and mode on the loss panel; None when no log has a training step."""
    from torch_mhc.train.plots import plot_seeds

    def run(seed, mode):
        recs = [{"type": "train", "step": i, "loss": 3.0 - 0.1 * i + 0.01 * seed,
                 "grad_ratio_last_first": 0.5} for i in range(1, 6)]
        recs += [{"type": "eval", "step": 5, "val_loss": 2.6}]
        recs += [{"type": "diag", "step": 5, "paper_gain": {"comp_fwd_peak": 2.0 + seed}}]
        return recs

    per_seed = {str(s): {m: run(s, m) for m in ("residual", "mhc")} for s in (0, 1, 2)}
    import matplotlib.pyplot as plt
    captured = {}
    real_save = plt.Figure.savefig

    def savefig(fig, path, **kw):
        captured["lines"] = len([ln for ln in fig.axes[0].lines if len(ln.get_xdata())])
        return real_save(fig, path, **kw)

    monkeypatch.setattr(plt.Figure, "savefig", savefig)
    assert plot_seeds(per_seed, tmp_path / "s.png") == tmp_path / "s.png"
    assert captured["lines"] == 6  # 3 seeds x 2 modes
    assert plot_seeds({"0": {"mhc": [{"type": "eval", "step": 0, "val_loss": 1.0}]}},
                      tmp_path / "e.png") is None
