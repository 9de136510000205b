"""The registry refuses a second class under a taken name."""

import pytest
from semilearn.core.utils import ALGORITHMS


def test_a_duplicate_name_raises_and_the_same_class_registers_again():
    import semilearn.algorithms  # noqa: F401

    class Other:
        pass

    with pytest.raises(KeyError, match="already registered"):
        ALGORITHMS.register("fixmatch")(Other)
    fixmatch = ALGORITHMS["fixmatch"]
    ALGORITHMS.register("fixmatch")(fixmatch)
    assert ALGORITHMS["fixmatch"] is fixmatch
