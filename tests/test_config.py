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


@pytest.mark.parametrize("stage", ["prepare", "annotate"])
def test_old_max_tokens_name_is_an_unknown_field(stage):
    """The token limit of prompt + response is ``max_length`` everywhere (like the training configs);
    the old ``max_tokens`` fails like any unknown field (extra="forbid"), it is not an alias."""
    from pydantic import ValidationError

    from cwpo_ray.annotator.config import AnnotateConfig

    with pytest.raises(ConfigError, match=rf"^config error: {stage}\.max_tokens: unknown field"):
        build_config(PipelineConfig, overrides=[f"{stage}.max_tokens=512"])
    cls = {"prepare": PrepareConfig, "annotate": AnnotateConfig}[stage]
    with pytest.raises(ValidationError) as e:
        cls.model_validate({"max_tokens": 512})
    assert [(x["type"], x["loc"]) for x in e.value.errors()] == [("extra_forbidden", ("max_tokens",))]
    assert cls.model_validate({"max_length": 300}).max_length == 300


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


@pytest.mark.parametrize("override", [f"{section}.{field}={value}" for section, fields in PipelineConfig.OWNED.items()
                                      for field in fields
                                      for value in [{"ray": "{num_cpus: 2}", "overwrite": "true", "data_dir": "/x",
                                                     "data_format": "pairs", "output_dir": "/x", "loss": "ipo",
                                                     "weighting": "top_fraction", "top_fraction": "0.9",
                                                     "baselines": "{sft-x: /m}", "compare_to": "{}", "tracking": "{experiment: x}"}[field]]])
def test_pipeline_owned_fields_are_rejected_not_ignored(override, capsys):
    """A field the pipeline sets itself would be silently overwritten: it is an error naming the field."""
    assert main(["demo", override, "--print-config"]) == 2
    err = capsys.readouterr().err.strip()
    field = override.split("=")[0]
    assert err.splitlines() == [err] and err.startswith(f"config error: {field}: set by the pipeline"), err


def test_sft_data_format_is_owned_unless_data_dir_is_given():
    with pytest.raises(ConfigError, match=r"^config error: sft\.data_format: set by the pipeline"):
        build_config(PipelineConfig, overrides=["sft.data_format=pairs"])
    cfg = build_config(PipelineConfig, overrides=["sft.data_format=pairs", "sft.data_dir=/x"])
    assert cfg.sft.data_format == "pairs"


def test_invalid_values_are_rejected_on_every_path():
    """Through the CLI, through a method's own field, and through the pipeline's fill-in copies."""
    from cwpo_ray.config import updated

    with pytest.raises(ConfigError, match=r"^config error: align\.beta: Input should be greater than 0 \(got -5\)$"):
        build_config(PipelineConfig, overrides=["align.beta=-5"])
    with pytest.raises(ConfigError, match=r"^config error: methods\.cw-dpo\.beta: Input should be greater than 0"):
        build_config(PipelineConfig, overrides=["methods.cw-dpo.beta=-1"])
    cfg = build_config(PipelineConfig)
    with pytest.raises(ConfigError, match=r"^config error: methods\.x\.beta: Input should be greater than 0"):
        updated(cfg.align, "methods.x", beta=-5.0)  # what the pipeline does per method: validated, not model_copy
    with pytest.raises(ConfigError, match=r"^config error: align\.top_fraction: Input should be less than or equal to 1"):
        updated(cfg.align, "align", top_fraction=1.5)
    assert updated(cfg.align, "align", beta=0.2).beta == 0.2


def test_written_config_loads_back(tmp_path, capsys):
    """``--print-config`` (and the run's config.yaml) leave out the owned fields, so they load back."""
    assert main(["demo", "--print-config"]) == 0
    (tmp_path / "c.yaml").write_text(capsys.readouterr().out)
    assert main(["pipeline", "--config", str(tmp_path / "c.yaml"), "--print-config"]) == 0


def test_config_overlays_deep_merge_in_order(tmp_path):
    (tmp_path / "base.yaml").write_text("align: {beta: 0.5, lr: 1.0e-5}\nprepare: {labeled_fraction: 0.3}\n")
    (tmp_path / "data.yaml").write_text("prepare: {labeled_fraction: 0.2}\n")
    (tmp_path / "model.yaml").write_text("align: {lr: 5.0e-6}\n")
    cfg = load_config(PipelineConfig, [tmp_path / "base.yaml", tmp_path / "data.yaml", tmp_path / "model.yaml"],
                      ["align.beta=0.1"])
    assert (cfg.align.beta, cfg.align.lr, cfg.prepare.labeled_fraction) == (0.1, 5e-6, 0.2)


def test_method_labels_sft_owns_its_data_and_the_evaluate_references():
    from cwpo_ray.pipeline import PipelineConfig

    assert build_config(PipelineConfig, overrides=["sft_data=method_labels"]).sft_data == "method_labels"
    with pytest.raises(ConfigError, match=r"^config error: sft\.data_dir: with sft_data=method_labels"):
        build_config(PipelineConfig, overrides=["sft_data=method_labels", "sft.data_dir=/x"])
    with pytest.raises(ConfigError, match="sft_data"):
        build_config(PipelineConfig, overrides=["sft_data=per_method"])
