"""Geometry: cosines, norms, distances, the random baseline, split-half reliability, `steerlab compare`."""

import json
import math

import pytest
import torch
from cli_helpers import assert_user_error, flat, invoke

from steerlab.errors import SteerlabError
from steerlab.evaluate.geometry import (
    compare_vectors,
    random_cosine_band,
    spearman_brown,
    split_half_reliability,
    trait_matrix,
)
from steerlab.vectors.vector import SteeringVector, random_cosine_baseline

L, D = 4, 64


def gen(seed):
    return torch.Generator().manual_seed(seed)


def three_vectors():
    v = torch.randn(L, D, generator=gen(1))
    orth = torch.randn(L, D, generator=gen(2))
    orth -= (orth * v).sum(-1, keepdim=True) / (v * v).sum(-1, keepdim=True) * v  # Gram-Schmidt per layer
    return v, orth


def test_cosine_self_negative_orthogonal_and_distances():
    v, orth = three_vectors()
    comp = compare_vectors({"v": SteeringVector(v), "same": SteeringVector(v.clone() * 3), "neg": -v, "orth": orth})
    assert comp.names == ["v", "same", "neg", "orth"] and (comp.n_layers, comp.d_model) == (L, D)
    assert len(comp.pairs) == 6
    torch.testing.assert_close(comp.cosines[("v", "same")], torch.ones(L))
    torch.testing.assert_close(comp.cosines[("v", "neg")], -torch.ones(L))
    torch.testing.assert_close(comp.cosines[("v", "orth")], torch.zeros(L), atol=1e-6, rtol=0)
    torch.testing.assert_close(comp.norms["v"], v.norm(dim=-1))
    torch.testing.assert_close(comp.norms["same"], 3 * v.norm(dim=-1))
    torch.testing.assert_close(comp.distances[("v", "neg")], 2 * v.norm(dim=-1))
    torch.testing.assert_close(comp.distances[("v", "same")], 2 * v.norm(dim=-1))
    torch.testing.assert_close(comp.normalized_distances[("v", "same")], torch.zeros(L), atol=1e-6, rtol=0)
    torch.testing.assert_close(comp.normalized_distances[("v", "neg")], torch.full((L,), 2.0))
    torch.testing.assert_close(comp.normalized_distances[("v", "orth")], torch.full((L,), math.sqrt(2)))
    d = comp.to_dict()
    assert d["cosine"]["v|neg"] == pytest.approx([-1.0] * L)
    assert json.loads(json.dumps(d))["baseline"]["d_model"] == D


def test_compare_rejects_mismatched_shapes_and_single_vector():
    with pytest.raises(SteerlabError, match=r"a: \[4, 64\].*b: \[4, 32\]"):
        compare_vectors({"a": torch.randn(4, 64), "b": torch.randn(4, 32)})
    with pytest.raises(SteerlabError, match="at least two"):
        compare_vectors({"a": torch.randn(4, 64)})


@pytest.mark.parametrize("d", [64, 576])
def test_random_baseline_matches_analytic(d):
    band = random_cosine_band(d, n=300, seed=0)
    expected = math.sqrt(2 / (math.pi * d))
    assert band["expected_abs_cos"] == pytest.approx(expected) == random_cosine_baseline(d)
    assert band["empirical_mean_abs_cos"] == pytest.approx(expected, rel=0.05)
    # The 95th percentile of |cos| of a ~N(0, 1/d) variable is ~1.96/sqrt(d).
    assert band["band"] == pytest.approx(1.96 / math.sqrt(d), rel=0.1)
    assert random_cosine_band(d, n=300, seed=0) == band  # seeded
    assert random_cosine_band(d, n=300, seed=1)["band"] != band["band"]


def test_split_half_reliability_signal_and_noise():
    n, d = 40, 256
    direction = torch.randn(L, d, generator=gen(3))
    signal = direction + 0.3 * torch.randn(n, L, d, generator=gen(4))
    noise = torch.randn(n, L, d, generator=gen(5))
    good = split_half_reliability(signal, n_splits=30, seed=0)
    bad = split_half_reliability(noise, n_splits=30, seed=0)
    band = random_cosine_band(d)["band"]
    assert good.mean.shape == (L,) and (good.mean > 0.95).all() and (good.corrected >= good.mean).all()
    assert (bad.mean.abs() < band).all(), (bad.mean, band)
    assert good.baseline == pytest.approx(random_cosine_baseline(d))
    assert (good.n_samples, good.n_splits) == (n, 30)
    assert set(good.to_dict()) >= {"mean", "std", "spearman_brown", "random_baseline"}
    # Same seed, same splits: the callable form (vector = mean of the rows) agrees exactly.
    built = split_half_reliability(lambda idx: signal[idx].mean(0), n_splits=30, seed=0, n_samples=n)
    torch.testing.assert_close(built.mean, good.mean)
    # Unpaired (pos, neg) activations: signal in pos only.
    pos = direction + 0.3 * torch.randn(30, L, d, generator=gen(6))
    neg = 0.3 * torch.randn(25, L, d, generator=gen(7))
    assert (split_half_reliability((pos, neg), n_splits=10).mean > 0.9).all()


