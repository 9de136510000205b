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


def test_darp_refines_pseudo_labels_on_the_device_of_the_batch():
    import torch
    from semilearn.imb_algorithms.darp.utils import DARPPseudoLabelingHook

    torch.manual_seed(0)
    hook = DARPPseudoLabelingHook(
        warmup_epochs=0, alpha=2.0, iter_T=2, num_refine_iter=2, dataset_len=6, num_classes=3, target_disb=[2.0] * 3
    )
    idx = torch.tensor([0, 2, 4])
    probs = torch.softmax(torch.randn(3, 3), dim=1)
    for batch_idx in (0, 1):  # a refinement step, then a step that reuses the refined pseudo-labels
        out = hook.refine_pseudo_labels(idx, probs, batch_idx=batch_idx, epoch=1)
        assert out.shape == (3, 3) and out.device == idx.device
