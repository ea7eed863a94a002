"""Run under ``mpirun -n K`` by tests/test_distributed.py (not collected by pytest).

mpi_worker.py train BACKEND DTYPE OUT.npz [mpi|nccl]  data-parallel fit; rank 0 saves weights
mpi_worker.py kill                          rank 1 dies (SIGKILL) in the second epoch
mpi_worker.py raise                         rank 1 raises in the second epoch
mpi_worker.py output                        verbose fit: epoch lines come from rank 0 only
mpi_worker.py syncbn ROWS BATCH OUT.npz [compiled] [local]  a synchronized (local: not)
                                            BatchNorm model; rank 0 saves its state
mpi_worker.py captured ROWS plain|batchnorm [POLICY]  captured data-parallel steps equal eager
                                            ones (POLICY: mixed_float16, loss scaling included)
mpi_worker.py agree FOLDER                  checkpoints into new folders, one stop (from an
                                            epoch or a batch hook), one set of BatchNorm
                                            statistics, the same data on every rank
"""

import os
import signal
import sys
import warnings

import numpy as np

import fastnet as fn
from fastnet import distributed as dist


def problem(dtype="float32"):
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((4, 12)) * 3
    y = rng.integers(0, 4, 300)
    X = (centers[y] + rng.standard_normal((300, 12))).astype(dtype)
    return X, y


def bn_model(backend="numpy", synchronized=True):
    layers = [  # no bias before a batch norm: its gradient, exactly 0, is rounding noise
        fn.Dense(16, use_bias=False, initializer="xavier"),  # (He: batches of 2 amplify
        fn.BatchNorm1d(momentum=0.8, synchronized=synchronized),  # rounding past 1e-7)
        fn.ReLU(),
        fn.Dense(8, "tanh"),
        fn.BatchNorm1d(synchronized=synchronized),
        fn.Dense(4),
    ]
    return fn.Sequential(layers, optimizer=fn.Adam(1e-2), backend=backend, dtype="float64", seed=3)


def model(backend="numpy", dtype="float32", optimizer=None):
    layers = [fn.Dense(16, "relu"), fn.Dense(8, "tanh"), fn.Dense(4)]
    return fn.Sequential(
        layers, optimizer=optimizer or fn.Adam(1e-2), backend=backend, dtype=dtype, seed=3
    )


FIT = dict(epochs=3, batch_size=64)


class At(fn.Callback):
    def __init__(self, action):
        self.action = action

    def on_epoch_end(self, model, epoch, logs):
        if epoch == 1 and dist.rank() == 1:
            self.action()
        return False


def validation(X, y):
    """Weighted validation rows (an odd count: the ranks' slices differ in size)."""
    return X[:51], y[:51], np.linspace(0.5, 2.0, 51)


