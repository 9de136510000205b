"""What the command-line tools print: stdout that survives a closed pipe, and commands a user can type.

* :func:`write_stdout`: ``python train.py --help | head -40`` closes the pipe early; writing on
  raises ``BrokenPipeError`` (a traceback and exit status 1, also at the interpreter's final flush).
  :func:`write_stdout` ends the output quietly instead: stdout is pointed at the null device.
* :func:`python_command`: the interpreter and script as the user can run them again, e.g.
  ``python train.py`` inside an activated virtual environment, ``.venv/bin/python train.py``
  without one (a bare ``python`` may be another interpreter, without torch).

Light imports only: train.py prints ``--help`` before torch loads.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from typing import Optional


def write_stdout(text: str) -> bool:
    """Write ``text`` and a newline to stdout and flush it.

    Returns:
        False when the reader closed the pipe (e.g. ``| head``): stdout then goes to the null device
        for the rest of the process, so nothing more fails; True otherwise.
    """
    try:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
        return True
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return False


def python_command(script: Optional[str] = None) -> str:
    """The command that runs ``script`` (default: ``sys.argv[0]`` as typed) with this interpreter.

    ``python`` when that name finds this very interpreter on ``PATH`` (an activated virtual
    environment); otherwise this interpreter's path, relative to the working folder when shorter
    (``.venv/bin/python``). Symbolic links are not followed: a virtual environment's ``python`` links
    to the system one but has its own packages.
    """
    exe = os.path.abspath(sys.executable or "python")
    found = shutil.which("python")
    if found and os.path.abspath(found) == exe:
        interpreter = "python"
    else:
        rel = os.path.relpath(exe)
        interpreter = rel if len(rel) < len(exe) else exe
    script = script if script is not None else (sys.argv[0] if sys.argv and sys.argv[0] else "train.py")
    return f"{shlex.quote(interpreter)} {shlex.quote(script)}"


__all__ = ["python_command", "write_stdout"]
