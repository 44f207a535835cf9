"""scripts/slurm/train.sbatch on a real SLURM cluster: 2 DDP tasks, preempted with SIGUSR1, requeued and
resumed. Skipped when there is no `sbatch` or no cluster answers; `.ci/run` starts one (slurm-up.sh)."""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import CONFIGS, REPO, VAL_SIZE, read_png, write_tiny_dataset

SBATCH = REPO / "scripts" / "slurm" / "train.sbatch"


def _cluster_answers() -> bool:
    if shutil.which("sbatch") is None:
        return False
    try:
        sinfo = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return any(state in sinfo.stdout for state in ("idle", "mixed", "allocated"))


#: set by .ci/run once it has started a cluster: there, a missing cluster is a failure, not a skip
REQUIRED = os.environ.get("AE_LIGHTNING_REQUIRE_SLURM") == "1"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.slurm,
    pytest.mark.skipif(not REQUIRED and not _cluster_answers(), reason="no SLURM cluster answers"),
]


def job_state(job: str) -> str:
    """PENDING, RUNNING, ... or "" once the job has left the queue (no sacct here: squeue forgets it).

    A busy controller makes squeue fail with an empty output, which must not read as "finished": that
    misreading once ended a CI run's wait early, and the test cancelled the requeued job before it restarted.
    """
    command = ["squeue", "-h", "-j", job, "-o", "%T"]
    for _ in range(10):
        squeue = subprocess.run(command, capture_output=True, text=True, timeout=30)
        if squeue.returncode == 0:
            return squeue.stdout.strip()
        if "Invalid job id" in squeue.stderr:
            return ""
        time.sleep(1)
    raise AssertionError(f"squeue kept failing: {squeue.stderr.strip()}")


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(1)


def test_sbatch_trains_two_ranks_and_resumes_after_requeue(tmp_path: Path) -> None:
    data = write_tiny_dataset(tmp_path / "data")
    env = {
        **os.environ, "PYTHON": sys.executable, "CLI": str(REPO / "cli.py"), "PYTHONPATH": str(REPO),
        "PYTHONWARNINGS": "ignore",
    }  # fmt: skip
    submitted = subprocess.run(
        ["sbatch", "--parsable", f"--chdir={tmp_path}", "--ntasks-per-node=2", str(SBATCH),
         str(CONFIGS / "ae.yaml"), f"--data.data_dir={data}", f"--data.val_size={VAL_SIZE}",
         "--data.batch_size=12", "--trainer.max_epochs=3", "--trainer.accelerator=cpu",
         "--trainer.enable_progress_bar=false",
         # slow enough to be signalled mid-run: 3 steps per epoch (2 ranks x 12 of 72 images)
         '--trainer.callbacks+={"class_path": "tests.callbacks.SlowDown", "init_args": {"seconds": 0.4}}'],
        env=env, capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    job = submitted.stdout.strip().split(";")[0]
    log = tmp_path / f"slurm-{job}.out"
    try:
        # both ranks training, then what SLURM sends 90 s before the time limit
        both_ranks = lambda: log.is_file() and log.read_text().count("Setting signal handlers") == 2  # noqa: E731
        wait_for(both_ranks, 120, "the 2 ranks")
        time.sleep(2)
        subprocess.run(["scancel", "--signal=USR1", job], check=True, timeout=30)
        wait_for(lambda: "restart 1" in log.read_text() or job_state(job) == "PENDING", 120, "the requeue")

        # a requeued job waits ~2 minutes before it may start again; a test need not (asked again while it
        # pends: an update sent while the old step still completes may not hold)
        def restarted() -> bool:
            if "restart 1" in log.read_text():
                return True
            if job_state(job) in ("PENDING", "REQUEUED", "REQUEUE_HOLD"):
                # a busy controller may hold a requeued job: release it, and let it start now
                subprocess.run(["scontrol", "release", job], timeout=30, capture_output=True)
                subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], timeout=30)
            return False

        wait_for(restarted, 480, "the requeued job to start")
        finished = lambda: job_state(job) == "" and not time.sleep(2) and job_state(job) == ""  # noqa: E731
        wait_for(finished, 240, "the requeued job to finish")
    finally:
        subprocess.run(["scancel", job], timeout=30)
    output = log.read_text()
    for expected in (
        "GLOBAL_RANK: 0, MEMBER: 1/2",
        "GLOBAL_RANK: 1, MEMBER: 2/2",
        f"Requeuing SLURM job: {job}",
        f"job {job} (restart 1)",
        f"Restored all states from the checkpoint at runs/slurm/{job}/hpc_ckpt_1.ckpt",
        "`Trainer.fit` stopped: `max_epochs=3` reached.",
    ):
        assert expected in output, output[-3000:]
    run = tmp_path / "runs" / "ae"
    assert [p.name for p in run.iterdir()] == [f"job_{job}"]  # the requeued job went on in its folder
    last = run / f"job_{job}" / "checkpoints" / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 9
    assert read_png(last.with_suffix(".png")).shape[0] == 3
