import json

import pytest

from torch_mhc.train.config import (PRESETS, ConfigError, TrainConfig, config_from_dict,
                                    config_to_dict, load_config_file, resolve_config)


def test_precedence_defaults_preset_file_flags(tmp_path):
    f = tmp_path / "run.toml"
    f.write_text('preset = "small"\n[optimisation]\nlr = 0.01\nmax-steps = 77\n'
                 '[model]\nconnection = "hc"\n')
    cfg, _ = resolve_config({"lr": 0.02}, str(f))
    assert cfg.preset == "small" and cfg.d_model == PRESETS["small"]["d_model"]  # preset
    assert cfg.max_steps == 77 and cfg.connection == "hc"  # file
    assert cfg.lr == 0.02  # flag beats file
    assert cfg.adam_eps == TrainConfig.adam_eps  # default
    cfg, _ = resolve_config({"preset": "tiny"}, str(f))  # flag preset beats file preset
    assert cfg.preset == "tiny" and cfg.d_model == PRESETS["tiny"]["d_model"]


def test_yaml_and_json(tmp_path):
    y = tmp_path / "a.yaml"
    y.write_text("preset: deep-tiny\nlr: 3e-4\nmodes: [residual, mhc]\n")
    cfg, extras = resolve_config({}, str(y), extra_keys=("modes",))
    assert cfg.model == "deep" and cfg.lr == 3e-4 and extras["modes"] == ["residual", "mhc"]
    j = tmp_path / "a.json"
    j.write_text(json.dumps({"n": 2, "compile": False}))
    assert resolve_config({}, str(j))[0].n == 2


@pytest.mark.parametrize("text, phrase", [
    ("lrr = 1.0\n", "unknown setting 'lrr' .*did you mean 'lr'"),
    ("max_steps = 'many'\n", "max_steps must be an integer"),
    ("preset = 'huge'\n", "unknown preset 'huge'"),
    ("n_head = 3\n", "not divisible"),
    ("lr = = 1\n", "could not be parsed"),
])
def test_bad_files(tmp_path, text, phrase):
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=phrase):
        resolve_config({}, str(f))


def test_validation_messages():
    with pytest.raises(ConfigError, match="connection must be one of"):
        TrainConfig(connection="dense").validate()
    with pytest.raises(ConfigError, match="max_steps must be >= 1"):
        TrainConfig(max_steps=0).validate()
    with pytest.raises(ConfigError, match="does not exist"):
        load_config_file("/nonexistent/run.toml")
    with pytest.raises(ConfigError, match="unknown preset"):
        resolve_config({"preset": "gigantic"})


def test_presets_set_the_same_fields_and_validate():
    keys = {frozenset(p) for p in PRESETS.values()}
    assert len(keys) == 1
    for name in PRESETS:
        cfg, _ = resolve_config({"preset": name})
        assert config_from_dict(config_to_dict(cfg)) == cfg
    assert resolve_config({"preset": "deep"})[0].n_layer == 100
    assert resolve_config({"preset": "deep"})[0].d_model == 512
