"""What a SLURM job must give each process for Lightning to place it on a GPU."""

import os
import re

import torch
from lightning.fabric.plugins.environments import SLURMEnvironment

from ae_lightning.errors import ConfigError


def check_gpu_binding(accelerator: str | None) -> None:
    """Refuses, in one line, a SLURM job whose processes each see fewer GPUs than the node runs processes.

    Lightning puts the process of local rank r on GPU r of those it sees. A cluster that binds one GPU to
    each task (`--gpus-per-task`, or a site default) shows each process one GPU, numbered 0, so local rank 1
    would find no GPU 1, after the job waited in the queue. scripts/slurm/train.sbatch runs srun with
    `--gpu-bind=none`, which shows every process all the GPUs of its node.
    """
    if accelerator == "cpu" or not SLURMEnvironment.detect():
        return
    tasks = re.match(r"\d+", os.environ.get("SLURM_NTASKS_PER_NODE", "1"))
    tasks_per_node = int(tasks[0]) if tasks else 1
    visible = torch.cuda.device_count()
    if 0 < visible < tasks_per_node:
        raise ConfigError(
            f"SLURM runs {tasks_per_node} processes on this node but shows this one {visible} GPU(s), and "
            "Lightning puts local rank r on GPU r: let every process see all the node's GPUs (srun "
            "--gpu-bind=none, as scripts/slurm/train.sbatch does; ask for them with --gpus-per-node, not "
            "--gpus-per-task)"
        )
