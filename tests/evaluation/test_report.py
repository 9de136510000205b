"""Tests of usb_cfsg.evaluation.report.format_summary."""

from __future__ import annotations

from usb_cfsg.evaluation import metrics as m
from usb_cfsg.evaluation.report import format_percent, format_summary

from .test_metrics import CLOSED, SCORE, K, T, Y


def test_format_percent() -> None:
    assert format_percent(0.8473) == "84.73%"
    assert format_percent(1) == "100.00%"
    assert format_percent(float("nan")) == "n/a"
    assert format_percent(None) == "-"
    assert format_percent("x") == "-"


def test_summary_of_hand_worked_example() -> None:
    metrics = m.compute_openset_metrics(Y, CLOSED, SCORE, T, K)
    text = format_summary(metrics, title="cfsg_clip on toy")
    lines = text.splitlines()
    assert lines[0] == "cfsg_clip on toy"
    assert lines[1].split() == ["metric", "value"]
    body = {line.rsplit(None, 1)[0].strip(): line.rsplit(None, 1)[1] for line in lines[3:12]}
    assert body == {
        "closed-set accuracy (seen)": "60.00%",
        "AUROC (unknown = positive)": "93.33%",
        "FPR@95%TPR (unknown = positive)": "20.00%",
        "FPR@95%TPR (seen = positive, MCM)": "33.33%",
        "open-set balanced accuracy": "50.00%",
        "unknown recall": "66.67%",
        "seen accuracy (K+1-way)": "40.00%",
        "H-score": "50.00%",
        "macro-F1 (K+1 classes)": "48.89%",
    }
    assert [line.split()[-1] for line in lines[12:15]] == ["0.55", "5", "3"]
    assert lines[13].startswith("seen-class test images") and lines[14].startswith("unseen-class test images")
    assert len(lines) <= 24 and max(len(line) for line in lines) <= 80


def test_summary_with_per_score_rows_and_nan() -> None:
    metrics = m.compute_openset_metrics([0, 1, 1], [0, 1, 0], [0.1, 0.2, 0.9], 0.5, 2)
    metrics["best_it"] = 1200
    metrics["scores"] = {
        "ova": {"auroc": 0.91234, "fpr95": 0.35, "open_bacc": 0.7, "unknown_recall": 0.5, "h_score": 0.6},
        "mcm": {"auroc": float("nan"), "fpr95": 0.4},
    }
    text = format_summary(metrics)
    lines = text.splitlines()
    assert lines[0] == "Open-set evaluation"
    assert any(line.split() == ["AUROC", "(unknown", "=", "positive)", "n/a"] for line in lines)
    assert any(line.split() == ["best_it", "1200"] for line in lines)
    header = next(i for i, line in enumerate(lines) if line.startswith("score"))
    assert lines[header].split() == ["score", "AUROC", "FPR95", "FPR95-ID", "open", "bAcc", "unk.", "recall", "H-score"]
    assert lines[header + 2].split() == ["ova", "91.23%", "35.00%", "-", "70.00%", "50.00%", "60.00%"]
    assert lines[header + 3].split() == ["mcm", "n/a", "40.00%", "-", "-", "-", "-"]
    # Columns line up: each percentage ends at the same column in both rows.
    assert len(lines[header + 2]) == len(lines[header + 3]) == len(lines[header])


def test_summary_of_empty_dict() -> None:
    assert format_summary({}) == "Open-set evaluation"


def test_summary_shows_difficulty_groups_and_sources() -> None:
    metrics = m.compute_openset_metrics(Y, CLOSED, SCORE, T, K)
    metrics["threshold_source"] = "ood_threshold (config); the score lies in [0, 1] on 40 unlabeled training images"
    metrics["calibration"] = {"source": "40 of 90 unlabeled training images", "ranges": {}, "thresholds": {}}
    metrics["difficulty"] = {
        "Easy": {"num_test_unseen": 12, "auroc": 0.95, "fpr95": 0.2, "fpr95_id": 0.1, "unknown_recall": 0.75},
        "Hard": {"num_test_unseen": 30, "auroc": 0.6, "fpr95": float("nan"), "fpr95_id": 0.7, "unknown_recall": 0.25},
    }
    lines = format_summary(metrics).splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("difficulty"))
    assert lines[header].split() == [
        "difficulty",
        "(vs",
        "all",
        "seen)",
        "images",
        "AUROC",
        "FPR95",
        "FPR95-ID",
        "unk.",
        "recall",
    ]
    assert lines[header + 2].split() == ["unknown:", "Easy", "12", "95.00%", "20.00%", "10.00%", "75.00%"]
    assert lines[header + 3].split() == ["unknown:", "Hard", "30", "60.00%", "n/a", "70.00%", "25.00%"]
    assert lines[-2] == "threshold: " + metrics["threshold_source"]
    assert lines[-1] == "calibration: 40 of 90 unlabeled training images"


def test_summary_table_fits_80_columns_and_gives_the_whole_checkpoint_path(tmp_path, monkeypatch) -> None:
    metrics = m.compute_openset_metrics(Y, CLOSED, SCORE, T, K)
    long_dir = "/" + "/".join(["a_rather_long_folder_name"] * 4)
    metrics["checkpoint"] = f"{long_dir}/saved_models/demo/cfsg_fmnist/latest_model.pth"
    lines = format_summary(metrics).splitlines()
    table = [line for line in lines if not line.startswith("checkpoint: ")]
    assert max(len(line) for line in table) <= 80, max(table, key=len)
    # never cut (a cut path like "...d_models/demo/..." cannot be copied): whole, on its own line
    assert f"checkpoint: {metrics['checkpoint']}" in lines
    monkeypatch.chdir(tmp_path)
    metrics["checkpoint"] = str(tmp_path / "saved_models" / "demo" / "cfsg_fmnist" / "latest_model.pth")
    assert "checkpoint: saved_models/demo/cfsg_fmnist/latest_model.pth" in format_summary(metrics).splitlines()
