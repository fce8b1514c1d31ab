"""Config: YAML in, unknown keys and wrong types named, overrides, resolved copy saved."""

import re

import pytest
import yaml

from edgestem.config import Config, dump_config, load_config, save_config
from edgestem.errors import ConfigError


def write(tmp_path, text, name="c.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_defaults_validate_and_dump_round_trip(tmp_path):
    cfg = load_config()
    assert cfg.simulate.scan == (32, 32) and cfg.simulate.size == 64 and cfg.noise.model == "none"
    p = save_config(cfg, tmp_path / "out" / "config.yaml")
    assert load_config(p) == cfg
    assert Config.model_validate(yaml.safe_load(dump_config(cfg))) == cfg


def test_unknown_key_is_named(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, "simulate:\n  lattice:\n    spacing: 3\n"))
    msg = str(e.value)
    assert "simulate.lattice.spacing" in msg and "unknown key" in msg and "\n" not in msg


def test_wrong_type_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"simulate\.size"):
        load_config(write(tmp_path, "simulate:\n  size: big\n"))
    with pytest.raises(ConfigError, match=r"noise\.model"):
        load_config(write(tmp_path, "noise:\n  model: gaussian\n"))
    with pytest.raises(ConfigError, match=r"noise\.w"):
        load_config(write(tmp_path, "noise:\n  w: 1.5\n"))


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_config(write(tmp_path, "simulate:\n  scan: [1, 2\n"))
    with pytest.raises(ConfigError, match="mapping"):
        load_config(write(tmp_path, "- 1\n- 2\n"))
    assert load_config(write(tmp_path, "")) == load_config()


def test_overrides_win_and_none_is_ignored(tmp_path):
    p = write(tmp_path, "seed: 5\nsimulate:\n  scan: [8, 4]\n  lattice: {kind: square}\n")
    cfg = load_config(p, {"simulate.scan": 16, "seed": None, "noise.model": "dose", "noise.dose": 100})
    assert cfg.simulate.scan == (16, 16) and cfg.seed == 5 and cfg.simulate.lattice.kind == "square"
    assert cfg.noise.model == "dose" and cfg.noise.dose == 100
    with pytest.raises(ConfigError, match=r"simulate\.scan"):
        load_config(None, {"simulate.scan": 0})


def test_preprocess_crop_validation():
    with pytest.raises(ConfigError, match="crop"):
        load_config(None, {"preprocess.crop": [10, 5, 0, 4]})


def test_shipped_configs_validate():
    from pathlib import Path

    # configs/detectors.yaml and configs/boards/ are links to the package's presets, not pipeline configs.
    configs = [p for p in sorted((Path(__file__).parents[1] / "configs").glob("*.yaml")) if not p.is_symlink()]
    assert configs
    for p in configs:
        load_config(p)


def test_docs_config_reference_is_current():
    from pathlib import Path

    from edgestem.config import reference_markdown

    doc = Path(__file__).parents[1] / "docs" / "config.md"
    assert doc.read_text().strip() == reference_markdown().strip(), "run: edgestem config --markdown > docs/config.md"


@pytest.mark.parametrize(
    "text,needle",
    [
        (b"train:\n  epochs: true\n", "train.epochs: expected int, got true"),
        (b"simulate:\n  size: false\n", "simulate.size: expected int"),
        (b"train:\n  epochs: 3\n  epochs: 4\n", "line 3: key 'epochs' is given twice"),
        (b"seed: 1\nseed: 2\n", "key 'seed' is given twice"),
        (b"noise:\n  read_noise: .inf\n", "finite"),
        (b"noise:\n  w: .nan\n", "finite"),
        (b"noise:\n  dose: 1.0e+30\n", "noise.dose"),
        (b"seed: 1 # \xe9\n", "not UTF-8"),
    ],
)
def test_strict_config_files(tmp_path, text, needle):
    p = tmp_path / "c.yaml"
    p.write_bytes(text)
    with pytest.raises(ConfigError, match=re.escape(needle)):
        load_config(p)


def test_booleans_stay_booleans(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("model:\n  encoder: {batchnorm: false}\nprune: {structured: true}\n")
    cfg = load_config(p)
    assert cfg.model.encoder.batchnorm is False and cfg.prune.structured is True


def test_a_bad_option_is_not_blamed_on_the_defaults():
    with pytest.raises(ConfigError) as info:
        load_config(None, {"simulate.size": 2})
    assert "defaults" not in str(info.value) and "option value simulate.size = 2" in str(info.value)


def test_config_diff_names_changed_keys():
    from edgestem.config import config_diff

    a, b = load_config(None), load_config(None, {"seed": 5, "train.lr": 1e-3})
    assert [d.split()[0] for d in config_diff(a, b)] == ["seed", "train.lr"]
