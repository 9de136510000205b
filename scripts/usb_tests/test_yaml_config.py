"""Config files load with ruamel.yaml's safe loader (ruamel.yaml >= 0.18 removed yaml.load(Loader=))."""

import argparse

from semilearn.core.utils import over_write_args_from_file


def test_config_values_are_read(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("lr: 3.0e-05\nnet_from_name: False\nlayers: [1, 2]\nname: fixmatch\n")
    args = argparse.Namespace()
    over_write_args_from_file(args, str(cfg))
    assert [args.lr, args.net_from_name, args.layers, args.name] == [3e-05, False, [1, 2], "fixmatch"]


def test_an_empty_config_sets_nothing(tmp_path):
    cfg = tmp_path / "empty.yaml"
    cfg.write_text("")
    args = argparse.Namespace(lr=0.1)
    over_write_args_from_file(args, str(cfg))
    assert vars(args) == {"lr": 0.1}
