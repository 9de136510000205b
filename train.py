"""Train any registered algorithm (USB's or ours): ``python train.py --c CONFIG [--key value ...]``."""
import sys

import usb_cfsg  # noqa: F401  (top level: mp.spawn children re-import this module and need the registrations)
from usb_cfsg.config import build_config
from usb_cfsg.engine import main
from usb_cfsg.errors import UsbCfsgError


def cli(argv=None) -> int:
    try:
        main(build_config(sys.argv[1:] if argv is None else argv))
    except UsbCfsgError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli())
