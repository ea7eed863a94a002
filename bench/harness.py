"""Benchmark harness: contestants timed interleaved in one process (A B C A B C ...), several
rounds, median and spread, per-round ratios to a reference. Warm-up (JIT compile, cuBLAS
handles, caches) runs before the first timed round and is reported separately."""

from __future__ import annotations

import dataclasses
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Contestant:
    """``run()`` does the work once; ``elapsed(run)`` times it (GPU backends use CUDA events)."""

    name: str
    run: Callable[[], Any]
    elapsed: Callable[[Callable[[], Any]], float] | None = None
    flops: float | None = None  # work per run, to report GFLOP/s
    describe: Callable[[], str] | None = None  # what ran, read after timing (step_description)
    prepare: Callable[[], Any] | None = None  # untimed, before each run (state reset)
    #: the last run's return value as the epoch's mean training loss (alike work reads alike)
    loss: Callable[[Any], float] | None = None


@dataclass
class Result:
    name: str
    times: list[float]
    warmup_s: float
    flops: float | None = None
    ratios: list[float] = field(default_factory=list)  # per round, to the reference
    loss: float | None = None  # the last timed run's mean training loss (Contestant.loss)

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def spread(self) -> tuple[float, float]:
        return min(self.times), max(self.times)

    @property
    def ratio(self) -> float | None:
        return statistics.median(self.ratios) if self.ratios else None

    @property
    def gflops(self) -> float | None:
        return self.flops / self.median / 1e9 if self.flops else None

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(
            median=self.median,
            min=self.spread[0],
            max=self.spread[1],
            ratio=self.ratio,
            gflops=self.gflops,
        )
        return d


def wall_elapsed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


#: ``interleaved``'s settle for CPU contestants: OpenBLAS's threads spin about 0.1 s after a call
CPU_SETTLE_S = 0.3
#: the same for ``--quick`` runs (a smoke test of small epochs, no result: CI's time counts)
QUICK_SETTLE_S = 0.02


def interleaved(
    contestants: list[Contestant],
    rounds: int = 7,
    reference: str | None = None,
    warmup: int = 1,
    failed: dict[str, str] | None = None,
    settle: float = 0.0,
) -> list[Result]:
    """Time every contestant once per round, rotating the order each round so no contestant
    always runs first. ``reference`` names the contestant ratios are taken against. A contestant
    that raises is dropped (its error into ``failed``, by name) and the others go on.
    ``settle``: seconds (untimed) before each timed run, so thread pools that spin after their
    work (OpenBLAS's, ONNX Runtime's, XLA's) stop taking cores from the next contestant: spent
    busy on this thread, not asleep (on the 2-core AMD EPYC VM, 0.3 s asleep made the next
    epoch 1.5-1.9x slower; busy, the rounds' order stops mattering)."""
    failed = {} if failed is None else failed
    live: list[tuple[Contestant, Result]] = []
    kept: dict[str, Any] = {}
    contestants = [_keeping_return(c, kept) for c in contestants]
    for c in contestants:
        timer = c.elapsed or wall_elapsed
        start = time.perf_counter()
        try:
            for _ in range(warmup):
                if c.prepare is not None:
                    c.prepare()
                timer(c.run)
        except Exception as exc:
            _drop(c.name, exc, failed)
            continue
        live.append((c, Result(c.name, [], time.perf_counter() - start, c.flops)))
    for r in range(rounds):
        k = r % max(1, len(live))
        for c, res in live[k:] + live[:k]:
            if c.name not in failed:
                try:
                    if c.prepare is not None:
                        c.prepare()
                    _busy(settle)
                    res.times.append((c.elapsed or wall_elapsed)(c.run))
                except Exception as exc:
                    _drop(c.name, exc, failed)
    for c, res in live:
        if c.loss is not None and c.name in kept and c.name not in failed:
            res.loss = float(c.loss(kept[c.name]))
    results = [res for c, res in live if c.name not in failed]
    ref = next((res for res in results if res.name == reference), None)
    if ref is not None:
        for res in results:
            res.ratios = [t / rt for t, rt in zip(res.times, ref.times)]
    return results


