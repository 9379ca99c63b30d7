"""A homework-style NumPy network, written the way the 6.390 neural-network homework
writes it: module objects with forward/backward, column vectors (a batch is (m, b)),
state on the objects, NLL summed over the batch. For ``jaxbp.adapters`` tests.
"""

import numpy as np


class Module:
    def sgd_step(self, lrate):  # For modules w/o weights
        pass


class Linear(Module):
    def __init__(self, m, n):
        self.m, self.n = (m, n)  # (in size, out size)
        self.W0 = np.zeros([self.n, 1])  # (n x 1)
        self.W = np.random.normal(0, 1.0 * m ** (-.5), [m, n])  # (m x n)

    def forward(self, A):
        self.A = A  # (m x b)
        return np.dot(self.W.T, A) + self.W0  # (n x b)

    def backward(self, dLdZ):  # dLdZ is (n x b), uses stored self.A
        self.dLdW = np.dot(self.A, dLdZ.T)  # (m x n)
        self.dLdW0 = np.sum(dLdZ, axis=1, keepdims=True)  # (n x 1)
        return np.dot(self.W, dLdZ)  # dLdA (m x b)

    def sgd_step(self, lrate):  # Gradient descent step
        self.W = self.W - lrate * self.dLdW
        self.W0 = self.W0 - lrate * self.dLdW0


class Tanh(Module):  # Layer activation
    def forward(self, Z):
        self.A = np.tanh(Z)
        return self.A

    def backward(self, dLdA):  # Uses stored self.A
        return dLdA * (1 - self.A ** 2)


class WrongTanh(Tanh):
    """The classic slip: tanh' written as 1 − A (the square dropped)."""

    def backward(self, dLdA):
        return dLdA * (1 - self.A)


class ReLU(Module):  # Layer activation
    def forward(self, Z):
        self.A = np.maximum(0, Z)
        return self.A

    def backward(self, dLdA):
        return dLdA * (self.A != 0)


class SoftMax(Module):  # Output activation
    def forward(self, Z):
        exps = np.exp(Z - np.max(Z, axis=0, keepdims=True))
        return exps / np.sum(exps, axis=0, keepdims=True)

    def backward(self, dLdZ):  # Assume that dLdZ is passed in (from NLL)
        return dLdZ

    def class_fun(self, Ypred):  # Return class indices
        return np.argmax(Ypred, axis=0)


class NLL(Module):  # Loss
    def forward(self, Ypred, Y):
        self.Ypred = Ypred
        self.Y = Y
        return float(np.sum(-Y * np.log(Ypred)))

    def backward(self):  # Use stored self.Ypred, self.Y
        return self.Ypred - self.Y  # dLdZ of the softmax output (n x b)
