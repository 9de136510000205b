"""train.py resumes from a checkpoint, and stops (never restarts silently) on one it cannot load."""

import pytest
from conftest import cpu_training_supported, fixmatch_config, run_train

pytestmark = pytest.mark.skipif(not cpu_training_supported(), reason="needs a GPU or semilearn's CPU support")


def test_resume_continues_and_a_bad_checkpoint_stops_the_run(semi_aves_root, tmp_path):
    runs = tmp_path / "runs"
    proc = run_train(fixmatch_config(tmp_path / "a.yaml", semi_aves_root, runs))
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = runs / "fixmatch" / "latest_model.pth"
    proc = run_train(
        fixmatch_config(tmp_path / "b.yaml", semi_aves_root, runs, num_train_iter=4, resume=True, load_path=str(ckpt))
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"Resumed from {ckpt}" in proc.stderr + proc.stdout

    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    proc = run_train(fixmatch_config(tmp_path / "c.yaml", semi_aves_root, runs, resume=True, load_path=str(bad)))
    assert proc.returncode != 0 and f"cannot resume from {bad}" in proc.stderr
    assert bad.read_bytes() == b"not a checkpoint"
