"""Configuration: precedence, validation and error messages users see."""

import json
import os

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
    args = build_config(["--amp", "true", "--pretrained", "none", "--seen_classes", "0,3,5", "--load_path", "none"])
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
    with pytest.raises(ConfigError, match=r"num_train_iter \(10\) must be divisible by epoch \(3\); e.g. set epoch: 2"):
        build_config(["--num_train_iter", "10", "--epoch", "3"])  # both explicit: the user decides
    with pytest.raises(ConfigError, match=r"num_labels \(10\) must be a positive multiple of num_classes \(4\)"):
        build_config(["--num_labels", "10", "--num_classes", "4"])
    # resume without load_path continues the run folder's latest checkpoint (USB's convention)
    args = build_config(["--resume", "true", "--save_dir", "out", "--save_name", "run"])
    assert args.load_path == os.path.join("out", "run", "latest_model.pth")


def test_every_out_of_range_value_is_reported_at_once(tmp_path):
    cfg = write(
        tmp_path,
        {
            "algorithm": "cfsg_clip",
            "sfm_keep_ratio": 1.5,
            "lr": 0.0,
            "ema_m": 2.0,
            "num_classes": 3,
            "num_labels": 6,
            "vsi_topk": 5,
            "crop_ratio": float("nan"),
        },
    )
    with pytest.raises(ConfigError) as info:
        build_config(["--c", cfg, "--momentum", "1.0"])
    text = str(info.value)
    for part in (
        "lr must be in (0, inf), got 0.0",
        "ema_m must be in [0, 1], got 2.0",
        "momentum must be in [0, 1)",
        "crop_ratio must be in (0, 1], got nan",
        "sfm_keep_ratio must be in (0, 1], got 1.5",
        "vsi_topk (5) must not exceed num_classes (3)",
    ):
        assert part in text, part
    assert text.startswith("invalid configuration: ")
    assert "(momentum from the command line)" in text and f"(lr from config file {cfg})" in text
    with pytest.raises(ConfigError, match=r"p_cutoff must be in \[0, 1\], got 1.5"):  # USB's algorithms too
        build_config(["--algorithm", "fixmatch", "--p_cutoff", "1.5"])
    with pytest.raises(ConfigError, match=r"eval_subset must be in \[0, inf\), got -1"):
        build_config(["--eval_subset", "-1"])
    assert build_config(["--eval_subset", "none"]).eval_subset is None
    assert build_config(["--eval_subset", "2000"]).eval_subset == 2000


def test_num_train_iter_alone_on_the_command_line_adjusts_epoch(tmp_path, caplog):
    cfg = write(tmp_path, {"epoch": 20, "num_train_iter": 20000})
    with caplog.at_level("WARNING", logger="usb_cfsg"):
        args = build_config(["--c", cfg, "--num_train_iter", "30"])
    assert (args.num_train_iter, args.epoch) == (30, 15)
    assert "num_train_iter 30 is not divisible by epoch 20: using epoch 15" in caplog.text
    assert build_config(["--c", cfg, "--num_train_iter", "40"]).epoch == 20  # divisible: unchanged
    with pytest.raises(ConfigError, match="divisible by epoch"):
        build_config(["--c", cfg, "--num_train_iter", "30", "--epoch", "20"])


def test_default_save_name_differs_per_algorithm_and_the_readme_commands_do_not_collide(caplog):
    args = build_config(["--dataset", "cub200", "--num_labels", "400", "--seed", "1"])
    assert args.save_name == "fixmatch_cub200_400_1"
    cub = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "config", "cfsg_cub.yaml")
    cfsg = build_config(["--c", cub])
    with caplog.at_level("WARNING", logger="usb_cfsg"):
        fixmatch = build_config(["--c", cub, "--algorithm", "fixmatch"])
    assert cfsg.save_name != fixmatch.save_name == "fixmatch_cub200_400_0"
    assert fixmatch.load_path is None and "not using the file's save_name" in caplog.text
    explicit = build_config(["--c", cub, "--algorithm", "fixmatch", "--save_name", "fixmatch_cub"])
    assert explicit.save_name == "fixmatch_cub"


