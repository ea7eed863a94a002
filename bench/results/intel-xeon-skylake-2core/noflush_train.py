"""20 epochs of `fastnet train --backend numba` with the subnormal flush disabled (tiny = 0):
the A/B partner of the normal run, to show the flush does not change accuracy."""
import sys
import numpy as np
import fastnet.backends.numba_backend as nb

class _F:
    def __init__(self, dtype): self.tiny = 0.0
nb.np = type("np_shim", (), {k: getattr(np, k) for k in dir(np) if not k.startswith("__")})
nb.np.finfo = _F
from fastnet.cli import main
sys.exit(main(sys.argv[1:]))
