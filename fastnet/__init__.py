"""fastnet: small, fast fully-connected neural networks on NumPy, Numba or CuPy.

Importing fastnet imports neither numba nor cupy; backends load on first use.
"""

from fastnet import gradcheck, metrics
from fastnet._version import __version__
from fastnet.backends import (
    Backend,
    BackendUnavailableError,
    available_backends,
    get_backend,
    record_kernels,
    set_backend,
    use_backend,
)
from fastnet.builders import mlp
from fastnet.callbacks import (
    Callback,
    CSVLogger,
    EarlyStopping,
    ModelCheckpoint,
    ReduceLROnPlateau,
    TerminateOnNaN,
)
from fastnet.checkpoint import CheckpointError
from fastnet.data import (
    DatasetError,
    load_fashion_mnist,
    load_mnist,
    minibatches,
    one_hot,
    read_idx,
    train_val_split,
)
from fastnet.initializers import Gaussian, He, Xavier
from fastnet.layers import (
    BatchNorm1d,
    Dense,
    Dropout,
    LeakyReLU,
    ReLU,
    Sigmoid,
    Softmax,
    Standardize,
    Tanh,
)
from fastnet.losses import (
    MeanSquaredError,
    Poisson,
    SigmoidBinaryCrossEntropy,
    SoftmaxCrossEntropy,
)
from fastnet.model import Sequential, StateError, load_model, save_model
from fastnet.optimizers import SGD, AdaGrad, Adam, AdamW, Momentum, Nesterov, RMSProp
from fastnet.schedules import CosineDecay, LearningRateScheduler, StepDecay, WarmupCosine
from fastnet.training import TrainingDivergedError

# The from-scratch notebooks' names for the same things (README: "From the notebooks to fastnet")
Affine = FC = Dense
Relu = ReLU
SoftmaxWithLoss = SoftmaxCrossEntropy
Adagrad, RMSprop = AdaGrad, RMSProp
SimpleInitializer, XavierInitializer, HeInitializer = Gaussian, Xavier, He

__all__ = [
    "SGD",
    "AdaGrad",
    "Adam",
    "AdamW",
    "Backend",
    "BackendUnavailableError",
    "BatchNorm1d",
    "Standardize",
    "CSVLogger",
    "Callback",
    "CheckpointError",
    "CosineDecay",
    "DatasetError",
    "Dense",
    "Dropout",
    "EarlyStopping",
    "LearningRateScheduler",
    "ModelCheckpoint",
    "ReduceLROnPlateau",
    "StepDecay",
    "TerminateOnNaN",
    "WarmupCosine",
    "Gaussian",
    "He",
    "LeakyReLU",
    "MLPClassifier",
    "MLPRegressor",
    "MeanSquaredError",
    "Poisson",
    "Momentum",
    "Nesterov",
    "RMSProp",
    "ReLU",
    "Sequential",
    "Sigmoid",
    "SigmoidBinaryCrossEntropy",
    "Softmax",
    "StateError",
    "SoftmaxCrossEntropy",
    "Tanh",
    "TrainingDivergedError",
    "Xavier",
    "__version__",
    "available_backends",
    "get_backend",
    "load_fashion_mnist",
    "metrics",
    "gradcheck",
    "load_mnist",
    "load_model",
    "one_hot",
    "read_idx",
    "record_kernels",
    "save_model",
    "set_backend",
    "use_backend",
    "minibatches",
    "mlp",
    "train_val_split",
    "Affine",
    "FC",
    "Relu",
    "SoftmaxWithLoss",
    "Adagrad",
    "RMSprop",
    "SimpleInitializer",
    "XavierInitializer",
    "HeInitializer",
]


#: submodules ``fastnet.<name>`` reaches without an import of its own (loaded on first use)
LAZY_SUBMODULES = ("datasets", "tabular", "export", "plot", "distributed", "estimator")


def __getattr__(name: str) -> object:
    """The estimators load on first use (they import scikit-learn when it is installed), and
    so do the submodules of ``LAZY_SUBMODULES`` (``fn.datasets.load_arrays``)."""
    if name in ("MLPClassifier", "MLPRegressor"):
        from fastnet import estimator

        return getattr(estimator, name)
    if name in LAZY_SUBMODULES:
        import importlib

        return importlib.import_module(f"fastnet.{name}")
    raise AttributeError(f"module 'fastnet' has no attribute {name!r}")
