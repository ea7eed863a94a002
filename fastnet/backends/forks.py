"""Whether this process is a fork of one whose numba thread pool had started (a prediction's
parallel blocks, fastnet's parallel kernels, a user's ``parallel=True`` function): GNU OpenMP
terminates such a child at its first parallel launch, so fastnet launches none there. Noted
by a fork handler registered when ``fastnet`` is imported (``fastnet.backends`` imports this),
before any fork it must see."""

from __future__ import annotations

import os
import sys

_forked_after_launch = False


def _note_fork_in_child() -> None:
    global _forked_after_launch
    pool = sys.modules.get("numba.np.ufunc.parallel")  # (not imported: never started)
    started = pool is not None and getattr(pool, "_is_initialized", True)
    _forked_after_launch = _forked_after_launch or bool(started)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_note_fork_in_child)


def forked_after_numba_launch() -> bool:
    """True in a (grand)child forked after numba's threads started in a parent."""
    return _forked_after_launch
