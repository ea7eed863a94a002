"""After a real install, fastnet.kernels imports and no top-level `kernels` module exists; the
sdist holds the whole source tree its tests and docs need; the docstrings' examples run."""

import doctest
import importlib
import os
import shutil
import subprocess
import sys
import tarfile
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


@pytest.mark.slow
def test_wheel_installs_with_core_dependencies_only(tmp_path):
    """The built wheel (distribution fastnet-mlp) installs into a fresh venv pulling only
    numpy and tqdm, ships py.typed, fastnet.kernels and fastnet.bench but no results, and trains
    on the numpy backend."""
    import zipfile

    wheel_dir = tmp_path / "dist"
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(wheel_dir),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = wheel_dir.glob("fastnet_mlp-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "fastnet/py.typed" in names and "fastnet/kernels/numba_cpu.py" in names
    assert "fastnet/bench/suites.py" in names
    assert not [n for n in names if "results" in n or n.startswith(("kernels/", "bench/"))]
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", str(wheel)],
        capture_output=True,
        text=True,
    )
    assert install.returncode == 0, install.stderr[-2000:]
    listing = subprocess.run(
        [str(python), "-m", "pip", "list", "--format=json"], capture_output=True, text=True
    )
    installed = {p["name"].lower() for p in __import__("json").loads(listing.stdout)}
    installed -= {"pip", "setuptools", "wheel"}
    assert installed <= {"fastnet-mlp", "fastnet_mlp", "numpy", "tqdm", "colorama"}, installed
    code = (
        "import numpy as np, fastnet as fn\n"
        "r = np.random.default_rng(0); X = r.standard_normal((300, 6)).astype('float32')\n"
        "y = (X[:, 0] > 0).astype(int)\n"
        "m = fn.Sequential([fn.Dense(16, 'relu'), fn.Dense(2)], backend='numpy', seed=0)\n"
        "m.fit(X, y, epochs=40, verbose=0)\n"
        "print(round(m.evaluate(X, y)['accuracy'], 1) >= 0.9, fn.__version__)\n"
    )
    run = subprocess.run([str(python), "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert run.stdout.split() == ["True", __import__("fastnet").__version__], run.stderr


@pytest.mark.slow
def test_sdist_holds_what_its_tests_and_docs_need(tmp_path):
    """Every file git tracks (the tests' conftest, CUDA emulator and MPI worker, ARCHITECTURE.md
    that README links, the Makefile, .ci, the bench scripts and results) is in the sdist."""
    code = "import sys; from setuptools.build_meta import build_sdist; build_sdist(sys.argv[1])"
    build = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, capture_output=True, text=True
    )
    assert build.returncode == 0, build.stderr[-2000:]
    (sdist,) = tmp_path.glob("fastnet_mlp-*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = {n.partition("/")[2] for n in tar.getnames()}
    needed = {
        *(f"tests/{n}" for n in ("conftest.py", "capture_backend.py", "emulated_cupy.py")),
        *(f"tests/{n}" for n in ("cuda_emulator.py", "cuda_emulator.h", "fake_cublaslt.cpp")),
        *("tests/mpi_worker.py", "tests/test_data.py", "bench/gpu_run.sh", "bench/cpu_run.sh"),
        *("ARCHITECTURE.md", "Makefile", ".ci/run", "README.md", "LICENSE", "pyproject.toml"),
    }
    assert needed <= names, sorted(needed - names)
    if (ROOT / ".git").exists() and shutil.which("git"):
        listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
        tracked = set(listed.stdout.splitlines())
        assert tracked and tracked <= names, sorted(tracked - names)
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]


def _modules_with_examples() -> list[str]:
    """The library's modules (fastnet/, kernels/ as fastnet.kernels, bench/ as fastnet.bench)
    whose source holds a ``>>>`` example."""
    names = []
    for folder in ("fastnet", "kernels", "bench"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if ">>>" in path.read_text():
                parts = list(path.relative_to(ROOT).with_suffix("").parts)
                parts = parts if folder == "fastnet" else ["fastnet", *parts]
                names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def test_docstring_examples_run_under_doctest(capsys):
    """Each ``>>>`` example runs as written: its imports and data in the example itself."""
    modules = _modules_with_examples()
    assert {"fastnet.model", "fastnet.builders", "fastnet.backends.report"} <= set(modules)
    for name in modules:
        result = doctest.testmod(importlib.import_module(name), report=False)
        assert result.failed == 0, f"{name}: {capsys.readouterr().out}"
        assert result.attempted > 0