def test_saved_config_holds_the_run_not_the_invocation(tmp_path):
    from usb_cfsg.config import save_config

    args = build_config(
        [
            "--resume",
            "true",
            "--load_path",
            "elsewhere.pth",
            "--resume_extend",
            "true",
            "--save_dir",
            str(tmp_path),
            "--save_name",
            "r",
        ]
    )
    save_config(args, str(tmp_path / "config.yaml"))
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert saved["resume"] is False and saved["resume_extend"] is False
    assert "load_path" not in saved  # a resume defaults to the run folder's own checkpoint
    again = build_config(["--c", str(tmp_path / "config.yaml")])  # the saved file is a valid config
    assert again.save_name == "r" and again.resume is False


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
    assert args.algorithm == "fixmatch" and args.lr == 0.1  # common keys kept
    assert args.p_cutoff == 0.95  # cfsg_clip's p_cutoff does not become fixmatch's: fixmatch's default
    assert not hasattr(args, "use_sfm") and "ignoring the cfsg_clip keys p_cutoff, use_sfm, vsi_topk" in caplog.text
    assert "fixmatch's defaults apply to p_cutoff" in caplog.text
    typo = write(tmp_path, {"algorithm": "cfsg_clip", "use_sfn": False}, "typo.yaml")
    with pytest.raises(ConfigError, match="unknown config key 'use_sfn'"):
        build_config(["--c", typo, "--algorithm", "fixmatch"])


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUR_ALGORITHMS = ("cfsg_clip", "openmatch", "iomatch", "clip_zeroshot", "fixmatch")
SWITCH_CONFIGS = ["config/cfsg_cub.yaml"] + sorted(
    f"config/demo/{f}" for f in os.listdir(os.path.join(REPO, "config", "demo")) if f.endswith(".yaml")
)


@pytest.mark.parametrize("config", SWITCH_CONFIGS)
def test_no_key_of_the_file_algorithm_crosses_to_another(config):
    from usb_cfsg.config import _algorithm_class as cls
    from usb_cfsg.config import algorithm_own_keys, algorithm_specs, base_specs

    path = os.path.join(REPO, config)
    with open(path, encoding="utf-8") as fh:
        raw = yaml.safe_load(fh)
    # the file algorithm's keys, and the common keys it declares again with its own default (zs_weight)
    own = algorithm_own_keys(raw["algorithm"])
    common = set(base_specs()) - own
    assert own & set(raw), "the config sets keys of its algorithm: the check is not vacuous"
    for other in OUR_ALGORITHMS:
        if other == raw["algorithm"]:
            continue
        specs = algorithm_specs(cls(other))
        args = build_config(["--c", path, "--algorithm", other], validate=False)
        assert args.algorithm == other
        for key in own & set(raw):
            if key in specs or key in base_specs():  # the chosen algorithm's default, not the file's value
                want = specs[key].default if key in specs else base_specs()[key].default
                assert getattr(args, key) == want, (config, other, key)
            else:
                assert not hasattr(args, key), (config, other, key)
        for key in common & set(raw) - {"algorithm", "save_name", "load_path"}:
            assert getattr(args, key) == build_config(["--c", path], validate=False).__dict__[key], key


def test_a_same_named_key_crosses_only_when_given_on_the_command_line():
    cub = os.path.join(REPO, "config", "cfsg_cub.yaml")
    args = build_config(["--c", cub, "--algorithm", "clip_zeroshot"])  # the file's ood_score is cfsg_clip's
    assert args.ood_score == "mcm"
    args = build_config(["--c", cub, "--algorithm", "clip_zeroshot", "--ood_score", "glmcm"])
    assert args.ood_score == "glmcm"
    args = build_config(["--c", cub, "--algorithm", "openmatch", "--p_cutoff", "0.5"])
    assert args.p_cutoff == 0.5


def test_no_generated_config_names_a_checkpoint():
    for folder, _, files in os.walk(os.path.join(REPO, "config")):
        for name in files:
            with open(os.path.join(folder, name), encoding="utf-8") as fh:
                assert "load_path" not in yaml.safe_load(fh), os.path.join(folder, name)


