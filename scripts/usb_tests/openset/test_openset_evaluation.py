"""Every algorithm gets open-set evaluation on an open-set dataset: USB's own ones report msp and energy."""

from openset_helpers import needs_training, trained_metrics


@needs_training
def test_fixmatch_reports_msp_and_energy(tmp_path):
    metrics = trained_metrics(tmp_path, "fixmatch", hard_label=True, T=0.5, p_cutoff=0.95, ulb_loss_ratio=1.0)
    assert metrics["algorithm"] == "fixmatch" and metrics["num_seen"] == 3
    assert {"msp", "energy"} <= set(metrics["scores"])
    for key in ("closed_acc", "auroc", "fpr95", "h_score"):
        assert key in metrics
