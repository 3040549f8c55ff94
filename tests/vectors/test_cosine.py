"""The one cosine (steerlab.vectors.vector): per layer, shapes, zero rows, matrix form == pairwise."""

import math

import pytest
import torch

from steerlab.errors import SteerlabError
from steerlab.vectors.vector import SteeringVector, cosine, cosine_matrix, unit_directions


def test_cosine_per_layer_against_the_formula():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 16, generator=gen), torch.randn(5, 16, generator=gen)
    expected = torch.tensor([float(a[i] @ b[i] / (a[i].norm() * b[i].norm())) for i in range(5)])
    got = cosine(SteeringVector(a), SteeringVector(b))
    assert got.shape == (5,) and got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(cosine(a, b, torch.float64), expected.double(), rtol=0, atol=1e-6)
    torch.testing.assert_close(cosine(a, -3 * a), -torch.ones(5), rtol=0, atol=1e-6)
    # any leading shape: [s, L, d] -> [s, L]
    assert cosine(a[None].expand(3, 5, 16), b[None].expand(3, 5, 16)).shape == (3, 5)


def test_zero_rows_and_bad_shapes():
    a = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    b = torch.tensor([[2.0, 0.0], [1.0, 1.0]])
    assert cosine(a, b).tolist() == [1.0, 0.0]  # zero layer: 0, not NaN
    assert unit_directions(a).tolist() == [[1.0, 0.0], [0.0, 0.0]]
    with pytest.raises(SteerlabError, match=r"shapes \(2, 2\) and \(3, 2\)"):
        cosine(a, torch.zeros(3, 2))
    with pytest.raises(SteerlabError, match="cosine_matrix needs"):
        cosine_matrix(torch.zeros(2, 3), torch.zeros(2, 4))


def test_matrix_equals_pairwise():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4, 8, generator=gen)
    x[2] = 0
    m = cosine_matrix(x)
    for i in range(4):
        for j in range(4):
            assert math.isclose(float(m[i, j]), float(cosine(x[i], x[j])), abs_tol=1e-6)
    assert cosine_matrix(x, x[:2]).shape == (4, 2)


def test_geometry_uses_the_one_cosine(monkeypatch):
    """compare_vectors, trait_matrix and the random baseline all go through vectors.vector."""
    from steerlab.evaluate import geometry

    calls = []
    real, real_matrix = geometry.cosine, geometry.cosine_matrix
    monkeypatch.setattr(geometry, "cosine", lambda *a, **k: calls.append("cosine") or real(*a, **k))
    monkeypatch.setattr(geometry, "cosine_matrix", lambda *a, **k: calls.append("matrix") or real_matrix(*a, **k))
    vectors = {"a": torch.randn(3, 8), "b": torch.randn(3, 8)}
    geometry.compare_vectors(vectors, n_random=5)
    geometry.trait_matrix(vectors, 1)
    geometry.split_half_reliability(torch.randn(6, 3, 8), n_splits=2)
    assert calls.count("cosine") >= 2 and calls.count("matrix") == 2