def _keeping_return(c: Contestant, kept: dict[str, Any]) -> Contestant:
    """``c`` with a ``run`` that keeps its return value in ``kept`` (where ``c.loss`` reads
    it): one assignment an epoch, converted after the rounds."""
    if c.loss is None:
        return c
    run = c.run

    def keeping() -> None:
        kept[c.name] = run()

    return dataclasses.replace(c, run=keeping)


def _busy(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def _drop(name: str, exc: Exception, failed: dict[str, str]) -> None:
    failed[name] = f"{type(exc).__name__}: {exc}"
    print(f"{name} dropped: {failed[name]}", flush=True)


def cpu_name() -> str:
    """The CPU as ``lscpu`` names it, with its family and model ("AMD EPYC (family 25 model 1)":
    a virtual machine's model name alone hides which generation it is)."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        return platform.processor() or "unknown CPU"
    name = fields.get("model name") or platform.processor() or "unknown CPU"
    if "cpu family" in fields and "model" in fields:
        name += f" (family {fields['cpu family']} model {fields['model']})"
    return name


def machine_info() -> dict[str, Any]:
    """CPU model, cores, BLAS, GPU (if cupy sees one) and library versions."""
    import numpy as np

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "cores": os.cpu_count(),
    }
    info["cpu"] = cpu_name()
    from fastnet._version import __version__

    info["fastnet"] = __version__
    info["threads"] = {k: os.environ.get(k, "") for k in ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS")}
    try:
        cfg = np.show_config(mode="dicts")
        blas = cfg.get("Build Dependencies", {}).get("blas", {})
        info["blas"] = f"{blas.get('name')} {blas.get('version')}"
    except Exception:
        info["blas"] = "unknown"
    from fastnet.backends import backend_infos

    for b in backend_infos():
        info[f"backend_{b.name}"] = (
            f"{b.version} {b.device}".strip() if b.available else f"unavailable: {b.reason}"
        )
    return info


NOISY = 2.0  # a median this many times the minimum says the machine was busy
OUTLIER = 3.0  # and so does one round this many times the median


def format_table(results: list[Result], title: str = "") -> str:
    lines = [title] if title else []
    lines.append(
        f"{'contestant':<34} {'median':>10} {'min':>10} {'max':>10} {'ratio':>7} {'GFLOP/s':>8}"
    )
    for r in results:
        ratio = f"{r.ratio:.3f}" if r.ratio is not None else "-"
        gf = f"{r.gflops:.1f}" if r.gflops else "-"
        lines.append(
            f"{r.name:<34} {_fmt(r.median):>10} {_fmt(r.spread[0]):>10} "
            f"{_fmt(r.spread[1]):>10} {ratio:>7} {gf:>8}"
        )
    losses = [f"{r.name} {r.loss:.4f}" for r in results if r.loss is not None]
    if losses:  # (each from its own initial weights: alike, not equal)
        lines.append("mean training loss of the last timed epoch: " + ", ".join(losses))
    spread = [f"{r.name} {min(r.ratios):.2f}-{max(r.ratios):.2f}" for r in results if r.ratios]
    if len({len(r.times) for r in results}) == 1 and spread:
        lines.append(f"ratio per round ({len(results[0].times)} rounds): " + ", ".join(spread))
    noisy = [
        r.name
        for r in results
        if r.times and (r.median > NOISY * r.spread[0] or r.spread[1] > OUTLIER * r.median)
    ]
    if noisy:
        lines.append(
            f"noisy machine: a median over {NOISY:g}x the fastest round, or a round over "
            f"{OUTLIER:g}x the median, for "
            f"{', '.join(noisy)}; compare with care or rerun with more rounds"
        )
    return "\n".join(lines)


def _fmt(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.3f}s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.3f}ms"
    return f"{seconds * 1e6:.1f}us"
