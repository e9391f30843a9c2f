"""Shared fixtures: one Ray runtime per session, a tiny digits teacher, quiet settings for speed."""

from __future__ import annotations

import os

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

from pathlib import Path

import pytest
import torch

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
    from study.teacher import train_teacher

    out = tmp_path_factory.mktemp("teacher")
    train_teacher(TeacherSpec(arch="resnet8", epochs=12, batch_size=64, lr=0.1), str(out))
    return out
