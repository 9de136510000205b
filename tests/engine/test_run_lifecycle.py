"""Run folders, reruns, honest resume, failed starts, the non-finite-loss guard and the log format."""

import functools
import math
import os
import re
import sys
import types

import pytest
import torch
import yaml

import train
from tests.conftest import tiny_run_argv
from usb_cfsg.console import python_command
from usb_cfsg.engine.checkpoint import safe_load
from usb_cfsg.engine.hooks import (
    CompactLoggingHook,
    GuardedParamUpdateHook,
    NonFiniteLossError,
    StepEndHook,
    ThroughputHook,
    compact_line,
    format_hms,
)

LINE = re.compile(
    r"^it (\d+)/(\d+) \| loss [-\d.naif]+ \(sup [-\d.naif]+, unsup [-\d.naif]+\) \| lr \d\.\d\de[-+]\d\d "
    r"\| [\d.]+ img/s \| ETA \d+:\d\d:\d\d$"
)


def _messages(log_text):
    return [line.split("] ", 1)[1] for line in log_text.splitlines() if line.startswith("[") and "] " in line]


def _tiny_yaml(tmp_path, cub_root, **extra):
    """A demo-like config: overwrite true, load_path inside the run folder, resume false."""
    argv = tiny_run_argv(cub_root, str(tmp_path / "runs"), "demo", iters=2, num_eval_iter=2, use_tensorboard="false")
    cfg = {argv[i][2:]: yaml.safe_load(argv[i + 1]) for i in range(0, len(argv), 2)}
    cfg.update(overwrite=True, resume=False, load_path=str(tmp_path / "runs" / "demo" / "latest_model.pth"), **extra)
    path = tmp_path / "demo.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def test_demo_like_config_and_saved_config_rerun_into_the_same_folder(cub_root, tmp_path):
    cfg = _tiny_yaml(tmp_path, cub_root)
    run = tmp_path / "runs" / "demo"
    assert train.cli(["--c", cfg]) == 0
    first = yaml.safe_load((run / "config.yaml").read_text())
    assert first["resume"] is False and "load_path" not in first
    # the saved config.yaml repeats the run (overwrite: true, resume: false, no load_path)
    assert train.cli(["--c", str(run / "config.yaml")]) == 0
    assert yaml.safe_load((run / "config.yaml").read_text()) == first
    assert safe_load(str(run / "latest_model.pth"))["it"] == 2
    assert not [p for p in os.listdir(tmp_path / "runs") if p != "demo"]  # the replaced run left no copy behind


