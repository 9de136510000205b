"""The algorithms move tensors to the algorithm's device, never with .cuda(), and import on any machine."""

import re
from pathlib import Path

import semilearn

PACKAGE = Path(semilearn.__file__).parent


def test_no_algorithm_calls_cuda_directly():
    # the SSL algorithms; helper functions of the imbalanced ones (cossl, darp, tras) still take a GPU
    offenders = []
    for folder in ("algorithms",):
        for path in sorted((PACKAGE / folder).rglob("*.py")):
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if re.search(r"\.cuda\(|torch\.cuda\.Event\(", line) and not line.lstrip().startswith("#"):
                    offenders.append(f"{path.relative_to(PACKAGE)}:{n}: {line.strip()}")
    assert offenders == []


def test_every_algorithm_imports_and_registers():
    import semilearn.algorithms
    import semilearn.imb_algorithms  # noqa: F401
    from semilearn.core.utils import ALGORITHMS, IMB_ALGORITHMS

    assert "fixmatch" in ALGORITHMS and "simmatch" in ALGORITHMS and "dash" in ALGORITHMS
    assert "cossl" in IMB_ALGORITHMS
