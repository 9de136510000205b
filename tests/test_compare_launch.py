"""The comparison grid as jobs: submitit (its local executor here), the sbatch script, status files, --collect."""

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_compare import _base_config, _grid_argv
from usb_cfsg_tools import compare
from usb_cfsg_tools.compare_launch import read_status, run_state, status_path

ROOT = Path(__file__).resolve().parents[1]


def test_print_sbatch_writes_the_slurm_options_of_every_job(tmp_path, cub_root, capsys):
    base = _base_config(tmp_path / "base.yaml", cub_root)
    argv = _grid_argv(base, tmp_path / "g")
    slurm = ["--launcher", "submitit", "--partition", "gpu", "--gpus_per_job", "2", "--cpus_per_job", "12"]
    slurm += ["--time_min", "120", "--array_parallelism", "3", "--sbatch", "account=proj", "qos=high"]
    slurm += ["--setup", "module load cuda/12.4"]
    assert compare.main(argv + slurm + ["--print_sbatch"]) == 0
    script = capsys.readouterr().out
    lines = script.splitlines()
    assert lines[0] == "#!/bin/bash"
    for option in (
        "--job-name=usb_cfsg-g",
        "--partition=gpu",
        "--gpus-per-node=2",
        "--cpus-per-task=12",
        "--time=120",
        "--array=0-3%3",  # 2 rows x 2 seeds, 3 at a time
        "--account=proj",
        "--qos=high",
        "--nodes=1",
        "--ntasks-per-node=1",
    ):
        assert f"#SBATCH {option}" in lines, option
    assert "module load cuda/12.4" in lines
    assert any(line.startswith("srun ") and "submitit.core._submit" in line for line in lines)
    assert not (tmp_path / "g" / "runs").exists()  # nothing was submitted or run

    assert compare.main(argv + slurm + ["--sbatch", "account"] + ["--print_sbatch"]) == 2
    assert "--sbatch 'account': expected KEY=VALUE" in capsys.readouterr().err


def _run_command_process(log: Path, seconds: int) -> subprocess.Popen:
    """run_command in its own process, on a command that prints "step 1 of 9" (not in its own text) and sleeps."""
    code = (
        "import sys; from usb_cfsg_tools.compare_launch import run_command; "
        f"run_command([sys.executable, '-c', 'import time; print(\"step\", 1, \"of 9\", flush=True); time.sleep({seconds})'], "
        f"{str(log)!r}, {str(log.parent / 'metrics.json')!r}, '.')"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env)


def _wait_for(predicate, timeout=60):
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("timed out")


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_a_killed_run_counts_as_failed_with_its_last_log_line(tmp_path, how):
    log = tmp_path / "logs" / "row_seed0.log"
    proc = _run_command_process(log, 30)
    _wait_for(lambda: "step 1 of 9" in (log.read_text() if log.is_file() else ""))
    status = read_status(status_path(log))
    assert status["state"] == "running" and status["pid"] == proc.pid
    assert run_state(False, "no openset_metrics.json", log)[0] == "running"

    proc.send_signal(signal.SIGTERM if how == "sigterm" else signal.SIGKILL)
    proc.wait(timeout=120)
    state, detail = run_state(False, "no openset_metrics.json", log)
    assert state == "failed"
    assert detail.endswith("step 1 of 9")  # the log's last line
    if how == "sigterm":  # recorded by the job itself, its command stopped with it
        assert read_status(status_path(log))["reason"].startswith("terminated by SIGTERM")
    else:  # nothing recorded: the status still says running, but its process is gone
        assert f"process {proc.pid} on" in detail and "is gone" in detail


def test_a_run_that_never_started_is_missing(tmp_path):
    assert run_state(False, "no openset_metrics.json", tmp_path / "logs" / "x.log") == ("missing", "never started")


@pytest.mark.slow
def test_a_2x2_grid_through_submitit_jobs_collects_resubmits_failed_and_skips_finished(tmp_path, cub_root, capsys):
    base = _base_config(tmp_path / "base.yaml", cub_root)
    out = tmp_path / "grid"
    late = tmp_path / "late_data"  # the om row's data folder appears only after the first submit
    argv = ["--c", base, "--algorithms", "fixmatch", "--variants", f"om:openmatch,data_dir={late}"]
    argv += ["--seeds", "0", "1", "--save_dir", str(out)]
    jobs = ["--launcher", "submitit", "--cluster", "local", "--gpus_per_job", "0", "--wait"]

    assert compare.main(argv + ["--collect"]) == 1  # nothing has run: every run is missing
    assert capsys.readouterr().out.count("missing: ") == 4

    assert compare.main(argv + jobs) == 1  # the om runs fail (no data yet); fixmatch's finish
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"2 of 4 runs finished; results in {out / 'results.md'}"
    failed = [line for line in lines if line.strip().startswith("failed: om seed")]
    assert len(failed) == 2 and all(line.endswith(f"error: cub200: missing {late}") for line in failed), lines
    assert all("exit 2;" in line for line in failed)  # the training command's exit status of a configuration error
    assert read_status(out / "logs" / "fixmatch_seed0.status.json")["state"] == "done"
    assert (out / "submitit").is_dir()
    md = (out / "results.md").read_text()
    assert "| fixmatch |" in md and "Failed runs:" in md and "om seed 1" in md

    # --collect alone: the same view, written again, nothing run
    assert compare.main(argv + ["--collect"]) == 1
    assert sum("failed: om seed" in line for line in capsys.readouterr().out.splitlines()) == 2

    kept = (out / "runs" / "fixmatch_seed0" / "latest_model.pth").stat().st_mtime_ns
    shutil.copytree(cub_root, late)
    assert compare.main(argv + jobs) == 0  # only the failed runs are submitted again
    assert capsys.readouterr().out.startswith("4 of 4 runs finished")
    assert (out / "runs" / "fixmatch_seed0" / "latest_model.pth").stat().st_mtime_ns == kept
    with open(out / "results.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted((r["row"], r["seed"]) for r in rows) == [
        ("fixmatch", "0"),
        ("fixmatch", "1"),
        ("om", "0"),
        ("om", "1"),
    ]
    md = (out / "results.md").read_text()
    assert "Failed runs:" not in md and "| om (openmatch, data_dir=" in md


def test_submitit_jobs_run_the_same_training_module_in_the_runners_folder(tmp_path, cub_root, monkeypatch):
    """A job runs what a local run runs: ``<python> -m usb_cfsg.cli.train ...`` in the runner's working folder."""
    base = _base_config(tmp_path / "base.yaml", cub_root)
    submitted = []
    monkeypatch.setattr(
        compare, "submit", lambda opts, specs, folder, name, root: submitted.append((specs, root)) or []
    )
    monkeypatch.chdir(tmp_path)
    argv = ["--c", base, "--algorithms", "fixmatch", "--seeds", "0", "--save_dir", str(tmp_path / "g")]
    assert compare.main(argv + ["--launcher", "submitit", "--cluster", "local", "--python", "/some/python"]) == 0
    ((specs, root),) = submitted
    (spec,) = specs
    assert spec["cmd"][:3] == ["/some/python", "-m", compare.TRAIN_MODULE] and "--c" in spec["cmd"]
    assert spec["cmd"] == compare.train_command("/some/python", spec["cmd"][3:])
    assert spec["cwd"] == root == os.getcwd()
    assert not any(a.dest == "train_py" for a in compare.build_parser()._actions)
