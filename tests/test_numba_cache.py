"""Numba kernels are cached on disk; concurrent first runs share a cache without corrupting it."""

import os
import subprocess
import sys

import pytest

from fastnet.backends import probe

pytestmark = pytest.mark.skipif(not probe("numba").available, reason="numba unavailable")

SCRIPT = """
import numpy as np, fastnet as fn
be = fn.get_backend("numba")
x = np.random.default_rng(0).standard_normal((64, 10)).astype(np.float32)
loss, d = be.softmax_xent(x, np.arange(64) % 10)
ref_loss, ref_d = fn.get_backend("numpy").softmax_xent(x, np.arange(64) % 10)
assert np.allclose(d, ref_d, atol=1e-6), "wrong result"
print(be.k.softmax_xent.stats.cache_hits)
"""


@pytest.mark.slow
def test_concurrent_processes_share_one_cache(tmp_path):
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cache")}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", SCRIPT],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    assert any(f.endswith(".nbi") for _, _, files in os.walk(tmp_path / "cache") for f in files)
    again = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() not in ("", "Counter()"), "the kernel was not loaded from cache"