def test_resume_refuses_schedule_changes_and_never_rewrites_a_finished_run(cub_root, tmp_path, capsys):
    common = dict(num_eval_iter=2, use_tensorboard="false")
    run = tmp_path / "r"
    assert train.cli(tiny_run_argv(cub_root, str(tmp_path), "r", iters=4, **common)) == 0
    ckpt = str(run / "latest_model.pth")
    frozen = {
        name: ((run / name).read_bytes(), (run / name).stat().st_mtime_ns)
        for name in ("config.yaml", "openset_metrics.json", "latest_model.pth", "log.txt")
    }
    capsys.readouterr()

    # resume without a checkpoint: both ways on (start fresh, or another run's checkpoint)
    assert train.cli(tiny_run_argv(cub_root, str(tmp_path), "none_yet", iters=4, resume="true", **common)) == 2
    err = capsys.readouterr().err
    assert "no checkpoint at" in err and "drop --resume" in err and "--load_path PATH" in err
    # changing num_train_iter without resume_extend: refused, with the reason and the fix
    assert train.cli(tiny_run_argv(cub_root, str(tmp_path), "r", iters=6, resume="true", **common)) == 2
    err = capsys.readouterr().err
    assert "num_train_iter 4 -> 6" in err and "--resume_extend true" in err
    # a key that shapes training: refused, naming it
    assert train.cli(tiny_run_argv(cub_root, str(tmp_path), "r", iters=4, resume="true", lr=0.01, **common)) == 2
    assert "lr 0.001 -> 0.01" in capsys.readouterr().err
    # the case: a finished 4-iteration run resumed with a shorter schedule
    assert (
        train.cli(tiny_run_argv(cub_root, str(tmp_path), "r", iters=3, resume="true", resume_extend="true", **common))
        == 2
    )
    assert "already at iteration 4" in capsys.readouterr().err
    # the same schedule: a finished run, nothing trained, nothing written
    assert train.cli(tiny_run_argv(cub_root, str(tmp_path), "r", iters=4, resume="true", **common)) == 0
    assert "finished run" in capsys.readouterr().err
    for name, (data, mtime) in frozen.items():
        assert (run / name).read_bytes() == data and (run / name).stat().st_mtime_ns == mtime, name
    # an extension whose start fails (data moved away) leaves config.yaml and the checkpoint as they were
    assert (
        train.cli(
            tiny_run_argv(
                str(tmp_path / "moved"), str(tmp_path), "r", iters=6, resume="true", resume_extend="true", **common
            )
        )
        == 2
    )
    for name in ("config.yaml", "latest_model.pth", "openset_metrics.json"):
        assert (run / name).read_bytes() == frozen[name][0], name

    # explicit extension: trains on, says what changes, config.yaml holds the run's new schedule
    assert (
        train.cli(
            tiny_run_argv(
                cub_root, str(tmp_path), "r", iters=6, resume="true", load_path=ckpt, resume_extend="true", **common
            )
        )
        == 0
    )
    assert safe_load(ckpt)["it"] == 6
    log = (run / "log.txt").read_text()
    assert re.search(
        r"resume_extend: num_train_iter 4 -> 6; the lr schedule is recomputed for 6 iterations: after "
        r"iteration 4 the lr goes from \S+ \(old schedule\) to \S+ \(new\)",
        log,
    )
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved == {**yaml.safe_load(frozen["config.yaml"][0]), "num_train_iter": 6}  # resume keys normalised
    assert (
        log.count("resolved config, keys that differ from the defaults") == 2
    )  # logged by the two starts that trained, not by the refused ones


def test_a_failed_start_leaves_no_folder_and_restores_a_replaced_run(tmp_path, capsys):
    argv = tiny_run_argv(str(tmp_path / "no_data"), str(tmp_path), "fm", iters=2)
    assert train.cli(argv) == 2  # missing dataset: an error naming the layout
    err = capsys.readouterr().err
    assert "resolved config" not in err
    assert not (tmp_path / "fm").exists()
    # overwrite of a finished run whose replacement fails to start: the old run comes back intact
    old = tmp_path / "old"
    old.mkdir()
    (old / "latest_model.pth").write_bytes(b"previous run")
    assert train.cli(tiny_run_argv(str(tmp_path / "no_data"), str(tmp_path), "old", iters=2, overwrite="true")) == 2
    assert (old / "latest_model.pth").read_bytes() == b"previous run" and sorted(os.listdir(old)) == [
        "latest_model.pth"
    ]
    assert sorted(os.listdir(tmp_path)) == ["old"]


def test_overwrite_refuses_to_delete_what_the_run_loads(tmp_path, capsys):
    run = tmp_path / "w"
    run.mkdir()
    (run / "latest_model.pth").write_bytes(b"x")
    (run / "weights.pt").write_bytes(b"w")
    argv = tiny_run_argv(
        str(tmp_path / "no_data"), str(tmp_path), "w", iters=2, overwrite="true", pretrain_path=str(run / "weights.pt")
    )
    assert train.cli(argv) == 2
    assert "overwrite would delete pretrain_path" in capsys.readouterr().err
    assert (run / "weights.pt").exists()