def test_resume_defaults_to_the_run_folders_own_checkpoint(tmp_path):
    demo = os.path.join(REPO, "config", "demo", "cfsg_fmnist.yaml")
    args = build_config(["--c", demo, "--save_dir", str(tmp_path), "--resume", "true"], validate=False)
    assert args.load_path == os.path.join(str(tmp_path), "cfsg_fmnist", "latest_model.pth")
    # a config file naming another run's checkpoint: refused, with both ways on
    other = write(tmp_path, {"save_name": "mine", "load_path": str(tmp_path / "theirs" / "latest_model.pth")})
    with pytest.raises(ConfigError, match="drop load_path from the file.*give --load_path .*theirs"):
        build_config(["--c", other, "--save_dir", str(tmp_path), "--resume", "true"], validate=False)
    assert build_config(["--c", other, "--save_dir", str(tmp_path)], validate=False).resume is False  # no resume
    # the run's own checkpoint in the file, or another one given on the command line: fine
    own = write(tmp_path, {"save_name": "mine", "load_path": str(tmp_path / "mine" / "latest_model.pth")}, "own.yaml")
    assert build_config(["--c", own, "--save_dir", str(tmp_path), "--resume", "true"], validate=False).resume
    theirs = str(tmp_path / "theirs" / "latest_model.pth")
    args = build_config(["--c", other, "--save_dir", str(tmp_path), "--resume", "true", "--load_path", theirs])
    assert args.load_path == theirs


@pytest.mark.parametrize("typo", ["lr_typo", "lr_rate", "learning_rate", "LR"])
def test_suggestions_find_lr(typo):
    with pytest.raises(ConfigError, match=rf"unknown config key '{typo}', did you mean 'lr'"):
        build_config([f"--{typo}", "0.1"])


def test_a_bad_value_is_blamed_on_where_it_came_from(tmp_path):
    cfg = write(tmp_path, {"batch_size": 4, "uratio": 0})
    with pytest.raises(ConfigError) as err:
        build_config(["--c", cfg, "--batch_size", "-1"])
    text = str(err.value)
    assert "batch_size must be in [1, inf), got -1 (batch_size from the command line)" in text
    assert f"uratio must be in [1, inf), got 0 (uratio from config file {cfg})" in text


def test_a_common_key_redeclared_by_the_file_algorithm_does_not_cross(tmp_path):
    """cfsg_clip's zs_weight (0.5, its own default of a common key) is cfsg_clip's: fixmatch gets 0 unless asked."""
    cfg = tmp_path / "cfsg.yaml"
    cfg.write_text("algorithm: cfsg_clip\nzs_weight: 0.5\nnet: clip_tiny\npretrained: openai\n")
    assert build_config(["--c", str(cfg), "--algorithm", "fixmatch"], validate=False).zs_weight == 0.0
    explicit = build_config(["--c", str(cfg), "--algorithm", "fixmatch", "--zs_weight", "0.5"], validate=False)
    assert explicit.zs_weight == 0.5
    assert build_config(["--c", str(cfg)], validate=False).zs_weight == 0.5


def test_relative_paths_are_relative_to_the_working_folder_not_the_config_file(tmp_path, monkeypatch):
    """PATH_RULE: a config in another folder naming ``cards/card.json`` means <working folder>/cards/card.json,
    for pretrain_pool as for every path key; ``~`` is the home folder for all of them alike."""
    from usb_cfsg.config import PATH_KEYS, PATH_RULE, describe_keys
    from usb_cfsg.datasets.pretrain_pool import load_card

    here, elsewhere, home = tmp_path / "here", tmp_path / "configs", tmp_path / "home"
    for folder in (here / "cards", elsewhere / "cards", home):
        folder.mkdir(parents=True)
    card = {"dataset": "fmnist_openset", "pool": {"indices": [0, 1], "num_train": 10}}
    (here / "cards" / "card.json").write_text(json.dumps(card))
    (elsewhere / "cards" / "card.json").write_text(json.dumps({"pool": "not a card"}))
    cfg = write(elsewhere, {"pretrain_pool": "cards/card.json", "data_dir": "data", "save_dir": "~/runs"})
    monkeypatch.chdir(here)
    monkeypatch.setenv("HOME", str(home))
    args = build_config(["--c", cfg], validate=False)
    assert args.pretrain_pool == "cards/card.json" and args.data_dir == "data"  # stored as given
    assert load_card(args.pretrain_pool)["pool"]["indices"] == [0, 1]  # the working folder's card
    assert args.save_dir == str(home / "runs")
    assert {"pretrain_pool", "pretrain_path", "data_dir", "save_dir", "load_path"} <= set(PATH_KEYS)
    assert describe_keys("fixmatch").startswith(PATH_RULE)
