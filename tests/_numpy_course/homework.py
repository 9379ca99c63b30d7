"""Module objects in the style of the 6.390 neural-network homework: column vectors (a batch
is (m, b)), parameters W (m, n) and W0 (n, 1), gradients kept as ``dLdW``/``dLdW0``, a loss
summed over the batch whose backward returns ∂L/∂z of the SoftMax's input (fused)."""

import math

import numpy as np


class Linear:
    def __init__(self, m, n, rng):
        self.W = rng.normal(0.0, m ** -0.5, (m, n))
        self.W0 = rng.normal(0.0, 0.1, (n, 1))

    def forward(self, A):
        self.A = A
        return self.W.T @ A + self.W0  # (n, m) @ (m, b) + (n, 1)

    def backward(self, dLdZ):
        self.dLdW = self.A @ dLdZ.T
        self.dLdW0 = dLdZ.sum(axis=1, keepdims=True)
        return self.W @ dLdZ


class Tanh:
    def forward(self, Z):
        self.A = np.tanh(Z)
        return self.A

    def backward(self, dLdA):
        return dLdA * (1.0 - self.A ** 2)


class SlipTanh(Tanh):
    """tanh' written as 1 − A (the square dropped)."""

    def backward(self, dLdA):
        return dLdA * (1.0 - self.A)


class EntryTanh(Tanh):
    """tanh entry by entry through Python floats: jax cannot trace ``float()`` of an entry."""

    def forward(self, Z):
        self.A = np.empty_like(Z)
        for index in np.ndindex(*Z.shape):
            self.A[index] = math.tanh(float(Z[index]))
        return self.A


class EntrySlipTanh(EntryTanh):
    backward = SlipTanh.backward


class ReLU:
    def forward(self, Z):
        self.A = np.maximum(0, Z)
        return self.A

    def backward(self, dLdA):
        return dLdA * (self.A != 0)


class SoftMax:
    def forward(self, Z):
        e = np.exp(Z - Z.max(axis=0, keepdims=True))
        return e / e.sum(axis=0, keepdims=True)

    def backward(self, dLdZ):
        return dLdZ  # NLL already returned ∂L/∂z


class NLL:
    def forward(self, Ypred, Y):
        self.Ypred, self.Y = Ypred, Y
        return float(np.sum(-Y * np.log(Ypred)))

    def backward(self):
        return self.Ypred - self.Y


class SignSlipNLL(NLL):
    def backward(self):
        return self.Y - self.Ypred
