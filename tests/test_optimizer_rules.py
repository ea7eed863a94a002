"""Optimizer trajectories against their published update rules (float64 NumPy written from the
papers / PyTorch documentation), and against PyTorch itself when it is installed: AdamW
(decoupled decay), global-norm clipping (``clip_grad_norm_``) and value clipping
(``clip_grad_value_``), on every backend, with biases left undecayed."""

import numpy as np
import pytest

import fastnet as fn

STEPS = 6


def _gradients(rng, scale=1.0):
    return [
        (rng.standard_normal((3, 4)) * scale, rng.standard_normal(4) * scale) for _ in range(STEPS)
    ]


def _fastnet_trajectory(backend, optimizer, W0, b0, grads):
    layer = fn.Dense(4)
    model = fn.Sequential([layer], optimizer=optimizer, backend=backend, dtype="float64")
    model.build(3)
    layer.W.value[...] = backend.asarray(W0)
    layer.b.value[...] = backend.asarray(b0)
    out = []
    for gW, gb in grads:
        layer.W.grad[...] = backend.asarray(gW)
        layer.b.grad[...] = backend.asarray(gb)
        model.apply_gradients()
        out.append((backend.to_numpy(layer.W.value).copy(), backend.to_numpy(layer.b.value).copy()))
    return out


def _reference_adamw(
    W0, b0, grads, lr, wd, clip_norm=None, clip_value=None, b1=0.9, b2=0.999, eps=1e-8
):
    """torch.optim.AdamW's documented algorithm, after clip_grad_norm_ / clip_grad_value_;
    decay on the weight matrix only (the bias is in a no-decay group)."""
    params = [W0.copy(), b0.copy()]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    out = []
    for t, gs in enumerate(grads, start=1):
        gs = [g.copy() for g in gs]
        if clip_norm is not None:
            total = np.sqrt(sum((g**2).sum() for g in gs))
            coef = clip_norm / (total + 1e-6)
            if coef < 1:
                gs = [g * coef for g in gs]
        if clip_value is not None:
            gs = [np.clip(g, -clip_value, clip_value) for g in gs]
        for i, (p, g) in enumerate(zip(params, gs)):
            if i == 0:
                p *= 1 - lr * wd
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            m_hat, v_hat = m[i] / (1 - b1**t), v[i] / (1 - b2**t)
            p -= lr * m_hat / (np.sqrt(v_hat) + eps)
        out.append((params[0].copy(), params[1].copy()))
    return out


def _reference_sgd_clipped(W0, b0, grads, lr, clip_norm=None, clip_value=None, wd=0.0):
    params = [W0.copy(), b0.copy()]
    out = []
    for gs in grads:
        gs = [g.copy() for g in gs]
        if clip_norm is not None:
            coef = clip_norm / (np.sqrt(sum((g**2).sum() for g in gs)) + 1e-6)
            gs = [g * min(coef, 1.0) for g in gs]
        if clip_value is not None:
            gs = [np.clip(g, -clip_value, clip_value) for g in gs]
        gs[0] = gs[0] + wd * params[0]
        for p, g in zip(params, gs):
            p -= lr * g
        out.append((params[0].copy(), params[1].copy()))
    return out


