"""Run the real `onegate` command in a subprocess, as an operator would."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

ONEGATE = [sys.executable, "-m", "onegate"]

Run = Callable[..., subprocess.CompletedProcess[str]]


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ONEGATE_")}
    env.update(extra or {})
    return env


@pytest.fixture
def onegate() -> Run:
    def run(
        *args: str, env: Mapping[str, str] | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*ONEGATE, *args],
            capture_output=True,
            text=True,
            env=clean_env(env),
            timeout=timeout,
            check=False,
        )

    return run


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"
