import pytest
from omegaconf import OmegaConf

from medfm.config import DEFAULTS, ConfigError, flatten, load_config, save_config


def test_defaults_file_overrides_in_that_order(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("seed: 5\ntrain:\n  max_steps: 7\n  lr: 0.1\n")
    cfg = load_config(recipe, ["train.lr=0.5", "out_dir=x"])
    assert cfg.seed == 5  # file over default
    assert cfg.train.max_steps == 7
    assert cfg.train.lr == 0.5  # override over file
    assert cfg.out_dir == "x"
    assert cfg.train.batch_size == DEFAULTS["train"]["batch_size"]  # untouched default


def test_unknown_override_names_key_and_nearest():
    with pytest.raises(ConfigError, match=r"'trian\.lr'.*Did you mean 'train\.lr'"):
        load_config(None, ["trian.lr=3"])


def test_unknown_key_in_file_names_the_file(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("model:\n  deph: 3\n")
    with pytest.raises(ConfigError, match=r"'model\.deph' in .*bad\.yaml.*'model\.depth'"):
        load_config(recipe)


def test_missing_file_and_malformed_override(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["train.lr"])


def test_save_config_round_trips(tmp_path):
    cfg = load_config(None, ["seed=11"])
    path = save_config(cfg, tmp_path / "sub" / "config.yaml")
    assert OmegaConf.load(path) == cfg
    assert [p.name for p in path.parent.iterdir()] == ["config.yaml"]


def test_flatten():
    assert flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": None}) == {
        "a.b": 1,
        "a.c.d": [1, 2],
        "e": None,
    }
