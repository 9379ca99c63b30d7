"""experiments/backprop_ninja.py end to end, in-process, on a tiny corpus and few steps."""

import importlib.util
import json
import os

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
WORDS = ("anna bob carla dave emma fred gina hugo iris jack kate liam mona nick olga paul "
         "quinn rosa sam tina uma vera walt xena yves zoe").split()
TINY = ["--batch-size", "16", "--hidden", "12", "--steps", "30", "--quiet"]


@pytest.fixture(scope="module")
def ninja():
    spec = importlib.util.spec_from_file_location(
        "backprop_ninja_script", os.path.join(ROOT, "experiments", "backprop_ninja.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "words.txt"
    path.write_text("\n".join(WORDS) + "\n")
    return str(path)


def assert_png(path):
    with open(path, "rb") as f:
        assert f.read(8) == PNG_SIGNATURE, path


def test_builtin_corpus_is_plain_lowercase_words(ninja):
    assert len(ninja.NAMES) > 400 and len(set(ninja.NAMES)) == len(ninja.NAMES)
    assert all(w.isascii() and w.isalpha() and w.islower() for w in ninja.NAMES)
    X, Y = ninja.dataset(["ab"])
    # contexts "...", "..a", ".ab" predict a, b, "."
    np.testing.assert_array_equal(X, [[0, 0, 0], [0, 0, 1], [0, 1, 2]])
    np.testing.assert_array_equal(Y, [1, 2, 0])


def test_correct_backward_checks_then_trains_in_lockstep(ninja, corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert ninja.cli(TINY + ["--corpus", corpus, "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "jaxbp.check_intermediates: OK" in text and "26 values tapped, 26 given" in text
    assert "max |params_manual − params_autodiff| along the run" in text
    results = json.loads((out / "results.json").read_text())
    assert results["ok"] and results["trained"] and results["steps"] == 30
    assert len(results["report"]["rows"]) == 26
    assert 0 <= results["max_param_diff"] < 1e-4  # float32 round-off, not a bug-sized gap
    for grad in ("manual", "autodiff"):
        assert np.isfinite(results[grad]["train_loss"])
    assert results["manual"]["train_loss"] == pytest.approx(results["autodiff"]["train_loss"],
                                                            rel=1e-4)
    assert results["manual"]["train_loss"] < np.log(27)  # learned something from uniform
    assert_png(out / "check.png")
    assert_png(out / "loss.png")
    assert not [n for n in os.listdir(out) if n.startswith(".")]


@pytest.mark.parametrize("bug", ["bessel_n", "counts_overwrite"])
def test_planted_bug_is_named_exit_1_and_nothing_trained(ninja, corpus, tmp_path, capsys, bug):
    out = tmp_path / "run"
    assert ninja.cli(TINY + ["--corpus", corpus, "--out", str(out), "--bug", bug]) == 1
    _, name, suspect = ninja.BUGS[bug]
    text = capsys.readouterr().out
    assert f"WRONG — d{name}, suspect: {suspect}" in text
    assert f"the report names the planted bug: d{name}, {suspect}" in text
    results = json.loads((out / "results.json").read_text())
    assert (results["report"]["first_bad"], results["report"]["suspect"]) == (name, suspect)
    assert not results["ok"] and not results["trained"]
    assert sorted(os.listdir(out)) == ["check.png", "results.json"]


@pytest.mark.parametrize("argv, flag, message", [
    (["--bug", "typo"], "--bug", "allowed: missing_1_over_n, counts_overwrite"),
    (["--steps", "0"], "--steps", "expected an int >= 1"),
    (["--batch-size", "1"], "--batch-size", "expected an int >= 2"),
    (["--lr", "-1"], "--lr", "expected a positive number"),
    (["--corpus", "/nonexistent/words.txt"], "--corpus", "cannot read"),
], ids=["bug", "steps", "batch-size", "lr", "corpus"])
def test_bad_flags_exit_2_in_one_line(ninja, tmp_path, capsys, argv, flag, message):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exc:
        ninja.cli(argv + ["--out", str(out)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"error: argument {flag}" in err and message in err, err
    assert not out.exists()


def test_corpus_with_non_letters_is_refused(ninja, tmp_path, capsys):
    path = tmp_path / "bad.txt"
    path.write_text("anna\nbob2\n")
    with pytest.raises(SystemExit) as exc:
        ninja.cli(["--corpus", str(path), "--out", str(tmp_path / "run")])
    assert exc.value.code == 2
    assert "'bob2' is not a word of letters a–z" in capsys.readouterr().err
