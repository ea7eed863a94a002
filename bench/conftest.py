"""pytest-benchmark suites: `pytest bench/` (not part of `make test`). For interleaved,
ratio-based comparisons in one process use `fastnet bench` / `make bench`."""

import pytest

from fastnet.backends import get_backend, probe


def _params():
    out = []
    for name in ("numpy", "numba", "cupy"):
        info = probe(name)
        marks = [] if info.available else [pytest.mark.skip(reason=f"{name}: {info.reason}")]
        out.append(pytest.param(name, marks=marks, id=name))
    return out


@pytest.fixture(params=_params())
def backend(request):
    return get_backend(request.param)


def timed(benchmark, backend, fn, rounds=20):
    """Benchmark ``fn`` with warm-up excluded and the device synchronized inside the timing."""

    def run():
        fn()
        backend.synchronize()

    run()  # warm-up: JIT compile / kernel build / cuBLAS handle
    return benchmark.pedantic(run, rounds=rounds, iterations=1, warmup_rounds=2)
