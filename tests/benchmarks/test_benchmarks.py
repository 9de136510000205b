"""The benchmark scripts run on CPU (tiny net): step variants, prediction, loader, the GPU check's dry run."""

from __future__ import annotations

import json
import os
import sys

import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "benchmarks")
sys.path.insert(0, BENCH)

import badged_table  # noqa: E402
import bench_feed  # noqa: E402
import bench_loader  # noqa: E402
import bench_predict  # noqa: E402
import bench_step  # noqa: E402
import common  # noqa: E402
import gpu_check  # noqa: E402


def test_bf16_peak_table_matches_by_name():
    assert gpu_check.bf16_peak("NVIDIA H200") == 989.4
    assert gpu_check.bf16_peak("NVIDIA H100 PCIe") == 756.0
    assert gpu_check.bf16_peak("NVIDIA H100 80GB HBM3") == 989.4
    assert gpu_check.bf16_peak("NVIDIA L40S") == 362.05  # not L4's
    assert gpu_check.bf16_peak("NVIDIA L4") == 121.0
    assert gpu_check.bf16_peak("Tesla V100-SXM2-16GB") is None


def test_median_and_spread():
    assert common.median([3.0, 1.0, 2.0]) == 2.0
    assert common.median([1.0, 2.0, 3.0, 10.0]) == 2.5
    lo, hi = common.spread([0.9, 1.0, 1.2])
    assert lo == pytest.approx(-0.1) and hi == pytest.approx(0.2)


def test_step_measure_bf16_compiled_and_flops(tmp_path):
    data = common.write_replica(str(tmp_path))
    eager = bench_step.measure(
        "cfsg_clip",
        bench_step.parse(
            ["--net", "clip_tiny", "--img_size", "32", "--batch_size", "2", "--steps", "1", "--threads", "1", "--flops"]
        ),
        data,
    )
    assert eager["flops_per_step"] > 0 and eager["images_per_step"] == 6 and eager["step_s_median"] > 0
    compiled = bench_step.measure(
        "fixmatch",
        bench_step.parse(
            [
                "--net",
                "clip_tiny",
                "--img_size",
                "32",
                "--batch_size",
                "2",
                "--steps",
                "1",
                "--threads",
                "1",
                "--amp_dtype",
                "bf16",
                "--compile",
                "--compile_backend",
                "eager",
            ]
        ),
        data,
    )
    assert compiled["compile_failed"] == [] and compiled["images_per_s"] > 0


def test_predict_benchmark_runs_every_branch_and_score(tmp_path):
    out = tmp_path / "p.json"
    res = bench_predict.main(
        [
            "--net",
            "clip_tiny",
            "--img_size",
            "32",
            "--batch_size",
            "2",
            "--rounds",
            "2",
            "--num_classes",
            "3",
            "--threads",
            "1",
            "--json",
            str(out),
        ]
    )
    saved = json.loads(out.read_text())
    assert saved["throughput_ratio"] == pytest.approx(res["throughput_ratio"]) and res["throughput_ratio"] > 0
    assert {"score_ova", "score_mcm", "score_glmcm"} <= set(res["cfsg_scores"])
    assert {"logits_coarse", "logits_fine", "relevance"} <= set(res["cfsg_outputs"])
    assert "random init" in res["weights"] and len(res["throughput_ratio_per_round"]) == 2


@pytest.mark.slow
def test_gpu_check_dry_run_writes_every_piece(tmp_path):
    out = tmp_path / "gpu.json"
    gpu_check.main(["--dry-run", "--out", str(out), "--variants", "fp32,bf16+compile", "--budget", "400"])
    doc = json.loads(out.read_text())
    rows = {(r["algorithm"], r["variant"]): r for r in doc["step"]["results"]}
    assert set(rows) == {(a, v) for a in ("fixmatch", "cfsg_clip") for v in ("fp32", "bf16+compile")}
    for (alg, variant), row in rows.items():
        assert row["images_per_s"] > 0 and row["flops_per_step"] > 0, (alg, variant, row)
    assert rows[("cfsg_clip", "bf16+compile")]["compile_failed"] == []  # compiled (eager backend on CPU), no fallback
    assert set(doc["step"]["cfsg_over_fixmatch"]) == {"fp32", "bf16+compile"}
    assert [r["amp"] for r in doc["predict"]] == ["none", "bf16"] and all(
        "throughput_ratio" in r for r in doc["predict"]
    )
    assert doc["loader"]["cache_speedup"] > 0 and doc["wall_s"] < 400
    feed = {row["augment_device"]: row for row in doc["feed"]["paths"]}
    assert set(feed) == {"none", "cpu"} and all(row["fed_over_synthetic"] > 0 for row in feed.values()), feed
    assert "views_s_per_step" in feed["cpu"] and "views_s_per_step" not in feed["none"]
    assert set(gpu_check.summary(doc)["feed/cpu"]) == {"synthetic_steps_per_s", "fed_steps_per_s", "fed_over_synthetic"}


