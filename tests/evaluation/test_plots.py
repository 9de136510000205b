"""Tests of usb_cfsg.evaluation.plots: files exist, are valid PNGs, CSV round-trips, writes are atomic."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
from matplotlib import image as mpimg

from usb_cfsg.evaluation import metrics as m
from usb_cfsg.evaluation import plots
from usb_cfsg.evaluation.metrics import MetricInputError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _assert_png(path: str) -> None:
    assert os.path.isfile(path)
    with open(path, "rb") as fh:
        assert fh.read(8) == PNG_MAGIC
    pixels = mpimg.imread(path)
    # 5 x 4 inches at 100 dpi
    assert pixels.shape[:2] == (400, 500)
    assert os.path.getsize(path) < 200_000


def _no_temp_files(folder) -> None:
    leftovers = [p for p in os.listdir(folder) if ".tmp" in p]
    assert leftovers == []


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    unknown = rng.random(200) < 0.4
    score = rng.normal(size=200) + 1.5 * unknown
    return score, unknown


def test_save_roc_writes_png(tmp_path, data) -> None:
    score, unknown = data
    path = tmp_path / "sub" / "roc.png"
    out = plots.save_roc(path, {"ova": score, "msp": -score, "ties": np.round(score)}, unknown)
    assert out == str(path)
    _assert_png(out)
    _no_temp_files(path.parent)


def test_save_roc_degenerate_still_writes(tmp_path, eval_log) -> None:
    path = tmp_path / "roc.png"
    plots.save_roc(path, {"s": [0.1, 0.2, 0.3]}, [False, False, False])
    _assert_png(str(path))
    assert any("undefined" in w for w in eval_log.warnings())


def test_save_roc_validates(tmp_path) -> None:
    with pytest.raises(MetricInputError, match="scores is empty"):
        plots.save_roc(tmp_path / "r.png", {}, [True])
    with pytest.raises(MetricInputError, match=r"scores\['a'\] has 1 of 2 non-finite"):
        plots.save_roc(tmp_path / "r.png", {"a": [np.nan, 0.1]}, [True, False])
    with pytest.raises(MetricInputError, match="length mismatch"):
        plots.save_roc(tmp_path / "r.png", {"a": [0.1, 0.2, 0.3]}, [True, False])
    assert not (tmp_path / "r.png").exists()


@pytest.mark.parametrize("threshold", [None, 0.5])
def test_save_score_hist(tmp_path, data, threshold) -> None:
    score, unknown = data
    path = plots.save_score_hist(tmp_path / "hist.png", score, unknown, "ova", threshold=threshold)
    _assert_png(path)
    _no_temp_files(tmp_path)


def test_save_score_hist_one_group_and_constant_scores(tmp_path) -> None:
    path = plots.save_score_hist(tmp_path / "h.png", [0.2, 0.2, 0.2], [False, False, False], "const", 0.2)
    _assert_png(path)


def test_confusion_csv_round_trip(tmp_path) -> None:
    y = np.array([0, 0, 1, 2, 2, 2])
    pred = np.array([0, 2, 1, 2, 0, 2])
    cm = m.confusion_matrix(y, pred, 2)
    names = ["Black-footed Albatross", 'Laysan "Albatross", Jr.']
    path = tmp_path / "cm.csv"
    plots.write_confusion_csv(path, cm, names)
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["true \\ predicted", *names, "unknown"]
    assert rows[1] == [names[0], "1", "0", "1"]
    assert rows[3] == ["unknown", "1", "0", "2"]
    back, back_names = plots.read_confusion_csv(path)
    np.testing.assert_array_equal(back, cm)
    assert back.dtype == np.int64
    assert back_names == names
    _no_temp_files(tmp_path)


def test_confusion_csv_float_round_trip(tmp_path) -> None:
    cm = np.array([[0.1, 0.9], [1 / 3, 2 / 3]])
    plots.write_confusion_csv(tmp_path / "cm.csv", cm, ["a"])
    back, names = plots.read_confusion_csv(tmp_path / "cm.csv")
    np.testing.assert_array_equal(back, cm)
    assert names == ["a"]


def test_confusion_csv_validates(tmp_path) -> None:
    with pytest.raises(MetricInputError, match="class_names has 3 names but cm has shape \\(3, 3\\), i.e. K=2"):
        plots.write_confusion_csv(tmp_path / "cm.csv", np.zeros((3, 3), dtype=int), ["a", "b", "c"])
    with pytest.raises(MetricInputError, match="square"):
        plots.write_confusion_csv(tmp_path / "cm.csv", np.zeros((2, 3), dtype=int), ["a"])
    (tmp_path / "bad.csv").write_text("x,y\n1,2\n")
    with pytest.raises(MetricInputError, match="not a confusion-matrix CSV"):
        plots.read_confusion_csv(tmp_path / "bad.csv")


def test_failed_write_keeps_previous_file(tmp_path) -> None:
    path = tmp_path / "cm.csv"
    path.write_text("previous")
    with pytest.raises(RuntimeError):
        with plots._atomic_path(path) as tmp:
            with open(tmp, "w") as fh:
                fh.write("half")
            raise RuntimeError("interrupted")
    assert path.read_text() == "previous"
    _no_temp_files(tmp_path)


def test_metric_bars_legend_never_covers_a_bar(tmp_path, monkeypatch) -> None:
    from usb_cfsg.evaluation import plots

    figures = []
    real_save = plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, path: (figures.append(fig), real_save(fig, path))[1])
    rows = [f"row {i} (zs_weight 0.5)" for i in range(4)]
    full = [[0.99, 0.98], [1.0], [0.97, 0.99], [0.995]]  # bars reaching the right edge, where a legend sat
    path = plots.save_metric_bars(
        tmp_path / "bars.png",
        rows,
        {"closed acc": full, "AUROC (energy)": full, "H-score (energy)": full},
        title="t",
        caption="score: energy for every row; 500 training iterations; seeds 0, 1",
    )
    assert Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (fig,) = figures
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    legend = ax.get_legend().get_window_extent(renderer)
    bars = [p.get_window_extent(renderer) for p in ax.patches]
    assert len(bars) == 12 and not any(legend.overlaps(b) for b in bars)
    assert "score: energy for every row" in ax.get_title(loc="left")
