import pytest

from cwpo_ray.cli import main
from cwpo_ray.config import ConfigError, apply_overrides, build_config, load_config
from cwpo_ray.pipeline import PipelineConfig
from cwpo_ray.prepare.config import PrepareConfig


def test_overrides_parse_yaml_values():
    assert apply_overrides({}, ["a.b=3", "c=[1, 2]", "d=null", "e=x"]) == {"a": {"b": 3}, "c": [1, 2], "d": None, "e": "x"}


def test_override_replaces_a_mapping_but_dotted_keys_change_one_field():
    cfg = build_config(PipelineConfig, {"methods": {"a": {"loss": "ipo"}, "b": {}}, "align": {"beta": 0.1, "lr": 1e-4}},
                       ["methods={c: {loss: rdpo}}", "align.beta=0.3"])
    assert list(cfg.methods) == ["c"] and cfg.methods["c"].loss == "rdpo"
    assert cfg.align.beta == 0.3 and cfg.align.lr == 1e-4


def test_unknown_field_names_it():
    with pytest.raises(ConfigError, match=r"^config error: prepare\.nope: unknown field"):
        build_config(PipelineConfig, overrides=["prepare.nope=1"])


def test_invalid_value_names_field_and_value():
    with pytest.raises(ConfigError) as e:
        build_config(PipelineConfig, overrides=["prepare.labeled_fraction=1.5"])
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("config error: prepare.labeled_fraction:") and "1.5" in msg


def test_nested_list_field_error_names_index():
    with pytest.raises(ConfigError, match=r"sources\.0\.format"):
        build_config(PrepareConfig, {"sources": [{"format": "csv", "path": "x"}], "output_dir": "o"})


def test_source_needs_one_location():
    with pytest.raises(ConfigError, match="exactly one of path / hf_dataset"):
        build_config(PrepareConfig, {"sources": [{"format": "tldr"}], "output_dir": "o"})


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="key=value"):
        build_config(PipelineConfig, overrides=["prepare.labeled_fraction"])


def test_yaml_file_and_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("run_dir: /tmp/x\nprepare:\n  labeled_fraction: 0.5\n")
    cfg = load_config(PipelineConfig, p, ["prepare.test_fraction=0.2"])
    assert cfg.run_dir == "/tmp/x" and cfg.prepare.labeled_fraction == 0.5 and cfg.prepare.test_fraction == 0.2
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(PipelineConfig, tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(PipelineConfig, tmp_path / "bad.yaml")


def test_example_configs_load():
    from pathlib import Path

    from cwpo_ray.cli import STAGES, _load

    root = Path(__file__).resolve().parents[1] / "jobs" / "configs"
    files = sorted(root.glob("*.yaml"))
    assert files, "jobs/configs/ has example configs"
    # jobs/configs/<stage>.yaml or <stage>.<variant>.yaml; demo/pipeline files are PipelineConfig
    for f in files:
        stage = f.name.split(".")[0]
        assert stage in STAGES, f"{f.name}: no stage {stage!r}"
        load_config(_load(STAGES[stage][0]), f)


def test_cli_reports_config_error_in_one_line(capsys):
    assert main(["demo", "prepare.labeled_fraction=-1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "prepare.labeled_fraction" in err


def test_cli_print_config(capsys):
    assert main(["demo", "--print-config", "run_dir=/tmp/zz"]) == 0
    assert "run_dir: /tmp/zz" in capsys.readouterr().out
