"""A non-editable install (`pip install .`) carries its Hydra configs: training runs from anywhere."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import micro_overrides

REPO = Path(__file__).resolve().parent.parent


def test_a_non_editable_install_trains_from_another_directory(micro_shards, tmp_path):
    # A copy of the source, so that the build leaves nothing in the checkout; a venv that sees this
    # environment's packages (its pip and setuptools too: --without-pip), so nothing is downloaded.
    source = tmp_path / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".git", "runs", "build", "*.egg-info", "__pycache__"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    install = [python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index", str(source)]
    subprocess.run(install, check=True, capture_output=True)
    shutil.rmtree(source)  # the installed copy must not need the source tree
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}

    where = subprocess.run(
        [python, "-c", "import train.config as c; print(c.CONF_DIR)"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert Path(where.stdout.strip()).is_relative_to(venv)

    run = tmp_path / "run"
    done = subprocess.run(
        [python, "-m", "train", *micro_overrides(micro_shards, "train.steps=2", f"out_dir={run}")],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (run / "checkpoints" / "step_0000002").is_dir()
