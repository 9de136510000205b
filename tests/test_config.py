"""Configuration: precedence, validation and error messages users see."""
import pytest
import yaml

from usb_cfsg.config import build_config, parse_cli_pairs
from usb_cfsg.errors import ConfigError


def write(tmp_path, data, name="c.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_precedence_defaults_yaml_cli(tmp_path):
    cfg = write(tmp_path, {"lr": 0.5, "batch_size": 4, "net": "clip_tiny"})
    args = build_config(["--c", cfg, "--lr", "0.25"])
    assert args.lr == 0.25  # command line beats YAML
    assert args.batch_size == 4  # YAML beats default
    assert args.uratio == 1  # default
    assert args.c == cfg


def test_algorithm_keys_from_cli_and_yaml(tmp_path):
    cfg = write(tmp_path, {"algorithm": "fixmatch", "T": 0.7})
    args = build_config(["--c", cfg, "--p_cutoff", "0.8", "--hard_label", "false"])
    assert args.T == 0.7 and args.p_cutoff == 0.8 and args.hard_label is False


def test_unknown_key_names_closest(tmp_path):
    cfg = write(tmp_path, {"learning_rate": 0.1, "batch_sise": 3})
    with pytest.raises(ConfigError, match=r"unknown config key 'batch_sise'.*unknown config key 'learning_rate'"):
        build_config(["--c", cfg])
    with pytest.raises(ConfigError, match=r"'batch_sise'.*did you mean 'batch_size'"):
        build_config(["--batch_sise", "3"])


def test_algorithm_specific_key_of_another_algorithm_is_unknown():
    with pytest.raises(ConfigError, match="unknown config key 'T'"):
        build_config(["--algorithm", "fullysupervised", "--T", "0.5"])


def test_type_errors_name_key_value_and_source(tmp_path):
    with pytest.raises(ConfigError, match=r"'lr' expects float, got 'fast' \(str\) from the command line"):
        build_config(["--lr", "fast"])
    cfg = write(tmp_path, {"num_train_iter": "many"})
    with pytest.raises(ConfigError, match=r"'num_train_iter' expects int.*config file"):
        build_config(["--c", cfg])
    with pytest.raises(ConfigError, match=r"'amp' expects bool"):
        build_config(["--amp", "maybe"])
    with pytest.raises(ConfigError, match=r"'device' expects one of auto, cpu, cuda.*did you mean 'cuda'"):
        build_config(["--device", "cudaa"])


def test_booleans_none_and_lists():
    args = build_config(["--amp", "true", "--pretrained", "none", "--seen_classes", "0,3,5",
                         "--load_path", "none"])
    assert args.amp is True and args.pretrained is None and args.load_path is None
    assert args.seen_classes == ["0", "3", "5"]
    args = build_config(["--seen_classes", "[0, 3, 5]"])
    assert args.seen_classes == [0, 3, 5]


def test_missing_config_file():
    with pytest.raises(ConfigError, match=r"config file 'nope/missing.yaml' does not exist"):
        build_config(["--c", "nope/missing.yaml"])


def test_unknown_algorithm_suggests():
    with pytest.raises(Exception, match=r"unknown algorithm 'fixmach'.*did you mean 'fixmatch'"):
        build_config(["--algorithm", "fixmach"])


def test_relations_checked():
    with pytest.raises(ConfigError, match="divisible by epoch"):
        build_config(["--num_train_iter", "10", "--epoch", "3"])
    with pytest.raises(ConfigError, match="resume: true needs load_path"):
        build_config(["--resume", "true"])


def test_cli_syntax_errors():
    assert parse_cli_pairs(["--a=1", "--b", "-2"]) == {"a": "1", "b": "-2"}
    with pytest.raises(ConfigError, match="has no value"):
        parse_cli_pairs(["--lr"])
    with pytest.raises(ConfigError, match="unexpected command-line argument 'lr'"):
        parse_cli_pairs(["lr", "0.1"])


def test_switching_algorithm_on_the_command_line_keeps_the_yaml_usable(tmp_path, caplog):
    cfg = write(tmp_path, {"algorithm": "cfsg_clip", "use_sfm": False, "vsi_topk": 2, "p_cutoff": 0.9, "lr": 0.1})
    with caplog.at_level("WARNING", logger="usb_cfsg"):
        args = build_config(["--c", cfg, "--algorithm", "fixmatch"])
    assert args.algorithm == "fixmatch" and args.p_cutoff == 0.9 and args.lr == 0.1  # shared keys kept
    assert not hasattr(args, "use_sfm") and "ignoring the cfsg_clip keys use_sfm, vsi_topk" in caplog.text
    typo = write(tmp_path, {"algorithm": "cfsg_clip", "use_sfn": False}, "typo.yaml")
    with pytest.raises(ConfigError, match="unknown config key 'use_sfn'"):
        build_config(["--c", typo, "--algorithm", "fixmatch"])
