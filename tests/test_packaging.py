"""After a real install, fastnet.kernels imports and no top-level `kernels` module exists."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_installed_layout(tmp_path):
    target = tmp_path / "site"
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    assert (target / "fastnet" / "kernels" / "numba_cpu.py").exists()
    assert not (target / "kernels").exists()
    code = (
        "import importlib.util, fastnet, fastnet.kernels, sys;"
        "assert fastnet.__file__.startswith(sys.argv[1]), fastnet.__file__;"
        "assert importlib.util.find_spec('kernels') is None;"
        "assert not any(m.split('.')[0] in ('numba', 'cupy') for m in sys.modules);"
        "print('ok')"
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    run = subprocess.run(
        [sys.executable, "-c", code, str(target)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert run.stdout.strip() == "ok", run.stderr
