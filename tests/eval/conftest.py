"""Fixtures of the eval tests: headless Chromium, for what a report page shows once its scripts have run."""

import shutil
import subprocess

import pytest

CHROMIUM = [
    "chromium",
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def chromium(tmp_path):
    """`chromium(*args)` -> what headless Chromium writes to stdout (`--dump-dom PAGE`: the page's DOM), with a
    profile of its own under tmp_path; the test skips where Chromium is not installed."""
    if shutil.which("chromium") is None:
        pytest.skip("chromium is not installed (Debian: apt-get install -y chromium)")

    def run(*args: str) -> str:
        done = subprocess.run(
            [*CHROMIUM, f"--user-data-dir={tmp_path / 'profile'}", *args], capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout

    return run
