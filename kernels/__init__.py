"""Hot-path kernels as pure array functions, installed as ``fastnet.kernels``.

``numba_cpu`` (imports numba) and ``cupy_gpu`` (imports cupy) are loaded only by their backends.
"""