def test_split_half_bad_input():
    with pytest.raises(SteerlabError, match="at least 2 samples"):
        split_half_reliability(torch.randn(1, L, D))
    with pytest.raises(SteerlabError, match="n_samples"):
        split_half_reliability(lambda idx: torch.randn(L, D))
    with pytest.raises(SteerlabError, match=r"\[n, n_layers, d\]"):
        split_half_reliability(torch.randn(5))


def test_spearman_brown():
    assert float(spearman_brown(0.5)) == pytest.approx(2 / 3)
    assert float(spearman_brown(1.0)) == pytest.approx(1.0)
    assert math.isnan(float(spearman_brown(-1.0)))


def test_trait_matrix_symmetric_unit_diagonal():
    vectors = {f"t{i}": torch.randn(L, D, generator=gen(10 + i)) for i in range(4)}
    vectors["zero_at_2"] = torch.randn(L, D, generator=gen(20))
    vectors["zero_at_2"][2] = 0
    names, m = trait_matrix(vectors, 2)
    assert names == list(vectors) and m.shape == (5, 5)
    torch.testing.assert_close(m, m.T)
    torch.testing.assert_close(torch.diagonal(m), torch.ones(5))
    assert (m[-1, :-1] == 0).all()
    comp = compare_vectors(vectors)
    torch.testing.assert_close(comp.matrix(2), m, atol=1e-6, rtol=0)
    torch.testing.assert_close(trait_matrix(vectors, -1)[1], trait_matrix(vectors, L - 1)[1])
    with pytest.raises(SteerlabError, match="layer 4 is out of range"):
        trait_matrix(vectors, 4)


# --- CLI -----------------------------------------------------------------------------------------


@pytest.fixture
def vector_files(tmp_path):
    v, orth = three_vectors()
    paths = []
    for name, data in (("contrastive", v), ("persona", v + 0.1 * orth), ("diff", orth)):
        paths.append(SteeringVector(data, {"method": name}).save(tmp_path / f"{name}.safetensors"))
    return paths


def test_cli_compare_writes_files(vector_files, tmp_path):
    out = tmp_path / "cmp"
    result = invoke("compare", *vector_files, "--out", out, "--layer", "1", "--n-random", "50")
    assert result.exit_code == 0, result.output
    assert {p.name for p in out.iterdir()} == {
        "compare.json",
        "cosine_per_layer.html",
        "trait_matrix.html",
        "trait_matrix.png",
    }
    assert (out / "trait_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    record = json.loads((out / "compare.json").read_text())
    assert record["steerlab_version"] and record["config"]["layer"] == 1
    assert record["names"] == ["contrastive", "persona", "diff"]
    assert record["cosine"]["contrastive|diff"] == pytest.approx([0.0] * L, abs=1e-6)
    assert len(record["norms"]["persona"]) == L and len(record["distance"]["contrastive|persona"]) == L
    assert record["baseline"]["band"] > record["baseline"]["expected_abs_cos"] > 0
    assert record["metadata"]["persona"]["method"] == "persona"
    m = record["trait_matrix"]["matrix"]
    assert m[0][0] == pytest.approx(1.0) and m[0][1] == pytest.approx(m[1][0])
    html = (out / "cosine_per_layer.html").read_text()
    assert "plotly.js" in html and "random directions" in html and "contrastive vs persona" in html
    assert "<script src=" not in html  # plotly.js embedded: opens offline
    assert "<script src=" not in (out / "trait_matrix.html").read_text()
    assert "contrastive" in result.output and "persona" in result.output  # the rich table (cells may wrap)
    assert flat("trait matrix at layer 1") in flat(result.output)


def test_cli_compare_names_and_default_layer(vector_files, tmp_path):
    out = tmp_path / "cmp"
    result = invoke("compare", *vector_files[:2], "-o", out, "--names", "A,B", "--n-random", "20")
    assert result.exit_code == 0, result.output
    record = json.loads((out / "compare.json").read_text())
    assert record["names"] == ["A", "B"] and record["config"]["layer"] == L // 2
    assert_user_error(invoke("compare", *vector_files, "-o", out, "--names", "A,B"), "--names", "2 names for 3")
    assert_user_error(invoke("compare", vector_files[0], "-o", out), "at least two")
    assert_user_error(invoke("compare", *vector_files, "-o", out, "--layer", "9"), "--layer 9")


def test_cli_compare_mismatched_shapes_fails_clearly(vector_files, tmp_path):
    small = SteeringVector(torch.randn(L, 32)).save(tmp_path / "small.safetensors")
    out = tmp_path / "never"
    result = invoke("compare", vector_files[0], small, "--out", out)
    assert_user_error(result, "contrastive.safetensors [4, 64]", "small.safetensors [4, 32]")
    assert not out.exists()
    missing = invoke("compare", vector_files[0], tmp_path / "nope.safetensors", "--out", out)
    assert_user_error(missing, "nope.safetensors")
    assert not out.exists()
