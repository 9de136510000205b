"""Localization metrics: boxes onto the patch grid, pointing / mass / kept patches beside chance, report, overlay."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from tests.evaluation.test_evaluator import _fake_algorithm
from usb_cfsg.evaluation import evaluate_openset
from usb_cfsg.evaluation.localization import box_patch_mask, localization_metrics
from usb_cfsg.evaluation.relevance import save_relevance_figure


def test_box_patch_mask_follows_the_evaluation_crop() -> None:
    # 96 px input, crop ratio 1: a box over [24, 48) touches patches 1 and 2 of a 6-patch side (16 px each)
    mask = box_patch_mask(np.array([[0.25, 0.25, 0.5, 0.5]]), 6, 96, 1.0).reshape(6, 6)
    assert np.argwhere(mask).tolist() == [[1, 1], [1, 2], [2, 1], [2, 2]]
    # crop ratio 0.875: resize to 109, centre crop 96 from offset 6 -> the box moves to [21.25, 48.5)
    mask = box_patch_mask(np.array([[0.25, 0.25, 0.5, 0.5]]), 6, 96, 0.875).reshape(6, 6)
    assert mask[1:4, 1:4].all() and mask.sum() == 9
    # a box wholly in the cropped-off border touches nothing; one over everything touches all
    assert not box_patch_mask(np.array([[0.0, 0.0, 0.05, 0.05]]), 6, 96, 0.875).any()
    assert box_patch_mask(np.array([[0.0, 0.0, 1.0, 1.0]]), 4, 64, 0.875).all()


def test_metrics_beside_chance() -> None:
    boxes = np.array([[0.0, 0.0, 0.5, 0.5]] * 4)  # 2x2 grid, crop 1: the box is patch 0 -> chance 1/4
    rel = np.array(
        [
            [0.7, 0.1, 0.1, 0.1],  # points inside, mass 0.7
            [0.1, 0.7, 0.1, 0.1],  # points outside, mass 0.1
            [0.4, 0.2, 0.2, 0.2],
            [0.1, 0.1, 0.1, 0.7],
        ]
    )
    keep = np.array([[0], [1], [0], [3]])
    loc = localization_metrics(rel, boxes, 32, 1.0, keep_idx=keep, unknown=np.array([0, 0, 1, 1], bool), map_name="m")
    assert loc is not None
    assert loc["grid"] == 2 and loc["map"] == "m" and loc["num_images"] == 4 and loc["num_box_outside"] == 0
    assert loc["pointing_acc"] == pytest.approx(0.5) and loc["chance"] == pytest.approx(0.25)
    assert loc["mass_in_box"] == pytest.approx((0.7 + 0.1 + 0.4 + 0.1) / 4)
    assert loc["kept_in_box"] == pytest.approx(0.5) and "kept patches (1 of 4)" in loc["keep_source"]
    assert loc["seen"]["pointing_acc"] == pytest.approx(0.5) and loc["unseen"]["num_images"] == 2
    # without the net's kept patches: the map's top 25 % (one patch of four)
    top = localization_metrics(rel, boxes, 32, 1.0)
    assert top is not None and top["kept_in_box"] == pytest.approx(0.5) and "top 1 of 4" in top["keep_source"]
    # a map that is constant on every image (use_sfm: false) points nowhere: no metrics
    assert localization_metrics(np.full((3, 4), 0.25), boxes[:3], 32, 1.0) is None
    # an unnormalised non-negative map (GL-MCM's) is divided by its sum
    glmcm = localization_metrics(rel * 3 + 1, boxes, 32, 1.0)
    assert glmcm is not None and glmcm["mass_in_box"] == pytest.approx(np.mean((rel[:, 0] * 3 + 1) / 7.0))
    with pytest.raises(ValueError, match="not a square"):
        localization_metrics(np.ones((1, 5)), boxes[:1], 32, 1.0)


def test_evaluator_reports_localization_in_json_tensorboard_and_log(tmp_path) -> None:
    alg, outputs, _ = _fake_algorithm(tmp_path)
    n = len(outputs["y"])
    rng = np.random.default_rng(0)
    rel = rng.random((n, 16)).astype(np.float32)
    rel[:, 5] += 2.0  # patch (1, 1) is always the most relevant
    outputs["relevance"] = rel
    alg.args.img_size, alg.args.crop_ratio = 64, 1.0
    record = evaluate_openset(alg, out_dir=str(tmp_path / "out"))
    assert record["localization"] is None  # no boxes: nothing to measure
    alg.openset_info.test_boxes = np.tile([[0.25, 0.25, 0.5, 0.5]], (n, 1))  # exactly patch (1, 1)
    record = evaluate_openset(alg, out_dir=str(tmp_path / "out"))
    loc = record["localization"]
    assert loc["pointing_acc"] == 1.0 and loc["chance"] == pytest.approx(1 / 16) and loc["map"]
    data = json.loads((tmp_path / "out" / "openset_metrics.json").read_text())
    assert data["localization"]["pointing_acc"] == 1.0 and data["localization"]["unseen"]["num_images"] == 8
    values, _ = alg.tb_log.calls[-1]
    assert values["test_open/loc/pointing_acc"] == 1.0 and "test_open/loc/unseen/chance" in values
    text = "\n".join(alg.printed)
    assert "localization (box)" in text and "pointing" in text and "grid 4x4" in text
    alg.openset_info.test_boxes = alg.openset_info.test_boxes[:3]
    with pytest.raises(Exception, match="boxes"):
        evaluate_openset(alg, out_dir=str(tmp_path / "out"))


def test_relevance_figure_draws_the_box(tmp_path) -> None:
    img = Image.fromarray(np.zeros((64, 64), np.uint8)).convert("RGB")
    rel = np.zeros(16)
    plain = save_relevance_figure(img, rel, tmp_path / "plain.png", alpha=0.0)
    boxed = save_relevance_figure(img, rel, tmp_path / "boxed.png", alpha=0.0, box=(0.25, 0.25, 0.75, 0.75))
    a = np.asarray(Image.open(plain).convert("RGB"), dtype=int)
    b = np.asarray(Image.open(boxed).convert("RGB"), dtype=int)
    assert a.shape == b.shape
    # the figure is 256 px for a 64 px image: the box's left edge runs along x = 64, y in [64, 192]
    edge = b[70:180, 62:67].max(axis=(0, 2))
    assert edge.max() > 200 and a[70:180, 62:67].max() < 60
