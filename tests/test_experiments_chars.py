"""train.py --model rnn|lstm|gru: the names corpus, its windows and bigram baseline, and a tiny
run in float64 (manual and autodiff in lockstep)."""

import importlib.util
import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def train():
    spec = importlib.util.spec_from_file_location(
        "experiment_train", os.path.join(ROOT, "experiments", "train.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # puts experiments/ on sys.path
    return module


@pytest.fixture
def chars(train, monkeypatch):
    import _chars
    monkeypatch.setitem(_chars.CHARS, "length", 6)
    monkeypatch.setitem(_chars.CHARS, "hidden", 8)
    monkeypatch.setitem(_chars.CHARS, "embedding", 4)
    monkeypatch.setitem(_chars.CHARS, "train_windows", 64)
    return _chars


def test_windows_split_and_bigram(chars):
    data, train_ids, source, n_names = chars.char_data(**chars.CHARS)
    assert data.X_train.shape == data.y_train.shape == (64, 6)
    np.testing.assert_array_equal(data.X_train[:, 1:], data.y_train[:, :-1])  # shifted by one
    # Test windows tile the test text: each window's last target starts the next window.
    np.testing.assert_array_equal(data.X_test[1:, 0], data.y_test[:-1, -1])
    assert n_names > 1000 if source.startswith("names") else n_names == 513
    nll = chars.bigram_nll(train_ids, data.X_test, data.y_test)
    assert 1.5 < nll < np.log(27)  # better than uniform over 27 characters


def test_bundled_corpus_is_announced(chars, monkeypatch):
    monkeypatch.setitem(sys.modules, "names", None)  # `import names` fails
    words, source = chars.corpus()
    assert len(words) == 513 and source.startswith("bundled")


@pytest.mark.parametrize("cell", ["lstm"])
def test_train_char_model_x64_lockstep(train, chars, tmp_path, cell):
    results = train.main(model=cell, steps=3, batch_size=8, x64=True, out=str(tmp_path),
                         quiet=True)
    assert results["model"] == cell and results["dataset"] == "names"
    assert results["max_param_diff"] <= 1e-9
    assert results["manual"]["test_loss"] == pytest.approx(results["autodiff"]["test_loss"],
                                                           rel=1e-9)
    assert results["bigram_test_loss"] > 0 and len(results["samples"]) == 10
    assert all(set(name) <= set(chars.ALPHABET[1:]) for name in results["samples"])
    assert results["modules"][1] == "LSTM(8)"
