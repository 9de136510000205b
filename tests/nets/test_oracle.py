"""The oracle controls of the SFM's selection: finding the coloured mark in the input, and each mode's choice."""

import pytest
import torch

from usb_cfsg.nets.oracle import mark_patches, oracle_keep

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def _normalised(raw: torch.Tensor) -> torch.Tensor:
    return (raw - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def test_mark_patches_finds_the_coloured_pixels_per_patch():
    raw = torch.full((2, 3, 32, 32), 0.6)  # gray
    raw[0, :, 0:4, 0:8] = torch.tensor([0.9, 0.1, 0.1]).view(3, 1, 1)  # a red mark: half of patch 0's top rows
    raw[1, :, 16:32, 16:32] = torch.tensor([0.9, 0.1, 0.1]).view(3, 1, 1)  # patch 3 entirely
    raw[1, :, 0:16, 0:16] = 0.2  # a darker gray patch: no colour
    share = mark_patches(_normalised(raw), 16, MEAN, STD)
    torch.testing.assert_close(share, torch.tensor([[32 / 256, 0, 0, 0], [0, 0, 0, 1.0]]))


def test_oracle_modes_choose_as_documented():
    relevance = torch.tensor([[0.4, 0.3, 0.2, 0.1]])
    mark = torch.tensor([[0.0, 0.0, 0.3, 0.8]])
    assert oracle_keep("mark", relevance, mark, 2).tolist() == [[3, 2]]  # the mark's patches, most ink first
    assert oracle_keep("mark", relevance, mark, 3).tolist() == [[3, 2, 0]]  # filled up by relevance
    assert oracle_keep("anti", relevance, mark, 2).tolist() == [[0, 1]]  # never the mark
    assert oracle_keep("anti", relevance, mark, 3).tolist() == [[0, 1, 2]]  # only when nothing else is left
    torch.manual_seed(0)
    draws = torch.stack([oracle_keep("random", relevance, mark, 1)[0, 0] for _ in range(400)])
    counts = torch.bincount(draws, minlength=4).float() / 400
    assert (counts - 0.25).abs().max() < 0.08  # uniform over the patches
    with pytest.raises(ValueError, match="sfm_oracle"):
        oracle_keep("box", relevance, mark, 1)