def test_bad_values_fail_before_any_data_is_read(cub_root, tmp_path, monkeypatch, capsys):
    import usb_cfsg.datasets as datasets

    def no_data(*a, **k):
        raise AssertionError("data was read")

    monkeypatch.setattr(datasets, "build_openset_datasets", no_data)
    argv = tiny_run_argv(cub_root, str(tmp_path), "bad", algorithm="cfsg_clip", iters=2, sfm_keep_ratio=1.5, lr=-1)
    assert train.cli(argv) == 2
    err = capsys.readouterr().err
    assert "sfm_keep_ratio must be in (0, 1], got 1.5" in err and "lr must be in (0, inf), got -1.0" in err
    assert "resolved config" not in err and not (tmp_path / "bad").exists()
    assert train.cli(tiny_run_argv(cub_root, str(tmp_path), "bad", net="clip_tinny", iters=2)) == 2
    assert "unknown net 'clip_tinny', did you mean 'clip_tiny'" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


# ------------------------------------------------------------------ non-finite loss guard
def _fake_algorithm(max_lr=0.1):
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=max_lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 / (1 + step))
    alg = types.SimpleNamespace(
        model=model,
        optimizer=opt,
        scheduler=sched,
        use_amp=False,
        clip_grad=0.0,
        it=0,
        args=types.SimpleNamespace(rank=0),
        distributed=False,
        log_dict={},
        out_dict={},
        last_checkpoint=("/runs/x/latest_model.pth", 8),
    )
    return alg


def _step(hook, alg, bad):
    x = torch.ones(4, 2)
    loss = alg.model(x).pow(2).mean()
    if bad:
        loss = loss * float("nan")
    alg.out_dict = {"loss": loss}
    alg.log_dict = {
        "train/sup_loss": 0.5,
        "train/unsup_loss": float("nan") if bad else 0.1,
        "train/id_recall": float("nan"),
    }
    hook.after_train_step(alg)
    alg.it += 1


def test_guard_skips_non_finite_steps_and_stops_after_max_bad_steps(caplog):
    alg = _fake_algorithm()
    hook = GuardedParamUpdateHook(max_bad_steps=3)
    before = [p.detach().clone() for p in alg.model.parameters()]
    with caplog.at_level("WARNING", logger="usb_cfsg"):
        _step(hook, alg, bad=True)
    assert all(torch.equal(a, b) for a, b in zip(before, alg.model.parameters()))  # no update
    assert alg.scheduler.last_epoch == 1  # the lr schedule follows the iteration counter
    assert all(p.grad is None for p in alg.model.parameters())
    assert "it 1: non-finite train/unsup_loss: step skipped (1 in a row" in caplog.text
    assert "id_recall" not in caplog.text  # diagnostics are not loss terms
    _step(hook, alg, bad=False)  # a finite step updates and resets the count
    assert not all(torch.equal(a, b) for a, b in zip(before, alg.model.parameters()))
    assert hook.bad_streak == 0
    _step(hook, alg, bad=True)
    _step(hook, alg, bad=True)
    with pytest.raises(
        NonFiniteLossError,
        match=r"3 consecutive steps \(iterations 3-5\) had a non-finite loss "
        r"\(train/unsup_loss\).*'/runs/x/latest_model.pth' \(iteration 8\) "
        r"is kept",
    ):
        _step(hook, alg, bad=True)


def test_non_finite_losses_stop_a_run_and_keep_the_last_good_checkpoint(cub_root, tmp_path, monkeypatch, capsys):
    from semilearn.algorithms.fixmatch.fixmatch import FixMatch

    original = FixMatch.train_step

    @functools.wraps(original)
    def poisoned(self, *args, **kwargs):
        out, log = original(self, *args, **kwargs)
        if self.it >= 4:  # iterations 5, 6, 7 (1-based) blow up
            out["loss"] = out["loss"] * float("nan")
            log["train/unsup_loss"] = float("nan")
        return out, log

    monkeypatch.setattr(FixMatch, "train_step", poisoned)
    argv = tiny_run_argv(
        cub_root,
        str(tmp_path),
        "nan",
        iters=12,
        num_eval_iter=4,
        num_log_iter=1,
        max_bad_steps=3,
        use_tensorboard="false",
    )
    assert train.cli(argv) == 2
    assert "3 consecutive steps (iterations 5-7) had a non-finite loss (train/unsup_loss)" in capsys.readouterr().err
    ckpt = safe_load(str(tmp_path / "nan" / "latest_model.pth"))
    assert ckpt["it"] == 4  # the checkpoint of the last good steps, not overwritten
    assert all(torch.isfinite(t).all() for t in ckpt["model"].values() if t.is_floating_point())
    log = (tmp_path / "nan" / "log.txt").read_text()
    assert log.count("non-finite train/unsup_loss: step skipped") == 3


