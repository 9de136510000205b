"""Where the comparison runner's runs execute, and what each run leaves behind for ``--collect``.

Every (row, seed) run is one ``python -m usb_cfsg.cli.train`` process in the runner's working folder, started
either by the runner itself (``--launcher local``: subprocesses of this machine, ``--jobs`` at a time) or as its
own job through `submitit <https://github.com/facebookincubator/submitit>`_ (``--launcher submitit``): a SLURM job
array (``--cluster slurm``, the options of :func:`slurm_parameters`), or submitit's local executor
(``--cluster local``: real subprocess jobs on this machine, to try a grid before a cluster).

Whichever launcher runs it, a run writes ``logs/<run>.status.json`` next to its log: ``submitted``
(job id) when its job is queued, ``running`` (host, process id, job id) when it starts, and ``done``
or ``failed`` (exit status) when the training process ends; a job stopped by SIGTERM (``scancel``, the
time limit, preemption) writes ``failed`` before it exits. :func:`run_state` turns that file and the run
folder into ``finished``, ``running``, ``failed`` or ``missing``; a run whose status says ``running``
or ``submitted`` but whose process or job is gone (a node lost, ``kill -9``) counts as failed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import signal
import socket
import subprocess
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from usb_cfsg.errors import ConfigError

logger = logging.getLogger("usb_cfsg")

#: SLURM job states of a job that is queued or running (sacct, through submitit)
ACTIVE_SLURM_STATES = frozenset(
    {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "SUSPENDED", "RESIZING", "UNKNOWN"}
)


def status_path(log_file: Path) -> Path:
    """``logs/<run>.status.json`` of the run logging to ``logs/<run>.log``."""
    return log_file.with_suffix(".status.json")


def write_status(path: Path, **fields: Any) -> None:
    """Replace the status file atomically with ``fields`` and the current time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps({**fields, "time": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=1), encoding="utf-8")
    os.replace(tmp, path)


def read_status(path: Path) -> Optional[Dict[str, Any]]:
    """The status file's fields; None when there is none (or it cannot be read)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def last_line(path: Path) -> str:
    """The log's last error line (``error:`` or a Python ``...Error``), else its last line; '' without a log."""
    try:
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    errors = [ln for ln in lines if ln.startswith("error:") or "Error" in ln]
    return (errors or lines or [""])[-1][:300]


def _job_id() -> Optional[str]:
    """The scheduler's id of the job this process runs in (SLURM array task or plain job), if any."""
    if os.environ.get("SLURM_ARRAY_JOB_ID"):
        return f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ.get('SLURM_ARRAY_TASK_ID', '0')}"
    return os.environ.get("SLURM_JOB_ID")


def run_command(
    cmd: Sequence[str], log_file: str, metrics_file: str, cwd: str, env: Optional[Mapping[str, str]] = None
) -> Dict[str, Any]:
    """Run one training command with its output in ``log_file`` and its status file beside it.

    The function a submitit job runs (its arguments are plain values, so it pickles by reference).
    In a process's main thread (a submitit job), SIGTERM (``scancel``, the time limit, preemption) is
    passed on to the training process, whose run then counts as failed, and recorded before the process exits.

    Args:
        cmd: The command (``compare.train_command``: interpreter, ``-m usb_cfsg.cli.train``, arguments).
        log_file: Where its stdout and stderr go.
        metrics_file: The run's ``openset_metrics.json``: a run is done when it exits 0 and this exists.
        cwd: Working directory.
        env: Environment of the command (default: this process's).

    Returns:
        The final status: ``state`` (done | failed), ``exit``, ``seconds`` and ``log``.
    """
    log, status = Path(log_file), status_path(Path(log_file))
    log.parent.mkdir(parents=True, exist_ok=True)
    host, start = socket.gethostname(), time.time()
    queued = {k: v for k, v in (read_status(status) or {}).items() if k in ("cluster", "folder", "job_id")}
    job = dict(queued, host=host, job_id=_job_id() or queued.get("job_id"))  # submit()'s, if it wrote it first
    write_status(status, state="running", pid=os.getpid(), **job)
    with open(log, "w", encoding="utf-8") as out:
        out.write("$ " + shlex.join(cmd) + "\n")
        out.flush()
        proc = subprocess.Popen(list(cmd), stdout=out, stderr=subprocess.STDOUT, cwd=cwd, env=dict(env or os.environ))

        def terminated(signum: int, frame: Any) -> None:
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
            reason = "terminated by SIGTERM (scancel, the time limit or preemption)"
            write_status(status, state="failed", exit=-signum, reason=reason, **job)
            raise SystemExit(128 + signum)

        # a job's process (its main thread) records SIGTERM; the local launcher's threads cannot catch signals,
        # and a runner killed with its runs leaves "running" statuses whose process is gone (failed runs)
        main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, terminated) if main else None
        try:
            code = proc.wait()
        finally:
            if main:
                signal.signal(signal.SIGTERM, previous)
    done = code == 0 and Path(metrics_file).is_file()
    final = dict(state="done" if done else "failed", exit=code, seconds=round(time.time() - start, 1), log=str(log))
    write_status(status, **job, **final)
    return final


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


