"""The algorithms move tensors to the algorithm's device, never with .cuda(), and import on any machine."""

import re
from pathlib import Path

import semilearn

PACKAGE = Path(semilearn.__file__).parent


def test_no_algorithm_calls_cuda_directly():
    # the SSL and the imbalanced algorithms, their hooks and helpers: .cuda(), .to(<GPU index>), CUDA events
    offenders = []
    for folder in ("algorithms", "imb_algorithms"):
        for path in sorted((PACKAGE / folder).rglob("*.py")):
            for n, line in enumerate(path.read_text().splitlines(), 1):
                code = line.split("#", 1)[0]
                if re.search(r"\.cuda\(|torch\.cuda\.Event\(|\.to\((self\.|algorithm\.|args\.)?gpu\)", code):
                    offenders.append(f"{path.relative_to(PACKAGE)}:{n}: {line.strip()}")
    assert offenders == []


def test_every_algorithm_imports_and_registers():
    import semilearn.algorithms
    import semilearn.imb_algorithms  # noqa: F401
    from semilearn.core.utils import ALGORITHMS, IMB_ALGORITHMS

    assert "fixmatch" in ALGORITHMS and "simmatch" in ALGORITHMS and "dash" in ALGORITHMS
    assert "cossl" in IMB_ALGORITHMS
