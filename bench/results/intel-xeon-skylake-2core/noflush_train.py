"""20 epochs of ``fastnet train --backend numba`` with the subnormal flush switched off
(``tiny = 0`` in the update kernels): the A/B partner of ``train-numba.log``.

    python bench/results/intel-xeon-skylake-2core/noflush_train.py train --backend numba \\
        --epochs 20 --verbose 2
"""

import sys
import types

import numpy as np

import fastnet.backends.numba_backend as numba_backend
from fastnet.cli import main


class _NoTiny:
    def __init__(self, dtype: object) -> None:
        self.tiny = 0.0


shim = types.SimpleNamespace(**{k: getattr(np, k) for k in dir(np) if not k.startswith("__")})
shim.finfo = _NoTiny
numba_backend.np = shim  # type: ignore[assignment]

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
