"""Train any registered algorithm (USB's or ours).

    python train.py --c CONFIG [--key value ...]
    python train.py [--c CONFIG] [--algorithm NAME] --help     # every key, its type and default
    python train.py --c RUN/config.yaml                         # repeat a run (its folder: overwrite decides)
    python train.py --c RUN/config.yaml --resume true           # continue it from RUN/latest_model.pth
    python train.py --c RUN/config.yaml --resume true --num_train_iter N --resume_extend true   # train longer

Every value is checked before any data is read; a start that fails leaves no run folder behind.
The same command, installed: ``usb-cfsg-train`` or ``python -m usb_cfsg.cli.train`` (same arguments).
"""

import logging
import os
import sys
import time
from typing import Optional, Sequence

# OpenMP threads sleep instead of spinning while they wait. Same results (same threads, same kernels), but on
# a CPU shared with other processes (DataLoader workers included) spinning threads slowed steps up to 5x
# (README, Performance). Set before torch loads; an explicit OMP_WAIT_POLICY wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# Light imports only: --help and configuration errors (unknown keys, types) come before torch and
# semilearn load (usb_cfsg.engine, imported in cli(), registers our nets and algorithms; mp.spawn children
# unpickle usb_cfsg.engine.launch.worker, which imports it too).
from ..config import build_config, describe_keys, load_yaml, parse_cli_pairs, validate_config_values
from ..console import write_stdout
from ..errors import UsbCfsgError


def _help(argv) -> str:
    rest = [a for a in argv if a not in ("--help", "-h", "--help-keys")]
    cli = parse_cli_pairs(rest)
    algorithm = cli.get("algorithm") or (load_yaml(cli["c"]).get("algorithm") if "c" in cli else None) or "fixmatch"
    return __doc__ + "\n" + describe_keys(algorithm)


def _console_logging() -> None:
    """Console logging for what the config step reports, before torch loads (setup_logging replaces it)."""
    log = logging.getLogger("usb_cfsg")
    for old in [h for h in log.handlers if getattr(h, "_usb_cfsg", False)]:  # e.g. an earlier run's log.txt
        log.removeHandler(old)
        old.close()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("[%(asctime)s %(levelname)s] %(message)s"))
    handler._usb_cfsg = True  # type: ignore[attr-defined]
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


def interrupted(args, started_at: float = 0.0) -> str:
    """The one line Ctrl-C prints: this run's last checkpoint with its iteration and the command that resumes
    from it, or that it has none yet (usb_cfsg.interrupt)."""
    from ..interrupt import interrupted_message

    return interrupted_message(args, started_at)


def cli(argv: Optional[Sequence[str]] = None) -> int:
    """Train with ``argv`` (default: the command line); returns the exit status (0, 2 bad config, 130 Ctrl-C)."""
    started_at = time.time()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = None
    try:
        if any(a in ("--help", "-h", "--help-keys") for a in argv):
            write_stdout(_help(argv))  # quiet when the reader closes the pipe (| head)
            return 0
        _console_logging()
        args = build_config(argv, validate=False)  # unknown keys and types: no torch yet
        validate_config_values(args)  # ranges and the algorithm's rules (may load open_clip / the algorithm)
        from ..engine import main  # torch and semilearn load here
        from ..engine.launch import setup_logging

        setup_logging(None)  # console logging until main() adds log.txt
        main(args)
    except UsbCfsgError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: no traceback, the checkpoint that survived and how to go on
        print(interrupted(args, started_at), file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(cli())