@pytest.mark.parametrize(
    "clip", [{}, {"clip_norm": 0.5}, {"clip_value": 0.3}, {"clip_norm": 0.5, "clip_value": 0.3}]
)
def test_adamw_matches_its_published_rule(backend, clip):
    rng = np.random.default_rng(0)
    W0, b0 = rng.standard_normal((3, 4)), rng.standard_normal(4)
    grads = _gradients(rng, scale=2.0)
    got = _fastnet_trajectory(backend, fn.AdamW(0.01, weight_decay=0.1, **clip), W0, b0, grads)
    want = _reference_adamw(W0, b0, grads, 0.01, 0.1, **clip)
    for (gW, gb), (wW, wb) in zip(got, want):
        np.testing.assert_allclose(gW, wW, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(gb, wb, rtol=1e-12, atol=1e-12)


def test_adam_with_eps_hat_matches_keras_and_scikit_learn(backend):
    """eps_hat: the step size is bias-corrected, eps is added to the uncorrected sqrt(v)
    (scikit-learn's AdamOptimizer, Keras's Adam); tiny gradients make eps matter."""
    rng = np.random.default_rng(3)
    W0, b0 = rng.standard_normal((3, 4)), rng.standard_normal(4)
    grads, lr, eps = _gradients(rng, scale=1e-7), 0.01, 1e-7
    got = _fastnet_trajectory(backend, fn.Adam(lr, eps=eps, eps_hat=True), W0, b0, grads)
    params, m, v = [W0.copy(), b0.copy()], [0.0, 0.0], [0.0, 0.0]
    for t, (gs, (gW, gb)) in enumerate(zip(grads, got), start=1):
        step = lr * np.sqrt(1 - 0.999**t) / (1 - 0.9**t)
        for i, g in enumerate(gs):
            m[i] = 0.9 * m[i] + 0.1 * g
            v[i] = 0.999 * v[i] + 0.001 * g * g
            params[i] = params[i] - step * m[i] / (np.sqrt(v[i]) + eps)
        np.testing.assert_allclose(gW, params[0], rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(gb, params[1], rtol=1e-12, atol=1e-15)
    plain = _fastnet_trajectory(backend, fn.Adam(lr, eps=eps), W0, b0, grads)
    assert np.abs(plain[-1][0] - got[-1][0]).max() > 1e-4  # the conventions differ here
    again = fn.optimizers.optimizer_from_config(fn.Adam(eps_hat=True).get_config())
    assert again.eps_hat and not fn.Adam().get_config().get("eps_hat")


@pytest.mark.parametrize("clip", [{"clip_norm": 1.0}, {"clip_value": 0.5}])
def test_clipping_on_sgd_matches_clip_grad_functions(backend, clip):
    rng = np.random.default_rng(1)
    W0, b0 = rng.standard_normal((3, 4)), rng.standard_normal(4)
    grads = _gradients(rng, scale=3.0)
    got = _fastnet_trajectory(backend, fn.SGD(0.1, weight_decay=0.01, **clip), W0, b0, grads)
    want = _reference_sgd_clipped(W0, b0, grads, 0.1, wd=0.01, **clip)
    for (gW, gb), (wW, wb) in zip(got, want):
        np.testing.assert_allclose(gW, wW, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(gb, wb, rtol=1e-12, atol=1e-12)


def test_clip_norm_set_on_a_built_model_clips(backend):
    """Turned on after build (by hand or a callback), clip_norm clips the very next step."""
    rng = np.random.default_rng(2)
    W0, b0 = rng.standard_normal((3, 4)), rng.standard_normal(4)
    grads = _gradients(rng, scale=3.0)
    optimizer = fn.SGD(0.1)
    layer = fn.Dense(4)
    model = fn.Sequential([layer], optimizer=optimizer, backend=backend, dtype="float64")
    model.build(3)
    optimizer.clip_norm = 1.0
    layer.W.value[...] = backend.asarray(W0)
    layer.b.value[...] = backend.asarray(b0)
    layer.W.grad[...] = backend.asarray(grads[0][0])
    layer.b.grad[...] = backend.asarray(grads[0][1])
    model.apply_gradients()
    (wW, wb) = _reference_sgd_clipped(W0, b0, grads[:1], 0.1, clip_norm=1.0)[0]
    np.testing.assert_allclose(backend.to_numpy(layer.W.value), wW, rtol=1e-12)
    np.testing.assert_allclose(backend.to_numpy(layer.b.value), wb, rtol=1e-12)


def test_clip_norm_set_by_a_callback_clips_in_fit(backend):
    rng = np.random.default_rng(3)
    X, y = rng.standard_normal((64, 5)), rng.integers(0, 3, 64)

    class ClipFromEpoch1(fn.Callback):
        def on_epoch_begin(self, model, epoch):
            if epoch == 1:
                model.optimizer.clip_norm = 1e-6

    model = fn.Sequential(
        [fn.Dense(4, "relu"), fn.Dense(3)],
        optimizer=fn.SGD(0.5),
        backend=backend,
        seed=0,
        dtype="float64",
    )
    model.fit(X, y, epochs=1, batch_size=16, verbose=0)
    before = np.concatenate([backend.to_numpy(p.value).ravel() for p in model.parameters()])
    model.fit(
        X, y, epochs=2, initial_epoch=1, batch_size=16, verbose=0, callbacks=[ClipFromEpoch1()]
    )
    after = np.concatenate([backend.to_numpy(p.value).ravel() for p in model.parameters()])
    assert np.linalg.norm(after - before) <= 4 * 0.5 * 1e-6 * (1 + 1e-9)  # 4 clipped steps


def test_clipping_keeps_nan_visible(backend):
    layer = fn.Dense(2)
    model = fn.Sequential([layer], optimizer=fn.SGD(0.1, clip_value=1.0), backend=backend)
    model.build(2)
    layer.W.grad[...] = backend.asarray(np.array([[np.nan, 5.0], [-5.0, 0.5]], np.float32))
    layer.b.grad[...] = 0
    model.apply_gradients()
    W = backend.to_numpy(layer.W.value)
    assert np.isnan(W[0, 0]) and np.isfinite(W[1]).all()


def test_optimizer_arguments_are_checked():
    with pytest.raises(ValueError, match="clip_norm"):
        fn.Adam(clip_norm=0)
    built = fn.Adam(clip_norm=1.0)
    for key, bad in [("clip_norm", -1.0), ("clip_value", 0), ("weight_decay", -0.1)]:
        with pytest.raises(ValueError, match=key):
            setattr(built, key, bad)
    assert built.clip_norm == 1.0 and built.clip_value is None and built.weight_decay == 0
    with pytest.raises(ValueError, match="clip_value"):
        fn.SGD(clip_value=-1)
    config = fn.AdamW(1e-3, clip_norm=1.0).get_config()
    again = fn.optimizers.optimizer_from_config(config)
    assert isinstance(again, fn.AdamW) and again.clip_norm == 1.0 and again.weight_decay == 0.01


@pytest.mark.parametrize("clip", [{}, {"clip_norm": 0.5}])
def test_adamw_and_clipping_match_pytorch(backend, clip):
    """float32, 20 steps, against torch.optim.AdamW + torch.nn.utils.clip_grad_norm_."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    W0 = rng.standard_normal((3, 4)).astype(np.float32)
    b0 = rng.standard_normal(4).astype(np.float32)
    grads = [(g.astype(np.float32), h.astype(np.float32)) for g, h in _gradients(rng, 2.0)] * 3
    tW, tb = torch.tensor(W0, requires_grad=True), torch.tensor(b0, requires_grad=True)
    opt = torch.optim.AdamW(
        [{"params": [tW], "weight_decay": 0.1}, {"params": [tb], "weight_decay": 0.0}], lr=0.01
    )
    layer = fn.Dense(4)
    model = fn.Sequential(
        [layer], optimizer=fn.AdamW(0.01, weight_decay=0.1, **clip), backend=backend
    )
    model.build(3)
    layer.W.value[...] = backend.asarray(W0)
    layer.b.value[...] = backend.asarray(b0)
    for gW, gb in grads:
        tW.grad, tb.grad = torch.tensor(gW), torch.tensor(gb)
        if clip:
            torch.nn.utils.clip_grad_norm_([tW, tb], clip["clip_norm"])
        opt.step()
        layer.W.grad[...] = backend.asarray(gW)
        layer.b.grad[...] = backend.asarray(gb)
        model.apply_gradients()
    np.testing.assert_allclose(
        backend.to_numpy(layer.W.value), tW.detach().numpy(), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(
        backend.to_numpy(layer.b.value), tb.detach().numpy(), rtol=1e-5, atol=1e-6
    )


def _softmax_reference(z, labels, w, smoothing=0.0):
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    n, k = z.shape
    t = np.eye(k)[labels] * (1 - smoothing) + smoothing / k
    loss = (w * -(t * logp).sum(axis=1)).sum() / n
    grad = w[:, None] * (np.exp(logp) - t) / n
    return loss, grad


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_weighted_softmax_matches_float64_reference(backend, smoothing):
    rng = np.random.default_rng(3)
    for dtype, tol in ((np.float64, 1e-12), (np.float32, 2e-6)):
        z = (rng.standard_normal((33, 7)) * 4).astype(dtype)
        labels = rng.integers(0, 7, 33)
        w = rng.random(33) * 3
        loss_fn = fn.SoftmaxCrossEntropy(label_smoothing=smoothing)
        loss_fn.build(backend)
        loss, grad = loss_fn(
            backend.asarray(z), backend.asarray(labels), backend.asarray(w.astype(dtype))
        )
        want_loss, want_grad = _softmax_reference(z.astype(np.float64), labels, w, smoothing)
        assert float(loss) == pytest.approx(want_loss, rel=tol, abs=tol)
        np.testing.assert_allclose(backend.to_numpy(grad), want_grad, rtol=tol * 10, atol=tol)


@pytest.mark.parametrize("cls", [fn.SigmoidBinaryCrossEntropy, fn.MeanSquaredError])
def test_weighted_elementwise_losses_match_float64_reference(backend, cls):
    rng = np.random.default_rng(4)
    z, t, w = rng.standard_normal((9, 3)), rng.random((9, 3)), rng.random(9) * 2
    loss_fn = cls()
    loss_fn.build(backend)
    loss, grad = loss_fn(backend.asarray(z), backend.asarray(t), backend.asarray(w))
    if cls is fn.MeanSquaredError:
        elements, dz = (z - t) ** 2, 2 * (z - t)
    else:
        elements = np.maximum(z, 0) - z * t + np.log1p(np.exp(-np.abs(z)))
        dz = 1 / (1 + np.exp(-z)) - t
    assert float(loss) == pytest.approx((w[:, None] * elements).sum() / z.size, rel=1e-12)
    np.testing.assert_allclose(backend.to_numpy(grad), w[:, None] * dz / z.size, rtol=1e-12)


def test_sample_and_class_weights_in_fit(backend):
    rng = np.random.default_rng(5)
    X = rng.standard_normal((400, 6)).astype(np.float32)
    y = (X[:, 0] + 0.3 * rng.standard_normal(400) > 1.0).astype(int)  # class 1 is rare

    def fitted(**weights):
        model = fn.Sequential(
            [fn.Dense(8, "relu"), fn.Dense(2)], backend=backend, seed=0, optimizer=fn.Adam(0.02)
        )
        model.fit(X, y, epochs=15, batch_size=64, verbose=0, **weights)
        return model

    plain = fitted()
    balanced = fitted(class_weight={0: 1.0, 1: 6.0})
    rare_recall = [(m.predict(X)[y == 1] == 1).mean() for m in (plain, balanced)]
    assert rare_recall[1] > rare_recall[0]
    same = fitted(sample_weight=np.ones(400))  # all ones: exactly the unweighted run
    np.testing.assert_array_equal(same.predict_raw(X), plain.predict_raw(X))
    model = fitted(sample_weight=np.where(y == 1, 6.0, 1.0))
    assert (model.predict(X)[y == 1] == 1).mean() > rare_recall[0]
    for bad, match in (
        (np.ones(3), "sample_weight"),
        (-np.ones(400), "non-negative"),
        (np.zeros(400), "are all zero"),
        (np.full(400, 1e39), r"\(up to 1e\+39\) exceed float32, the model's dtype"),  # (as
        (np.full(400, 1e-46), "all round to zero in float32"),  # float32: inf, 0)
    ):
        fresh = fn.Sequential([fn.Dense(2)], backend=backend)
        with pytest.raises(ValueError, match=match):
            fresh.fit(X, y, epochs=1, verbose=0, sample_weight=bad)
        assert not fresh.built
    with pytest.raises(ValueError, match="class_weight"):
        plain.fit(X, y, epochs=1, verbose=0, class_weight={"a": 1.0})
    with pytest.raises(ValueError, match="class_weight keys must be integer labels, got '1'"):
        plain.fit(X, y, epochs=1, verbose=0, class_weight={"1": 2.0})
    fresh = fn.Sequential([fn.Dense(2)], backend=backend)
    with pytest.raises(ValueError, match=r"label\(s\) \[5\] the model lacks \(its labels: 0 to 1"):
        fresh.fit(X, y, epochs=1, verbose=0, class_weight={0: 1, 1: 2, 5: 3})  # a typo
    assert not fresh.built
    multi_label = fn.Sequential([fn.Dense(3)], loss="bce", backend=backend)
    with pytest.raises(ValueError, match="a multi-label model's rows have none"):
        multi_label.fit(X, np.eye(3)[y], epochs=1, verbose=0, class_weight={0: 1, 1: 5})
    binary = fn.Sequential([fn.Dense(1)], loss="bce", backend=backend, seed=0)
    binary.fit(X, y, epochs=1, verbose=0, class_weight={0: 1, 1: 5})
    named = fn.Sequential([fn.Dense(2)], backend=backend, seed=0)  # (labels by class name:
    named.metadata["classes"] = ["common", "rare"]  # a TypeError from np.rint before)
    named.fit(X, np.array(["common", "rare"])[y], epochs=2, verbose=0, class_weight={1: 6.0})
    by_index = fn.Sequential([fn.Dense(2)], backend=backend, seed=0)
    by_index.fit(X, y, epochs=2, verbose=0, class_weight={1: 6.0})
    np.testing.assert_array_equal(named.predict_raw(X), by_index.predict_raw(X))


# ---------------------------------------------------------------------------- float32 constants
# A float32 kernel computing ``1 - beta2`` from the float32-rounded beta2 takes 1.29e-5 (0.999)
# to 1.36e-3 (0.99999) off (1 - beta2) while the bias correction uses the exact float64 beta2:
# every Adam step was off by half that. The complements are computed in float64 on the host,
# rounded once, as the reference does, on every backend.
def _fused(backend):
    """The update kernels a backend runs (the reference on numpy)."""
    return {"numpy": "reference", "numba": "numba-fused"}.get(backend.name, "cuda-fused")


@pytest.mark.parametrize("beta2", [0.999, 0.9999, 0.99999])
def test_first_float32_adam_step_is_lr(backend, beta2):
    """m_hat = g, v_hat = g^2 after one step: the step is lr * g / (|g| + eps), lr * sign(g)
    to 2e-8 here, rounded to float32 (a few roundings: 2.5e-7)."""
    lr, layer = 0.01, fn.Dense(3)
    model = fn.Sequential(
        [layer], optimizer=fn.Adam(lr, beta2=beta2), backend=backend, dtype="float32", seed=0
    )
    model.build(2)
    g = np.array([1.0, -2.0, 0.5], np.float32)
    layer.b.grad[...] = backend.asarray(g)
    layer.W.grad[...] = backend.asarray(np.zeros((2, 3), np.float32))
    b0 = backend.to_numpy(layer.b.value).astype(np.float64)
    W0 = backend.to_numpy(layer.W.value).copy()
    model.apply_gradients()
    assert backend.kernel_report["update_adam"] == _fused(backend)
    taken = b0 - backend.to_numpy(layer.b.value)
    np.testing.assert_allclose(taken, lr * np.sign(g), rtol=2.5e-7, atol=0)
    np.testing.assert_array_equal(backend.to_numpy(layer.W.value), W0)  # 0 / (0 + eps)


def _published_steps(name, hp, params, grads, n_steps):
    """``params`` (W decayed, b not) after each step of the published rule in float64:
    Kingma & Ba's Algorithm 1 (PyTorch's Adam, L2 ``weight_decay`` in the gradient; ``eps_hat``:
    Keras's and scikit-learn's eps on the uncorrected sqrt(v)), Loshchilov & Hutter's AdamW
    (PyTorch's: shrink by 1 - lr wd first), Hinton's RMSProp (Keras's), Momentum and Nesterov
    as the optimizers' docstrings give them."""
    lr, wd = hp["lr"], hp.get("weight_decay", 0.0)
    params = [p.astype(np.float64) for p in params]
    state = [[np.zeros_like(p), np.zeros_like(p)] for p in params]
    out = []
    for t in range(1, n_steps + 1):
        for i, (p, (a, b)) in enumerate(zip(params, state)):
            g = grads[t - 1][i].astype(np.float64)
            decayed = i == 0 and wd > 0
            if name == "adamw" and decayed:
                p *= 1 - lr * wd
            elif decayed:
                g = g + wd * p
            if name in ("adam", "adamw"):
                b1, b2, eps = hp.get("beta1", 0.9), hp.get("beta2", 0.999), hp.get("eps", 1e-8)
                a[...] = b1 * a + (1 - b1) * g
                b[...] = b2 * b + (1 - b2) * g * g
                if hp.get("eps_hat"):
                    p -= lr * np.sqrt(1 - b2**t) / (1 - b1**t) * a / (np.sqrt(b) + eps)
                else:
                    p -= lr * (a / (1 - b1**t)) / (np.sqrt(b / (1 - b2**t)) + eps)
            elif name == "rmsprop":
                rho, eps = hp.get("rho", 0.9), hp.get("eps", 1e-7)
                a[...] = rho * a + (1 - rho) * g * g
                p -= lr * g / (np.sqrt(a) + eps)
            else:  # momentum
                mu = hp["momentum"]
                a[...] = mu * a - lr * g
                p += mu * a - lr * g if hp.get("nesterov") else a
        out.append([p.copy() for p in params])
    return out


FLOAT32_RULES = [
    ("adam", {"lr": 0.01}),
    ("adam", {"lr": 0.01, "beta1": 0.95, "beta2": 0.9999}),
    ("adam", {"lr": 0.01, "beta2": 0.99999, "weight_decay": 0.1}),
    ("adam", {"lr": 0.01, "beta2": 0.999, "eps": 1e-7, "eps_hat": True}),
    ("adamw", {"lr": 0.01, "beta2": 0.9999, "weight_decay": 0.1}),
    ("adamw", {"lr": 0.01, "beta1": 0.99, "beta2": 0.99999, "weight_decay": 0.5}),
    ("rmsprop", {"lr": 0.01, "rho": 0.999}),
    ("rmsprop", {"lr": 0.01, "rho": 0.9999, "weight_decay": 0.1}),
    ("momentum", {"lr": 0.01, "momentum": 0.999}),
    ("momentum", {"lr": 0.01, "momentum": 0.99, "nesterov": True}),
]


@pytest.mark.parametrize(
    ("name", "hp"), FLOAT32_RULES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(FLOAT32_RULES)]
)
def test_float32_updates_match_the_published_rule_in_float64(backend, name, hp):
    """Five float32 steps against the rule evaluated in float64 from the same float32 start
    and gradients: 1e-6 relative (float32 rounds each step's values by 6e-8). Each element's
    gradient keeps its sign and its parameter starts on the side it moves to: no element
    passes near 0, where a relative comparison says nothing."""
    rng, n_steps = np.random.default_rng(7), 5
    shapes = [(3, 4), (4,)]
    signs = [np.where(rng.random(s) < 0.5, -1.0, 1.0) for s in shapes]
    grads = [
        [(sg * (0.2 + rng.random(sg.shape) * 2)).astype(np.float32) for sg in signs]
        for _ in range(n_steps)
    ]
    params = [(-sg * (0.01 + 0.02 * rng.random(sg.shape))).astype(np.float32) for sg in signs]
    kind = {"adam": fn.Adam, "adamw": fn.AdamW, "rmsprop": fn.RMSProp, "momentum": fn.Momentum}
    layer = fn.Dense(4)
    model = fn.Sequential(
        [layer], optimizer=kind[name](**hp), backend=backend, dtype="float32", seed=0
    )
    model.build(3)
    layer.W.value[...], layer.b.value[...] = map(backend.asarray, params)
    want = _published_steps(name, hp, params, grads, n_steps)
    for (gW, gb), (wW, wb) in zip(grads, want):
        layer.W.grad[...], layer.b.grad[...] = backend.asarray(gW), backend.asarray(gb)
        model.apply_gradients()
        np.testing.assert_allclose(backend.to_numpy(layer.W.value), wW, rtol=1e-6, atol=0)
        np.testing.assert_allclose(backend.to_numpy(layer.b.value), wb, rtol=1e-6, atol=0)
    kernel = model.optimizer.kernel
    assert backend.kernel_report[f"update_{kernel}"] == _fused(backend)


@pytest.mark.parametrize(
    ("loss", "targets", "weights", "message"),
    [
        (fn.SoftmaxCrossEntropy(), [[np.nan, 1, 0]], None, "targets hold NaN or infinite"),
        (fn.SoftmaxCrossEntropy(), [[np.inf, 0, 0]], None, "targets hold NaN or infinite"),
        (fn.SigmoidBinaryCrossEntropy(), [[np.nan, 1, 0]], None, "targets hold NaN"),
        (fn.MeanSquaredError(), [[0.5, 1, 0]], [-1.0], "weights must be finite and >= 0"),
        (fn.SoftmaxCrossEntropy(), [[0.0, 1, 0]], [np.nan], "weights must be finite and >= 0"),
    ],
)
def test_a_loss_called_on_its_own_checks_target_and_weight_values(loss, targets, weights, message):
    """As the module says: NaN targets gave a NaN loss, weights [-1] a negative MSE."""
    outputs = np.zeros((1, 3))
    w = None if weights is None else np.array(weights)
    with pytest.raises(ValueError, match=message):
        loss(outputs, np.array(targets, dtype=np.float64), w)
