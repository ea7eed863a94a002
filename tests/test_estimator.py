import numpy as np
import pytest
from conftest import make_blobs

import fastnet as fn


def test_classifier_with_string_labels(backend):
    X, y = make_blobs()
    names = np.array(["cat", "dog", "emu", "fox"])[y]
    clf = fn.MLPClassifier(
        (32,), epochs=5, learning_rate=1e-2, backend=backend.name, random_state=0
    )
    assert clf.fit(X[:500], names[:500], validation_data=(X[500:], names[500:])) is clf
    assert set(clf.predict(X[500:])) <= set(clf.classes_)
    assert clf.score(X[500:], names[500:]) > 0.9
    assert clf.predict_proba(X[:3]).shape == (3, 4)
    assert len(clf.history_["val_accuracy"]) == 5


def test_get_set_params_roundtrip():
    clf = fn.MLPClassifier(hidden_layer_sizes=(8,), epochs=3)
    params = clf.get_params()
    assert params["hidden_layer_sizes"] == (8,) and params["epochs"] == 3
    clf.set_params(epochs=7, dropout=0.1)
    assert clf.get_params()["epochs"] == 7
    with pytest.raises(ValueError, match="invalid parameter 'nope'"):
        clf.set_params(nope=1)
    assert "MLPClassifier(" in repr(clf)


def test_early_stopping_batchnorm_dropout_options():
    X, y = make_blobs()
    clf = fn.MLPClassifier(
        (32, 16),
        epochs=30,
        early_stopping=True,
        patience=2,
        batch_norm=True,
        dropout=0.1,
        learning_rate=1e-2,
        random_state=0,
    )
    clf.fit(X, y)
    assert len(clf.history_["loss"]) <= 30 and clf.score(X, y) > 0.9


def test_classifier_errors():
    X, y = make_blobs(n=40)
    with pytest.raises(RuntimeError, match="not fitted"):
        fn.MLPClassifier().predict(X)
    with pytest.raises(ValueError, match="single class"):
        fn.MLPClassifier(epochs=1).fit(X, np.zeros(40))
    with pytest.raises(ValueError, match="learning_rate"):
        fn.MLPClassifier(learning_rate=0).fit(X, y)
    clf = fn.MLPClassifier((4,), epochs=1).fit(X, y)
    with pytest.raises(ValueError, match="not seen in fit"):
        clf.fit(X, y, validation_data=(X, y + 10))
