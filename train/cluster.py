"""A sweep point inside a job of Hydra's submitit launcher (`python -m train -m
hydra/launcher=submitit_slurm ...`, or `submitit_local`): its ranks, and its requeue when preempted.

Ranks are the job's tasks (`hydra.launcher.tasks_per_node`, `hydra.launcher.nodes`): srun starts
one process per rank, and each exports its rank, world size, local rank and rendezvous address as
torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), so that
train/dist.py stays their only reader and a job trains as a torchrun launch does.

Preemption: SIGTERM, and submitit's own signal (SIGUSR2, sent `hydra.launcher.signal_delay_s`
before the time limit and on preemption), ask the run to stop at the next step boundary after a
checkpoint, as SIGTERM does under torchrun (train/signals.py); before the steps they stop the point
at once, with nothing half-written. A stopped point (exit 75's RunStopped) then requeues its job
through submitit, which runs the same point again: it resumes from its newest checkpoint.
submitit is imported only inside a job (the `cluster` extra).
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from train.cli import RunStopped, message

# submitit sets it in every job process; nowhere else. (Its name is submitit's, not ours.)
SUBMITIT_JOB = "SUBMITIT_FOLDER"


def in_launcher_job(environ: dict[str, str]) -> bool:
    return SUBMITIT_JOB in environ


def _stop_requested(signum: int, frame: FrameType | None) -> None:
    """During the steps, hand the request to the run's StopSignals (a checkpoint at the next step
    boundary); before them, stop now."""
    steps_handler = signal.getsignal(signal.SIGTERM)
    if callable(steps_handler) and steps_handler is not _stop_requested:
        steps_handler(signal.SIGTERM, frame)
        return
    raise RunStopped(f"{signal.Signals(signum).name} before the training steps, with no run state half-written")


@contextmanager
def launcher_job(environ: dict[str, str]) -> Iterator[None]:
    """For one sweep point's training inside a submitit job: the job's ranks exported, preemption
    signals turned into a stop at a step boundary, and a stop into a requeue of the job (submitit
    exits the process then). Outside a job (`environ`, the process's environment, says), nothing."""
    if not in_launcher_job(environ):
        yield
        return
    import submitit

    job = submitit.JobEnvironment()
    if job.num_tasks > 1:
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    preemption = job._usr_sig()  # submitit's signal (SUBMITIT_PREEMPT_SIGNAL, USR2 by default)
    requeue = signal.getsignal(preemption)  # submitit's handler: resubmit this point, requeue, exit
    previous = {sig: signal.signal(sig, _stop_requested) for sig in (signal.SIGTERM, preemption)}
    try:
        yield
    except RunStopped as err:
        print(f"stopped: {message(err)}; requeueing the job", file=sys.stderr, flush=True)
        requeue(preemption, None)  # rank 0 requeues the job and exits; other ranks return and end
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
