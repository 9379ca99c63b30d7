"""Layer classes in the style of "Neural Networks from Scratch": rows (a batch is (N, D)),
``forward`` keeps ``inputs``/``output`` and returns None, ``backward(dvalues)`` sets
``dinputs``, ``dweights``, ``dbiases``; softmax and cross-entropy in one loss class."""

import numpy as np


class Dense:
    def __init__(self, n_in, n_out, rng):
        self.weights = 0.5 * rng.standard_normal((n_in, n_out))
        self.biases = 0.1 * rng.standard_normal((1, n_out))

    def forward(self, inputs):
        self.inputs = inputs
        self.output = np.dot(inputs, self.weights) + self.biases

    def backward(self, dvalues):
        self.dweights = np.dot(self.inputs.T, dvalues)
        self.dbiases = np.sum(dvalues, axis=0, keepdims=True)
        self.dinputs = np.dot(dvalues, self.weights.T)


class ReLU:
    def forward(self, inputs):
        self.inputs = inputs
        self.output = np.maximum(0, inputs)

    def backward(self, dvalues):
        self.dinputs = dvalues.copy()
        self.dinputs[self.inputs <= 0] = 0  # boolean mask write


class ForgetfulReLU(ReLU):
    def backward(self, dvalues):
        self.dinputs = dvalues.copy()  # the mask forgotten


class SoftmaxCrossEntropy:
    def forward(self, inputs, y_true):
        shifted = np.exp(inputs - np.max(inputs, axis=1, keepdims=True))
        self.output = shifted / np.sum(shifted, axis=1, keepdims=True)
        picked = self.output[range(len(inputs)), y_true]
        return -np.log(picked)  # per-sample losses

    def backward(self, dvalues, y_true):
        samples = len(dvalues)
        self.dinputs = dvalues.copy()
        self.dinputs[range(samples), y_true] -= 1
        self.dinputs = self.dinputs / samples

    def forward_output(self):
        return self.output