def main(mode, *args):
    train = mode == "train"
    comm = args[3] if train and len(args) > 3 else "mpi"
    dist.init(comm, backend="cupy" if train and args[0] == "cupy" else None)
    if train:
        backend, dtype, out = args[:3]
        X, y = problem(dtype)
        m = model(backend, dtype)
        h = m.fit(X, y, validation_data=validation(X, y), verbose=0, distributed=True, **FIT)
        if dist.is_main():
            arrays = {f"p{i}": m.backend.to_numpy(p.value) for i, p in enumerate(m.parameters())}
            vals = {k: h[k] for k in ("val_loss", "val_accuracy", "val_f1")}
            np.savez(out, loss=h["loss"], **vals, **arrays)
    elif mode in ("kill", "raise", "interrupt", "exit"):
        X, y = problem()

        def die():
            if mode == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            if mode == "interrupt":
                raise KeyboardInterrupt  # Ctrl-C reaching one rank
            if mode == "exit":
                sys.exit(3)  # a callback's sys.exit, a SIGTERM handler's
            raise ValueError("a failure on rank 1")

        try:
            model().fit(X, y, epochs=50, verbose=0, distributed=True, callbacks=[At(die)])
        except KeyboardInterrupt:  # caught, as the CLI does (the other rank waited for ever)
            pass
    elif mode == "every-rank":  # errors all ranks raise alike: raised, not the job aborted
        X, y = problem()
        one_rank = [fn.EarlyStopping(patience=5, min_delta=10)] if dist.rank() == 1 else []
        cases = [
            (ValueError, dict(compiled=True)),
            # (SGD(1e30) stayed finite on an Intel Xeon model 207: saturated tanh, no NaN)
            (fn.TrainingDivergedError, dict(optimizer=fn.SGD(1e38), on_divergence="raise")),
            (RuntimeError, dict(callbacks=one_rank, validation_data=(X, y))),
        ]
        for error, kw in cases:
            m = model()
            if "optimizer" in kw:
                m.optimizer = kw.pop("optimizer")
            try:
                m.fit(X, y, epochs=3, verbose=0, distributed=True, **kw)
            except error as exc:
                print(f"raised {type(exc).__name__} rank {dist.rank()}: {exc}", flush=True)
            else:
                raise AssertionError(f"{kw} did not raise")
    elif mode == "refused-on-one-rank":  # a capture reason of rank 1's own (its GPU's probe)
        from capture_backend import CaptureSimBackend

        class OwnReason(CaptureSimBackend):
            def plan_capture_reason(self, plan):
                return "rank 1's GPU lacks an algorithm" if dist.rank() == 1 else ""

        X, y = problem()
        for compiled in (True, "auto"):
            m = model(OwnReason())
            try:
                m.fit(X, y, epochs=1, verbose=0, distributed=True, compiled=compiled)
            except ValueError as exc:
                print(f"refused rank {dist.rank()}: {exc}", flush=True)
            else:
                print(f"trained rank {dist.rank()}: {m.step_description}", flush=True)
    elif mode == "features":  # dropout, batch norm, momentum, per-layer optimizer, numba
        X, y = problem()
        layers = [
            fn.Dense(32),
            fn.BatchNorm1d(),
            fn.ReLU(),
            fn.Dropout(0.2),
            fn.Dense(4, optimizer=fn.RMSProp(1e-3)),
        ]
        m = fn.Sequential(
            layers, optimizer=fn.Momentum(0.05, nesterov=True), backend=args[0], seed=1
        )
        h = m.fit(
            X, y, epochs=4, batch_size=32, verbose=0, distributed=True, validation_data=(X, y)
        )
        weights = np.concatenate([m.backend.to_numpy(p.value).ravel() for p in m.parameters()])
        total = weights.copy()
        dist.allreduce(total)  # identical weights on every rank: sum == world * weights
        assert np.allclose(total, dist.world_size() * weights, rtol=1e-6, atol=1e-6)
        assert h["val_accuracy"][-1] > 0.8, h
        print(f"features ok rank {dist.rank()} {h['val_accuracy'][-1]:.3f}", flush=True)
    elif mode == "captured":  # the all-reduce inside captured steps (CPU capture semantics)
        from capture_backend import CaptureSimBackend

        rows, norm = int(args[0]), args[1] == "batchnorm"
        dtype = args[2] if len(args) > 2 else "float64"
        X, y = problem("float32" if dtype.startswith("mixed") else dtype)
        weights, backend, replays = [], CaptureSimBackend(), 0
        # mixed: a third run whose rank 1 starts from other weights and loss scale, which the
        # broadcast at the start of fit replaces (half copies included)
        for compiled in (False, True) + ((True,) if dtype.startswith("mixed") else ()):
            layers = [fn.Dense(16, "relu"), fn.Dropout(0.2), fn.Dense(8, "relu"), fn.Dense(4)]
            if norm:
                layers[1:1] = [fn.BatchNorm1d()]
            m = fn.Sequential(layers, backend=backend, dtype=dtype, seed=3)
            if m.loss_scaler is not None:  # the first steps overflow: skipped on every rank
                m.loss_scaler.state[:] = [2.0**22, 0]
                m.loss_scaler.growth_interval = 3
            if len(weights) == 2 and dist.rank() == 1:
                m.build(X.shape[1])
                state = m.host_state()
                m.set_state({k: v * 1.5 if k[0] in "pa" else v for k, v in state.items()})
            m.fit(
                X[:rows],
                y[:rows],
                epochs=3,
                batch_size=64,
                verbose=0,
                distributed=True,
                compiled=compiled,
                sample_weight=np.linspace(0.5, 1.5, rows),
            )
            weights.append(np.concatenate([g.values for g in m.arena.groups]))
            replays = backend.replays if len(weights) == 2 else replays  # one captured fit's
        assert m.step_description.startswith("captured graph, data-parallel"), m.step_description
        for other in weights[1:]:
            np.testing.assert_allclose(other, weights[0], rtol=1e-12, atol=1e-14)
        total = weights[1].astype(np.float64)
        dist.allreduce(total)  # identical weights on every rank
        assert np.allclose(total, dist.world_size() * weights[1], rtol=1e-12, atol=1e-14)
        if m.loss_scaler is not None:
            assert m.loss_scaler.scale < 2.0**22 and m.arena.groups[0].step < 3 * 4, m.arena
        print(f"captured ok rank {dist.rank()} replays {replays}", flush=True)
    elif mode == "syncbn":  # K ranks with synchronized BatchNorm train as one process
        from capture_backend import CaptureSimBackend

        rows, batch, out = int(args[0]), int(args[1]), args[2]
        compiled = "compiled" in args[3:]
        X, y = problem("float64")
        m = bn_model(CaptureSimBackend() if compiled else "numpy", "local" not in args[3:])
        fit = dict(epochs=FIT["epochs"], batch_size=batch, distributed=True)
        h = m.fit(X[:rows], y[:rows], verbose=0, compiled="auto" if compiled else False, **fit)
        if compiled:  # captured on every rank, or (fewer rows than ranks) on none
            graphed = m.step_description.startswith("captured graph, data-parallel")
            assert graphed == (batch >= dist.world_size()), m.step_description
        if dist.is_main():
            np.savez(out, loss=h["loss"], **m.host_state())
    elif mode == "agree":  # what the ranks must agree on, however their callbacks differ
        folder = args[0]
        X, y = problem()
        m = bn_model(synchronized=False)  # each rank's running statistics of its own rows
        save = fn.ModelCheckpoint(os.path.join(folder, "new", "deeper", "b-{epoch}.npz"), "loss")
        halt = lambda epoch, logs: dist.rank() == 0 and epoch == 1  # noqa: E731  rank 0 only
        h = m.fit(X, y, epochs=5, batch_size=64, verbose=0, distributed=True,
                  validation_data=(X[:90], y[:90]), callbacks=[save, halt])  # fmt: skip
        assert len(h["loss"]) == 2, h  # every rank stopped where rank 0 did
        state = np.concatenate([v.ravel() for k, v in m.host_state().items() if "buffer" in k])
        total = state.copy()
        dist.allreduce(total)  # one model on every rank: its statistics included
        assert np.allclose(total, dist.world_size() * state, rtol=1e-12), "buffers differ"
        own = m.evaluate(X[:90], y[:90])["loss"]
        assert abs(own - h["val_loss"][-1]) < 1e-9, (own, h["val_loss"])

        class HaltInBatch(fn.Callback):  # Keras's stop_training from a batch, on rank 0
            def on_train_batch_end(self, batch, logs=None):
                if dist.rank() == 0 and batch == 2:
                    self.model.stop_training = True

        class HaltAtBegin(fn.Callback):  # on_batch_begin only: after that batch too
            def on_train_batch_begin(self, batch, logs=None):
                if dist.rank() == 0 and batch == 2:
                    self.model.stop_training = True

        for hooks in ([HaltInBatch()], [HaltInBatch()] if dist.rank() == 0 else [],
                      [HaltAtBegin()]):  # fmt: skip
            m2 = model()
            h = m2.fit(X, y, epochs=3, batch_size=64, verbose=0, distributed=True, callbacks=hooks)
            count = np.array([len(hooks)])
            dist.allreduce(count)
            everywhere = count[0] == dist.world_size()
            assert len(h["loss"]) == 1, h  # every rank stops in epoch 1 (batch hooks on
            # every rank: after the batch; on some: at the epoch's end)
            assert m2.rows_trained == (192 if everywhere else len(X)), m2.rows_trained
        big = X[:64, :3].copy()  # rank 0's rows of each batch overflow its BatchNorm variance
        big[np.arange(64) % 16 < 8, 2] = np.where(np.arange(32) % 2, 1e20, -1e20)
        norm = fn.Sequential([fn.BatchNorm1d(), fn.Dense(4, "relu"), fn.Dense(2)], seed=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            norm.fit(big, y[:64] % 2, epochs=3, batch_size=16, shuffle=False, verbose=0,
                     distributed=True)  # fmt: skip
        assert norm.diverged, norm.stop_reason  # every rank stopped (rank 1 waited forever)
        for other in (X[: 290 + dist.rank()], X + dist.rank()):  # other rows on rank 1
            try:
                m.fit(other, y[: len(other)], epochs=1, verbose=0, distributed=True)
                raise AssertionError("different data trained")
            except ValueError as exc:
                assert "the ranks' data differ" in str(exc), exc
        print(f"agree ok rank {dist.rank()}", flush=True)
    elif mode == "mismatch":  # models, settings and small data that differ between ranks
        X, y = problem()
        r = dist.rank()

        def refused(match, **kw):
            try:
                kw.pop("net", model()).fit(**{"X": X, "y": y, "epochs": 2, "verbose": 0, **kw})
            except (ValueError, RuntimeError) as exc:
                assert match in str(exc), exc
                return
            raise AssertionError(f"not refused: {match}")

        refused("ranks' ['epochs'] differ", epochs=2 + r, distributed=True)
        way = "raise" if r else "restore"  # (one rank raising, the other restoring: a hang)
        refused("ranks' ['on_divergence'] differ", on_divergence=way, distributed=True)
        refused(
            "ranks' ['model'] differ",
            net=fn.Sequential([fn.Dense(4 + r)], seed=0),
            distributed=True,
        )
        small = X[:40] if r == 0 else X[:40][::-1]  # the same rows in another order
        refused("the ranks' data differ", X=small, y=y[:40], distributed=True)
        seen = []
        batch_end = lambda m, b, logs: seen.append(logs["loss"])  # noqa: E731
        cb = type("B", (fn.Callback,), {"on_batch_end": staticmethod(batch_end)})()
        h = model().fit(X, y, epochs=1, verbose=0, distributed=True, callbacks=[cb])
        assert abs(seen[-1] - h["loss"][0]) < 1e-9, (seen[-1], h["loss"])  # the global loss
        logged = []  # a batch callback on rank 0 only: batch logs without the loss, no hang
        alone = type(
            "A", (fn.Callback,), {"on_batch_end": lambda s, m, b, logs: logged.append(logs)}
        )
        model().fit(
            X,
            y,
            epochs=np.int64(1) if r else 1,
            verbose=0,
            distributed=True,
            callbacks=[alone()][: 1 - r],
        )  # fmt: skip  (epochs: equal, other types)

        class Quiet(fn.ReLU):  # no name of its own: not saved, but trains data-parallel
            pass

        fn.Sequential([fn.Dense(4), Quiet(), fn.Dense(4)], seed=0).fit(
            X, y, epochs=1, verbose=0, distributed=True
        )
        assert r or (logged and "loss" not in logged[-1]), logged[-1:]
        print(f"mismatch ok rank {r}", flush=True)
        lower = fn.LearningRateScheduler(lambda e, lr: lr / 2)  # on rank 0 only: the job ends
        model().fit(X, y, epochs=2, verbose=0, distributed=True, callbacks=[lower][: 1 - r])
    elif mode == "output":
        X, y = problem()
        model().fit(X, y, epochs=2, verbose=2, distributed=True, batch_size=64)
        print(f"done rank {dist.rank()}", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
