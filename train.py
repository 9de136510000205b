"""Train any registered algorithm (USB's or ours).

    python train.py --c CONFIG [--key value ...]
    python train.py [--c CONFIG] [--algorithm NAME] --help     # every key, its type and default
    python train.py --c RUN/config.yaml                         # repeat a run (its folder: overwrite decides)
    python train.py --c RUN/config.yaml --resume true           # continue it from RUN/latest_model.pth
    python train.py --c RUN/config.yaml --resume true --num_train_iter N --resume_extend true   # train longer

Every value is checked before any data is read; a start that fails leaves no run folder behind.
"""
import sys

import usb_cfsg  # noqa: F401  (top level: mp.spawn children re-import this module and need the registrations)
from usb_cfsg.config import build_config, describe_keys, load_yaml, parse_cli_pairs
from usb_cfsg.engine import main
from usb_cfsg.engine.launch import setup_logging
from usb_cfsg.errors import UsbCfsgError


def _help(argv) -> str:
    rest = [a for a in argv if a not in ("--help", "-h", "--help-keys")]
    cli = parse_cli_pairs(rest)
    algorithm = cli.get("algorithm") or (load_yaml(cli["c"]).get("algorithm") if "c" in cli else None) or "fixmatch"
    return __doc__ + "\n" + describe_keys(algorithm)


def cli(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if any(a in ("--help", "-h", "--help-keys") for a in argv):
            print(_help(argv))
            return 0
        setup_logging(None)  # console logging for what the config step reports; main() adds log.txt
        main(build_config(argv))
    except UsbCfsgError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli())