def _slurm_state(folder: str, job_id: str) -> str:
    """sacct's state of a SLURM job (through submitit), ``UNKNOWN`` when it cannot be asked."""
    try:
        from submitit.slurm.slurm import SlurmJob

        return str(SlurmJob(folder=folder, job_id=job_id).state).split()[0]
    except Exception as exc:  # sacct missing or failing: the caller treats the job as alive
        logger.debug("sacct state of job %s: %s", job_id, exc)
        return "UNKNOWN"


def _alive(status: Mapping[str, Any]) -> Tuple[bool, str]:
    """Whether the process or job a ``submitted``/``running`` status names still exists, and which it is.

    A process of this host is looked up by its id; a SLURM job through sacct (an unknown state, e.g. no
    sacct, counts as alive); anything else cannot be checked from here and counts as alive.
    """
    state, host, here = status.get("state"), status.get("host"), socket.gethostname()
    job_id, folder = status.get("job_id"), status.get("folder")
    if state == "running" and host == here and status.get("pid") is not None:
        pid = int(status["pid"])
    elif status.get("cluster") == "slurm" and job_id and folder:
        slurm = _slurm_state(str(folder), str(job_id))
        return slurm in ACTIVE_SLURM_STATES, f"SLURM job {job_id} {slurm}"
    elif state == "submitted" and status.get("cluster") == "local" and host == here and job_id:
        pid = int(job_id)  # submitit's local executor: the job id is its controller's process id
    else:
        return True, f"job {job_id} on {host}"
    alive = _pid_alive(pid)
    return alive, f"process {pid} on {host}" + ("" if alive else " is gone")


def run_state(finished: bool, why: str, log_file: Path) -> Tuple[str, str]:
    """``finished`` | ``running`` | ``failed`` | ``missing`` of one run, and the detail to show.

    Args:
        finished: The run folder holds this configuration's results (compare.is_finished).
        why: Why it is not finished (compare.is_finished's reason).
        log_file: The run's log (its status file lies beside it).
    """
    if finished:
        return "finished", ""
    status = read_status(status_path(log_file))
    tail = last_line(log_file)
    if status is None:
        if log_file.is_file():  # a run of a runner that wrote no status file
            return "failed", f"log {log_file}: {tail}"
        return "missing", "never started"
    state = status.get("state")
    if state in ("submitted", "running"):
        alive, where = _alive(status)
        if alive:
            return "running", f"{state} ({where}, since {status.get('time')})"
        return "failed", f"{state} but its {where}, ended without a status (killed?); log {log_file}: {tail or '-'}"
    if state == "failed":
        reason = status.get("reason") or f"exit {status.get('exit')}"
        return "failed", f"{reason}; log {log_file}: {tail}"
    return "missing", f"ran, but {why}"  # done before, its config or results changed since


# ------------------------------------------------------------------------------------------ submitit
def add_launcher_options(parser: argparse.ArgumentParser) -> None:
    """The runner's options of where runs execute (``--launcher`` ...) and of ``--collect``."""
    g = parser.add_argument_group("launcher (README 'Comparisons'; docs/cluster.md for SLURM)")
    g.add_argument(
        "--launcher",
        choices=("local", "submitit"),
        default="local",
        help="local: subprocesses of this machine (--jobs at a time); submitit: one job per run",
    )
    g.add_argument(
        "--cluster",
        choices=("slurm", "local"),
        default="slurm",
        help="submitit's executor: slurm (sbatch job array) or local (subprocess jobs on this machine)",
    )
    g.add_argument("--partition", default=None, help="SLURM partition (default: the cluster's)")
    g.add_argument("--gpus_per_job", type=int, default=1, help="GPUs of each job (default 1)")
    g.add_argument("--cpus_per_job", type=int, default=8, help="CPUs of each job (default 8; loader workers)")
    g.add_argument("--time_min", type=int, default=24 * 60, help="time limit of each job in minutes (default 1440)")
    g.add_argument("--array_parallelism", type=int, default=32, help="jobs of the array running at once (default 32)")
    g.add_argument(
        "--sbatch",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help='extra #SBATCH options, e.g. --sbatch account=myproj qos=high "constraint=a100|h100"',
    )
    g.add_argument(
        "--setup",
        nargs="*",
        default=[],
        metavar="LINE",
        help='shell lines each job runs first, e.g. --setup "module load cuda" "source venv/bin/activate"',
    )
    g.add_argument("--wait", action="store_true", help="submitit: wait for the jobs, then write the results")
    g.add_argument("--print_sbatch", action="store_true", help="print the sbatch script of the grid; submit nothing")
    g.add_argument(
        "--collect",
        action="store_true",
        help="run nothing: write results.md/.csv/figures from the finished runs and list the others",
    )