def test_loader_benchmark_reports_cpu_ms_per_image_for_every_path(tmp_path):
    out = tmp_path / "loader.json"
    argv = ["--classes", "4", "--per-class", "7", "--width", "120", "--height", "90", "--img-size", "32"]
    argv += ["--batch-size", "4", "--images", "40", "--rounds", "1", "--workers", "1", "--json", str(out)]
    res = bench_loader.main(argv)
    assert json.loads(out.read_text())["cache_speedup"] == pytest.approx(res["cache_speedup"])
    for st in ("ulb", "lb"):
        for cache in ("uncached", "cached"):
            for path in ("pil", "device"):
                row = res[f"{st}_{cache}_{path}"]
                # the steady-state figure is a difference of two passes: on passes this short it is noise
                # around a small number and may even be negative, so only the total is checked for sign
                assert row["cpu_ms_per_image_with_startup"] > 0 and row["images_per_s"] > 0, (st, cache, path, row)
                assert isinstance(row["cpu_ms_per_image"], float) and len(row["cpu_ms_per_image_all"]) == 1
    assert res["views_cpu_ms_per_image"]["strong"] > 0 and "ulb_cpu_ms_reduction" in res


def test_feed_benchmark_names_an_unknown_path():
    with pytest.raises(SystemExit, match="unknown \\['gpu'\\]"):
        bench_feed.run(bench_feed.parse(["--augment", "none,gpu"]))


def _badged_metrics(closed: float, near: float, kept: float) -> dict:
    group = {"near": {"auroc": near}, "far": {"auroc": 0.9}}
    return {
        "closed_acc": closed,
        "seen_acc": 0.7,
        "h_score": 0.6,
        "scores": {"energy": {"difficulty": group}, "msp": {"difficulty": {"near": {"auroc": near + 0.1}}}},
        "localization": {"kept_in_box": kept, "seen": {"pointing_acc": 0.5}},
    }


def test_badged_table_averages_the_seeds_and_reads_the_erased_evaluation(tmp_path):
    for seed, closed in ((0, 0.80), (1, 0.84)):
        run = tmp_path / "runs" / f"cfsg_oracle_seed{seed}"
        (run / "erased").mkdir(parents=True)
        (run / "openset_metrics.json").write_text(json.dumps(_badged_metrics(closed, 0.6, 0.8)))
        (run / "erased" / "openset_metrics.json").write_text(json.dumps(_badged_metrics(0.5, 0.5, 0.1)))
    (tmp_path / "runs" / "fixmatch_seed0").mkdir()  # not finished: no metrics
    text = badged_table.table(badged_table.read_runs(str(tmp_path)), ["cfsg_oracle", "fixmatch"])
    oracle = next(line for line in text.splitlines() if line.startswith("| cfsg_oracle"))
    cells = [c.strip() for c in oracle.strip("|").split("|")]
    assert cells[:3] == ["cfsg_oracle", "2", "82.00±2.83"]  # mean and sample std of 80 and 84
    assert cells[5] == "60.00±0.00" and cells[7] == "70.00±0.00 (msp)" and cells[8] == "80.00±0.00"
    assert "| fixmatch | 0 | no metrics |" in text
    assert cells[10] == "n/a"  # no TensorBoard log: no unlabeled share
    seed1 = badged_table.table(badged_table.read_runs(str(tmp_path), seeds=[1]), ["cfsg_oracle"])
    assert "| cfsg_oracle | 1 | 84.00 |" in seed1
    erased = badged_table.table(badged_table.read_runs(str(tmp_path), "erased"))
    assert "| cfsg_oracle | 2 | 50.00±0.00 |" in erased


def test_badged_table_reads_the_share_of_unlabeled_images_used_from_tensorboard(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    run = tmp_path / "runs" / "fixmatch_seed0"
    run.mkdir(parents=True)
    (run / "openset_metrics.json").write_text(json.dumps(_badged_metrics(0.8, 0.6, 0.8)))
    with SummaryWriter(str(run / "tensorboard")) as writer:
        for step, value in enumerate((0.0, 0.1, 0.5)):
            writer.add_scalar("train/util_ratio", value, step)
    line = badged_table.table(badged_table.read_runs(str(tmp_path))).splitlines()[-1]
    assert line.rstrip(" |").endswith("20.00")  # the mean over the logged steps
