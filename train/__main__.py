"""python -m train [hydra overrides], or under torchrun for several processes.

Before Hydra runs anything, the overrides are checked (an unknown key, also one added with `+`,
is one `error:` line naming it), and with -m every sweep point is composed and checked, values
included, so that a bad point stops the sweep before its first run. A multirun prints a header
per point and a summary at the end, keeps going past a failed point, and records every point in
the sweep directory's sweep_index.json (train/sweep.py).
"""

from __future__ import annotations

import os
import sys

from train.signals import stop_at_once_on_signals

stop_at_once_on_signals()  # before the imports below, which take seconds: a signal then still gives exit 75

from train.cli import STOPPED, RunStopped, exit_code, leave_stopped, message  # noqa: E402
from train.cluster import launcher_job  # noqa: E402
from train.config import (  # noqa: E402
    CONF_DIR,
    check_config,
    compose_config,
    compose_sweep,
    register_resolvers,
    with_config_dir,
)
from train.dist import placement_from_env  # noqa: E402
from train.metrics import SWEEP_ENV  # noqa: E402
from train.sweep import Point, SweepIndex, header, summary, sweep_directory  # noqa: E402


class Multirun:
    """The points of a `-m` launch, composed up front; filled by preflight, used by each job."""

    points: list[Point] = []
    index: SweepIndex | None = None


def preflight(argv: list[str]) -> None:
    from hydra._internal.utils import get_args_parser

    args = get_args_parser().parse_args(argv)
    if args.help or args.hydra_help or args.info or args.shell_completion:
        return
    overrides = with_config_dir(args.overrides, args.config_dir) if args.config_dir else args.overrides
    if args.multirun:
        points = compose_sweep(overrides, placement_from_env().world_size)
        Multirun.points = [Point(point, cfg) for point, cfg in points]
        os.environ.setdefault(SWEEP_ENV, sweep_directory(Multirun.points).name)  # the runs' W&B group
        if placement_from_env().rank == 0:
            Multirun.index = SweepIndex(Multirun.points, ["python -m train", *argv])
    else:
        cfg = compose_config(overrides)
        if args.cfg is None:
            check_config(cfg, placement_from_env().world_size)


def main() -> None:
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import DictConfig, OmegaConf

    from train.loop import train

    @hydra.main(version_base=None, config_path=str(CONF_DIR), config_name="config")
    def run(cfg: DictConfig) -> None:
        config = OmegaConf.to_container(cfg, resolve=True)
        if HydraConfig.get().mode != RunMode.MULTIRUN:
            code = exit_code(lambda: train(config) and None)  # the run directory is not an exit code
            if code == STOPPED:
                leave_stopped()
            if code:
                sys.exit(code)
            return
        number = HydraConfig.get().job.num
        point = Multirun.points[number]
        with launcher_job(os.environ):  # in a submitit job: its ranks, a requeue when stopped (train/cluster.py)
            index = Multirun.index if placement_from_env().rank == 0 else None
            if index:
                print(header(number + 1, len(Multirun.points), point), flush=True)
                point.status = "running"
                index.update(point)
            try:
                train(config)
                point.status = "done"
            except (ValueError, OSError) as err:  # the run's one-line error; the sweep goes on
                point.status, point.error = "failed", message(err).splitlines()[0]
                print(f"error: {point.error}", file=sys.stderr, flush=True)
            except RunStopped as err:
                point.status, point.error = "stopped", message(err)
                raise
            finally:
                if index:
                    index.update(point)

    code = exit_code(lambda: preflight(sys.argv[1:]))
    if code:
        sys.exit(code)
    register_resolvers()
    run()
    if Multirun.points and Multirun.index is not None:
        Multirun.index.refresh(Multirun.points)  # a launcher's jobs ran the points in other processes
        print(summary(Multirun.points, Multirun.index), flush=True)
    if any(point.status == "failed" for point in Multirun.points):
        sys.exit(1)


if __name__ == "__main__":
    main()