# ------------------------------------------------------------------ log format and timing
def test_compact_log_lines_and_tensorboard_steps(cub_root, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert train.cli(tiny_run_argv(cub_root, str(tmp_path), "log", iters=6, num_eval_iter=3, num_log_iter=2)) == 0
    messages = _messages((tmp_path / "log" / "log.txt").read_text())
    lines = [m for m in messages if LINE.match(m)]
    assert [int(LINE.match(m).group(1)) for m in lines] == [2, 3, 4, 6]  # every num_log_iter and num_eval_iter
    assert all(len(m) < 120 for m in lines)
    assert len([m for m in messages if re.match(r"it [36]/6 \| eval top-1 [\d.]+ \(best [\d.]+ at it \d\)", m)]) == 2
    events = EventAccumulator(str(tmp_path / "log" / "tensorboard")).Reload()
    assert [e.step for e in events.Scalars("train/total_loss")] == [2, 3, 4, 6]  # 1-based, as the log
    assert [e.step for e in events.Scalars("eval/top-1-acc")] == [3, 6]
    assert "train/images_per_sec" in events.Tags()["scalars"]


def _event_points(run_dir):
    """(tag, step) -> how many values the run's event files hold, read from the files themselves."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    points = {}
    for path in sorted((run_dir / "tensorboard").glob("*tfevents*")):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                key = (value.tag, event.step)
                points[key] = points.get(key, 0) + 1
    return points


def _steps(points, tag):
    return sorted(step for t, step in points if t == tag)


def test_tensorboard_one_point_per_step_and_tag_before_and_after_a_resume(cub_root, tmp_path, monkeypatch):
    """Interrupted at iteration 7 (checkpoint at 4), resumed: every (tag, step) once in the event files,
    the open-set curves' last point is the final evaluation, and every log names one 1-based iteration."""
    import json

    from semilearn.algorithms.fixmatch import FixMatch

    step = FixMatch.train_step
    calls = {"n": 0}

    @functools.wraps(step)  # USB reads train_step's signature
    def interrupt_at_step_8(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 8:  # iterations 1-7 done and logged, the checkpoint is iteration 4's
            raise KeyboardInterrupt
        return step(self, *a, **k)

    monkeypatch.setattr(FixMatch, "train_step", interrupt_at_step_8)
    argv = tiny_run_argv(cub_root, str(tmp_path), "r", iters=10, num_eval_iter=4, num_log_iter=2)
    assert train.cli(argv) == 130
    run = tmp_path / "r"
    before = _event_points(run)
    assert all(n == 1 for n in before.values()), {k: n for k, n in before.items() if n > 1}
    assert _steps(before, "train/total_loss") == [2, 4, 6]
    assert _steps(before, "test_open/unknown_recall") == [4]
    assert safe_load(str(run / "latest_model.pth"))["it"] == 4

    monkeypatch.setattr(FixMatch, "train_step", step)
    assert train.cli(argv + ["--resume", "true"]) == 0
    after = _event_points(run)
    assert all(n == 1 for n in after.values()), {k: n for k, n in after.items() if n > 1}
    assert _steps(after, "train/total_loss") == [2, 4, 6, 8, 10]  # step 6 logged again, once
    assert _steps(after, "eval/top-1-acc") == [4, 8, 10]
    for tag in ("test_open/unknown_recall", "test_open/auroc", "test_open/fpr95"):
        assert _steps(after, tag) == [4, 8, 10], tag  # one calibration per step: the final one at 10
    # TensorBoard itself (which also honours the resumed writer's purge_step) sees the same
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard")).Reload()
    recall = acc.Scalars("test_open/unknown_recall")
    assert [e.step for e in recall] == [4, 8, 10]
    metrics = json.loads((run / "openset_metrics.json").read_text())
    assert recall[-1].value == pytest.approx(metrics["unknown_recall"], abs=1e-6)

    # one iteration convention: "best ... at it N" in the log and the result eval/best_it
    messages = _messages((run / "log.txt").read_text())
    best = {int(m) for line in messages for m in re.findall(r"\(best [\d.]+ at it (\d+)\)", line)}
    results = [line for line in messages if line.startswith("result eval/best_it: ")]
    assert len(best) == 1 and results and {int(line.split(": ")[1]) for line in results} == best
    assert best <= {4, 8, 10}  # an evaluation iteration, 1-based
    assert any(m.startswith("training fixmatch for 10 iterations (from iteration 5, ") for m in messages)


def test_trim_events_keeps_steps_up_to_the_checkpoint(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    from usb_cfsg.engine.tblog import trim_events

    tb = tmp_path / "tensorboard"
    writer = SummaryWriter(str(tb))
    for s in range(1, 8):
        writer.add_scalar("a", float(s), s)
    writer.close()
    writer = SummaryWriter(str(tb))  # a second file with only later steps: removed entirely
    writer.add_scalar("a", 9.0, 9)
    writer.close()
    assert len(list(tb.glob("*tfevents*"))) == 2
    assert trim_events(str(tb), 4) == 4
    assert _steps(_event_points(tmp_path), "a") == [1, 2, 3, 4]
    assert len(list(tb.glob("*tfevents*"))) == 1 and not list(tb.glob(".trim-*"))
    assert trim_events(str(tb), 4) == 0 and trim_events(str(tmp_path / "missing"), 4) == 0


def test_resumed_writer_file_sorts_after_the_old_ones_when_resumed_within_the_same_second(tmp_path):
    """TensorBoard reads event files in name order (``events.out.tfevents.<seconds>.<host>.<pid>.<n>``).
    A resume in the second its old file was opened used to give a file that could sort first (the
    counter n sorts as text, "10" before "9"), so the resumed points came before the old ones. The old
    file is named here with the next second, the worst case, so the test does not depend on timing."""
    import socket
    import time

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    from usb_cfsg.engine.tblog import open_tb_log

    tb = tmp_path / "run" / "tensorboard"
    first = SummaryWriter(str(tb))
    for s in (2, 4, 6):
        first.add_scalar("a", float(s), s)
    first.close()
    (old,) = tb.glob("*tfevents*")
    renamed = tb / f"events.out.tfevents.{int(time.time()) + 1:010d}.{socket.gethostname()}.{os.getpid()}.9"
    old.rename(renamed)
    tb_log = open_tb_log(str(tmp_path / "run"), enabled=True, resume_step=4)
    for s in (6, 8):
        tb_log.writer.add_scalar("a", float(s), s)
    tb_log.writer.close()
    files = sorted(p.name for p in tb.glob("*tfevents*"))
    assert len(files) == 2 and files[0] == renamed.name
    acc = EventAccumulator(str(tb)).Reload()
    assert [e.step for e in acc.Scalars("a")] == [2, 4, 6, 8]


def test_format_hms_and_compact_line():
    assert format_hms(3725.2) == "1:02:05" and format_hms(0) == "0:00:00" and format_hms(float("nan")) == "?"
    line = compact_line(
        25,
        500,
        {
            "train/sup_loss": 0.9,
            "train/unsup_loss": 0.3345,
            "train/total_loss": 1.2345,
            "train/util_ratio": 0.5,
            "lr": 1e-3,
            "train/images_per_sec": 45.23,
            "train/eta_min": 3.2,
        },
    )
    assert line == "it 25/500 | loss 1.2345 (sup 0.9000, unsup 0.3345) | lr 1.00e-03 | 45.2 img/s | ETA 0:03:12"


class _Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_throughput_and_eta_exclude_evaluation_time():
    clock = _Clock()
    timer = ThroughputHook(smoothing=0.0, clock=clock)  # no smoothing: the last step's time
    end = StepEndHook(timer)
    logger = CompactLoggingHook(timer, clock=clock)
    alg = types.SimpleNamespace(
        args=types.SimpleNamespace(batch_size=4, uratio=1, world_size=1),
        it=0,
        num_train_iter=10,
        device=torch.device("cpu"),
        log_dict={},
        optimizer=types.SimpleNamespace(param_groups=[{"lr": 0.1}]),
    )
    timer.before_run(alg)
    for it, evaluation in ((0, 0.0), (1, 30.0), (2, 0.0)):
        alg.it, alg.log_dict = it, {}
        clock.t += 0.5  # data wait
        timer.before_train_step(alg)
        clock.t += 1.5  # forward, backward, optimizer
        timer.after_train_step(alg)
        clock.t += evaluation  # EvaluationHook and CheckpointHook run here
        if evaluation:
            assert logger.clock() - timer.compute_end == pytest.approx(30.0)  # logged as evaluation time
        end.after_train_step(alg)
        assert alg.log_dict["train/prefetch_time"] == pytest.approx(0.5)
        assert alg.log_dict["train/images_per_sec"] == pytest.approx(8 / 2.0)
        assert alg.log_dict["train/eta_min"] * 60 == pytest.approx((10 - it - 1) * 2.0)


def test_num_workers_capped_to_the_cpus_with_one_notice(monkeypatch, caplog):
    from argparse import Namespace

    from usb_cfsg.engine.launch import cap_num_workers
    from usb_cfsg.engine.plugin import loader_workers

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    args = Namespace(num_workers=4)
    with caplog.at_level("INFO", logger="usb_cfsg"):
        cap_num_workers(args)
    assert args.num_workers == 2 and loader_workers(2 * args.num_workers) == 2
    assert len([r for r in caplog.records if "num_workers 4: 2 CPUs available" in r.getMessage()]) == 1
    args = Namespace(num_workers=1)
    cap_num_workers(args)
    assert args.num_workers == 1 and math.isclose(loader_workers(2), 2)


def test_ctrl_c_says_which_checkpoint_survived_and_how_to_resume(cub_root, tmp_path, capsys, monkeypatch):
    from semilearn.algorithms.fixmatch import FixMatch

    step = FixMatch.train_step
    calls = {"n": 0}

    @functools.wraps(step)  # USB reads train_step's signature
    def interrupt_at_step_3(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:  # after the checkpoint of iteration 2
            raise KeyboardInterrupt
        return step(self, *a, **k)

    monkeypatch.setattr(FixMatch, "train_step", interrupt_at_step_3)
    monkeypatch.setattr(sys, "argv", ["train.py"])  # as the user typed it
    argv = tiny_run_argv(cub_root, str(tmp_path), "r", iters=4, num_eval_iter=2, use_tensorboard="false")
    capsys.readouterr()
    assert train.cli(argv) == 130
    err = capsys.readouterr().err.strip().splitlines()
    run = tmp_path / "r"
    assert "Traceback" not in "\n".join(err) and "KeyboardInterrupt" not in "\n".join(err)
    it = safe_load(str(run / "latest_model.pth"))["it"]
    assert err[-1].startswith(
        f"interrupted: this run's last checkpoint is {run / 'latest_model.pth'} (saved at iteration {it}, "
    )
    resume = err[-1].split("resume with: ")[1]
    assert resume == f"{python_command()} --c {run / 'config.yaml'} --resume true; iterations after {it} run again"
    resume = resume.split(";")[0]
    monkeypatch.setattr(FixMatch, "train_step", step)
    assert train.cli(resume.split()[2:]) == 0  # the printed command resumes
    assert safe_load(str(run / "latest_model.pth"))["it"] == 4
    # before any checkpoint: says so
    assert train.interrupted(None).startswith("interrupted before the run started")
