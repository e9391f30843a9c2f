"""Shared fixtures: one Ray runtime per session, a tiny digits teacher, quiet settings for speed."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path


def _isolated_home() -> str:
    """A HOME of the suite's own, set before anything imports Ray.

    Ray 2.60 keeps token authentication on: `ray.init` starts its cluster in token mode and writes the token to
    ~/.ray/auth_token. The suite's token lives under this temporary HOME (never the developer's), every
    subprocess the tests start inherits it through the environment, and it is removed when the session ends.
    Caches stay where they were (XDG_CACHE_HOME), so matplotlib and torch do not rebuild theirs every session.
    """
    real_home = Path.home()
    home = tempfile.mkdtemp(prefix="kd-study-test-home-")
    os.environ.setdefault("XDG_CACHE_HOME", str(real_home / ".cache"))
    os.environ["HOME"] = home
    atexit.register(shutil.rmtree, home, ignore_errors=True)
    return home


TEST_HOME = _isolated_home()
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

import pytest  # noqa: E402  (after HOME is set: nothing below may see the developer's)
import torch  # noqa: E402

torch.set_num_threads(2)

pytest_plugins = ["tests.s3_servers"]


@pytest.fixture(scope="session")
def ray_session():
    """A real local Ray runtime shared by every test that needs one (start-up costs ~5-8 s)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def digits_teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small digits teacher trained once per session (resnet8, a few epochs, > 90% test accuracy)."""
    from study.config import TeacherSpec
    from study.orchestrate.teacher_training import train_teacher

    out = tmp_path_factory.mktemp("teacher")
    train_teacher(TeacherSpec(arch="resnet8", epochs=12, batch_size=64, lr=0.1), str(out))
    return out
