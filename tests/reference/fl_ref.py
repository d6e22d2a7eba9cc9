"""Slow, obvious NumPy references for mcsl_core.fl (float64, explicit loops)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def logistic_sgd(w, b, x, y, orders, batch_size, lr):
    """Minibatch SGD on mean softmax cross-entropy of logits ``x @ w + b``.

    ``orders``: one row order per epoch; batches are consecutive slices of it
    (the last may be short). Closed-form gradient: ``x^T (softmax - onehot) / m``.
    """
    w = np.array(w, np.float64)
    b = np.array(b, np.float64)
    k = w.shape[1]
    for order in orders:
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            xb, yb = x[idx].astype(np.float64), y[idx]
            p = softmax(xb @ w + b)
            p[np.arange(len(idx)), yb] -= 1.0
            w -= lr * xb.T @ p / len(idx)
            b -= lr * p.sum(axis=0) / len(idx)
            assert k == w.shape[1]
    return w, b


def fedavg(u: np.ndarray, w: np.ndarray) -> np.ndarray:
    """u: [clients, d]; weighted mean over clients."""
    out = np.zeros(u.shape[1])
    for i in range(u.shape[0]):
        out += w[i] * u[i]
    return out / w.sum()


def median(u: np.ndarray) -> np.ndarray:
    out = np.empty(u.shape[1])
    for j in range(u.shape[1]):
        col = sorted(u[:, j])
        n = len(col)
        out[j] = col[n // 2] if n % 2 else 0.5 * (col[n // 2 - 1] + col[n // 2])
    return out


def trimmed_mean(u: np.ndarray, trim: float) -> np.ndarray:
    k = u.shape[0]
    b = int(trim * k)
    out = np.empty(u.shape[1])
    for j in range(u.shape[1]):
        col = sorted(u[:, j])
        kept = col[b : k - b]
        out[j] = sum(kept) / len(kept)
    return out


def krum_select(u: np.ndarray, f: int, m: int) -> list[int]:
    """Blanchard et al.: score(i) = sum of the k - f - 2 smallest ||u_i - u_j||^2, j != i."""
    k = u.shape[0]
    scores = []
    for i in range(k):
        d = sorted(float(np.sum((u[i] - u[j]) ** 2)) for j in range(k) if j != i)
        scores.append(sum(d[: k - f - 2]))
    return sorted(range(k), key=lambda i: (scores[i], i))[:m]


def clip(u: np.ndarray, c: float) -> np.ndarray:
    out = np.empty_like(u, dtype=np.float64)
    for i in range(u.shape[0]):
        n = np.sqrt(np.sum(u[i].astype(np.float64) ** 2))
        out[i] = u[i] * min(1.0, c / n) if n > 0 else u[i]
    return out


def write_leaf(path: Path, users, xs, ys, hierarchies=None) -> Path:
    """Write one LEAF JSON file."""
    blob = {
        "users": list(users),
        "num_samples": [len(y) for y in ys],
        "user_data": {
            u: {"x": np.asarray(x).tolist(), "y": np.asarray(y).tolist()} for u, x, y in zip(users, xs, ys)
        },
    }
    if hierarchies is not None:
        blob["hierarchies"] = list(hierarchies)
    path.write_text(json.dumps(blob))
    return path