def sbatch_options(pairs: Sequence[str]) -> Dict[str, str]:
    """``["account=x", "qos=y"]`` -> ``{"account": "x", "qos": "y"}`` (``--`` prefixes dropped).

    Raises:
        ConfigError: a pair without ``=``.
    """
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip().lstrip("-")
        if not sep or not key:
            raise ConfigError(f"--sbatch {pair!r}: expected KEY=VALUE, e.g. account=myproject or qos=high")
        out[key] = value
    return out


def slurm_parameters(opts: argparse.Namespace, name: str) -> Dict[str, Any]:
    """submitit's SLURM parameters of every job of the grid (the names of ``submitit.SlurmExecutor``).

    Raises:
        ConfigError: a count below its minimum.
    """
    for key, low in (("gpus_per_job", 0), ("cpus_per_job", 1), ("time_min", 1), ("array_parallelism", 1)):
        if getattr(opts, key) < low:
            raise ConfigError(f"--{key} must be >= {low}, got {getattr(opts, key)}")
    params: Dict[str, Any] = dict(
        job_name=name,
        time=int(opts.time_min),
        nodes=1,
        ntasks_per_node=1,
        cpus_per_task=int(opts.cpus_per_job),
        array_parallelism=int(opts.array_parallelism),
        signal_delay_s=120,
        setup=list(opts.setup),
    )
    if opts.gpus_per_job:
        params["gpus_per_node"] = int(opts.gpus_per_job)
    if opts.partition:
        params["partition"] = opts.partition
    extra = sbatch_options(opts.sbatch)
    if extra:
        params["additional_parameters"] = extra
    return params


def sbatch_script(opts: argparse.Namespace, folder: Path, name: str, num_jobs: int) -> str:
    """The sbatch script submitit writes for the grid's job array of ``num_jobs`` runs."""
    from submitit.slurm.slurm import _make_sbatch_string

    command = " ".join([shlex.quote(os.environ.get("PYTHON", "python")), "-u -m submitit.core._submit", str(folder)])
    return _make_sbatch_string(command=command, folder=folder, map_count=num_jobs, **slurm_parameters(opts, name))


@contextmanager
def _python_path(root: str) -> Iterator[None]:
    """PYTHONPATH starting with ``root`` (the runner's working folder) while jobs are submitted (local and SLURM
    jobs inherit it), so that a job's process imports usb_cfsg and usb_cfsg_tools as the runner did."""
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = root + (os.pathsep + old if old else "")
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old


def submit(
    opts: argparse.Namespace,
    specs: Sequence[Dict[str, Any]],
    folder: Path,
    name: str,
    root: str,
) -> List[Any]:
    """Submit one job per spec (the keyword arguments of :func:`run_command`) through submitit.

    Each spec's status file says ``submitted`` with its job id before this returns.

    Args:
        opts: The runner's options (``--cluster`` and the SLURM options).
        specs: One dict of :func:`run_command`'s arguments per run.
        folder: submitit's folder (its pickles and job logs).
        name: The job name.
        root: The runner's working folder, put first on the jobs' PYTHONPATH.

    Returns:
        submitit's jobs, in the order of ``specs``.
    """
    import submitit

    executor = submitit.AutoExecutor(folder=str(folder), cluster=opts.cluster)
    if opts.cluster == "slurm":
        params = slurm_parameters(opts, name)
        executor.update_parameters(**{f"slurm_{k}": v for k, v in params.items()})
    else:  # submitit's local executor: every job starts at once, on this machine's CPUs (and GPUs)
        executor.update_parameters(timeout_min=int(opts.time_min), gpus_per_node=int(opts.gpus_per_job), name=name)
    for spec in specs:  # the previous attempt's outcome: replaced by "submitted", then by the job's own
        status_path(Path(spec["log_file"])).unlink(missing_ok=True)
    with _python_path(root):
        jobs = executor.map_array(
            run_command,
            [s["cmd"] for s in specs],
            [s["log_file"] for s in specs],
            [s["metrics_file"] for s in specs],
            [s["cwd"] for s in specs],
            [s["env"] for s in specs],
        )
    host = socket.gethostname()
    for spec, job in zip(specs, jobs):
        status = status_path(Path(spec["log_file"]))
        if read_status(status) is None:  # the job has not started yet (it writes "running" when it does)
            write_status(
                status, state="submitted", job_id=str(job.job_id), cluster=opts.cluster, folder=str(folder), host=host
            )
    return jobs


def wait(jobs: Sequence[Any]) -> None:
    """Wait until every job has ended (their outcome is in the status files)."""
    for job in jobs:
        job.wait()
