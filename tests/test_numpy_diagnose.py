"""report.diagnosis of the NumPy checks: course-style NumPy backwards with one planted mistake
each (tests/_numpy_course) are named by kind, at the right row, from the traced forward."""

import numpy as np
import pytest

import jaxbp
from tests._numpy_course import layers as L, scratch as sc

R = np.random.default_rng(1)
POOL = {"pool_height": 2, "pool_width": 2, "stride": 2}
TIED = np.array([[[[1., 1, 0, 2], [0, -1, 2, 2], [3, 0, 1, 1], [-1, 3, 0, 1]]]])


def normal(*shape):
    return R.standard_normal(shape)


def dropout_no_mask(dout, cache):  # rescales, forgets the mask
    dropout_param, _ = cache
    return dout / dropout_param["p"]


def embedding_assigned(dout, cache):  # dW[x] = dout: repeated ids overwrite each other
    x, W = cache
    dW = np.zeros_like(W)
    dW[x] = dout
    return dW


def rnn_no_carry(dh, caches):  # the hidden gradient carried from t to t − 1 dropped
    N, T, H = dh.shape
    dx, dh0 = np.zeros((N, T, caches[0][0].shape[1])), np.zeros((N, H))
    grads = None
    for t in reversed(range(T)):
        dx[:, t, :], dh0, *step = L.rnn_step_backward(dh[:, t, :], caches[t])
        grads = step if grads is None else [g + s for g, s in zip(grads, step)]
    return (dx, dh0, *grads)


def pool_every_tie(dout, cache):  # every tied maximum gets the whole gradient
    x, p = cache
    dx = np.zeros_like(x)
    for i in range(dout.shape[2]):
        for j in range(dout.shape[3]):
            w = x[:, :, 2 * i:2 * i + 2, 2 * j:2 * j + 2]
            hit = w == w.max(axis=(2, 3), keepdims=True)
            dx[:, :, 2 * i:2 * i + 2, 2 * j:2 * j + 2] += hit * dout[:, :, i:i + 1, j:j + 1]
    return dx


LAYERS = [  # id, forward, backward, inputs, kwargs, kind, where
    ("dropout-no-mask", L.dropout_forward, dropout_no_mask,
     (normal(4, 5), {"p": 0.6, "seed": 3}), {}, "masked", "x"),
    ("relu-no-mask", L.relu_forward, lambda dout, cache: dout, (normal(4, 5),), {},
     "masked", "x"),
    ("embedding-assigned", L.embedding_forward, embedding_assigned,
     (np.array([[0, 2], [2, 1]]), normal(4, 3)), {}, "repeated ids", "W"),
    ("rnn-no-carry", L.rnn_forward, rnn_no_carry,
     (normal(2, 4, 3), normal(2, 3), normal(3, 3), normal(3, 3), normal(3)), {"time_axis": 1},
     "time steps", "x"),
    ("maxpool-every-tie", L.max_pool_forward_naive, pool_every_tie, (TIED, POOL), {},
     "ties", "x"),
]


@pytest.mark.parametrize("case", LAYERS, ids=[c[0] for c in LAYERS])
def test_check_layer_names_the_kind(case):
    _, forward, backward, inputs, kwargs, kind, where = case
    report = jaxbp.check_layer(forward, backward, *inputs, trials=2, **kwargs)
    assert not report.ok and report.truth == "jax"
    assert (report.diagnosis[0].kind, report.diagnosis[0].where) == (kind, where), str(report)
    assert kind in str(report)


def test_rnn_no_carry_is_at_the_step_before_the_last():
    _, forward, backward, inputs, kwargs, *_ = LAYERS[3]
    found = jaxbp.check_layer(forward, backward, *inputs, trials=2, **kwargs).diagnosis[0]
    assert found.value == inputs[0].shape[1] - 2  # right at the last step, wrong before


def test_check_loss_softmax_without_division_by_n_is_scale_n():
    x, y = normal(4, 3), np.array([0, 2, 1, 1])

    def softmax_loss_no_mean(scores, labels):
        loss, dx = L.softmax_loss(scores, labels)
        return loss, dx * scores.shape[0]  # the gradient of a loss divided by N, not divided

    report = jaxbp.check_loss(softmax_loss_no_mean, x, y)
    found = report.diagnosis[0]
    assert (found.kind, found.where) == ("scale", "params"), str(report)
    assert found.value == pytest.approx(4.0) and "B = 4" in found.detail


def test_correct_numpy_layers_have_no_findings():
    for _, forward, _, inputs, kwargs, *_ in LAYERS[:1]:
        report = jaxbp.check_layer(forward, L.dropout_backward, *inputs, trials=2, **kwargs)
        assert report.ok and report.diagnosis == (), str(report)


@pytest.mark.parametrize("relu, kind, where", [
    (sc.ForgetfulReLU, "masked", "module 2 (ForgetfulReLU) input"), (sc.ReLU, None, None),
], ids=["forgotten-mask", "correct"])
def test_check_modules_names_the_kind(relu, kind, where):
    rng = np.random.default_rng(2)
    modules = [sc.Dense(3, 4, rng), relu(), sc.Dense(4, 3, rng)]
    report = jaxbp.check_modules(modules, sc.SoftmaxCrossEntropy(), normal(5, 3),
                                 np.array([0, 2, 1, 1, 0]))
    found = report.diagnosis[0] if report.diagnosis else None
    assert (found and (found.kind, found.where)) == ((kind, where) if kind else None), \
        str(report)
    assert report.first_bad == where
