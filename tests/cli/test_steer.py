"""`steerlab generate --out` writes generation records with the one field set (question, text, ...),
which `steerlab monitor` reads back; steering flags come from the shared option set."""

import json

import pytest
import torch
from cli_helpers import invoke

import steerlab.engines.factory as engine_factory
from steerlab.model.chat import encode_chat
from steerlab.model.loading import load_model
from steerlab.steering.calibration import cap_threshold
from steerlab.vectors.vector import SteeringVector


def test_generate_writes_generation_records(tiny_dir, tmp_path):
    vec = SteeringVector(torch.randn(4, 64)).save(tmp_path / "v.safetensors")
    out = tmp_path / "gens.jsonl"
    messages = tmp_path / "prompts.jsonl"
    messages.write_text(json.dumps({"messages": [{"role": "user", "content": "is water wet"}]}) + "\n")
    result = invoke(
        "generate",
        "-m",
        tiny_dir,
        "-v",
        vec,
        "--layers",
        "-1",
        "-c",
        "-2,0,2",
        "-n",
        "3",
        "--prompts-file",
        messages,
        "-o",
        out,
        "how should I store bread",
    )
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 6  # 2 prompts x 3 coefficients
    assert all("prompt" not in r for r in rows)
    assert list(rows[0])[:6] == ["layer", "coeff", "question", "text", "n_new_tokens", "finish_reason"]
    assert [r["coeff"] for r in rows] == [-2.0, -2.0, 0.0, 0.0, 2.0, 2.0]
    assert rows[0]["question"] == "how should I store bread" and rows[0]["layer"] == "-1"
    assert json.loads(rows[1]["question"]) == [{"role": "user", "content": "is water wet"}]
    # coefficient 0 is the identity: same text as the unsteered model
    plain = tmp_path / "plain.jsonl"
    result = invoke("generate", "-m", tiny_dir, "-n", "3", "-o", plain, "how should I store bread")
    assert result.exit_code == 0, result.output
    unsteered = json.loads(plain.read_text().splitlines()[0])
    assert unsteered["coeff"] is None and unsteered["layer"] is None
    assert unsteered["text"] == rows[2]["text"]

    monitored = tmp_path / "monitor.jsonl"
    result = invoke("monitor", "-m", tiny_dir, "-v", vec, "-l", "1", "-d", out, "-o", monitored)
    assert result.exit_code == 0, result.output
    projected = [json.loads(line) for line in monitored.read_text().splitlines()]
    assert len(projected) == 6 and projected[0]["question"] == "how should I store bread"
    assert {r["coeff"] for r in projected} == {-2.0, 0.0, 2.0}


CAP_PROMPTS = ["how should I store fresh bread so it stays soft", "yes", "drink water rest and see a doctor"]


def hand_percentile(lm, direction, layer, prompts, q):
    """The q-th percentile (linear interpolation) of h·v̂ over every token of the prompts, each run
    alone; layer L = hidden_states[L + 1] (L < n_layers - 1: the last one is normed by transformers)."""
    unit = direction.double() / direction.double().norm()
    values = []
    for p in prompts:
        with torch.no_grad():
            hs = lm.model(input_ids=torch.tensor([encode_chat(lm.tokenizer, p).ids]), output_hidden_states=True)
        values += (hs.hidden_states[layer + 1][0].double() @ unit).tolist()
    values.sort()
    rank = q / 100 * (len(values) - 1)
    lo = int(rank)
    hi = min(lo + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (rank - lo)


@pytest.mark.parametrize("reference", [False, True])
def test_generate_cap_percentile_caps_at_the_percentile_of_reference_projections(
    tiny_dir, tmp_path, monkeypatch, reference
):
    torch.manual_seed(0)
    vec = SteeringVector(torch.randn(4, 64))
    path = vec.save(tmp_path / "v.safetensors")
    layer = 1
    seen, models = [], []

    def load_and_watch(*args, **kwargs):
        lm = load_model(*args, **kwargs)
        unit = vec[layer] / vec[layer].norm()

        def watch(_module, _inputs, out):
            seen.append((out[0] if isinstance(out, tuple) else out) @ unit)

        # a plain torch hook runs after steerlab's (which run first on the block): it sees the capped output
        # (the calibration pass stops inside steerlab's hook on that block, so only generation is seen)
        lm.blocks[layer].register_forward_hook(watch)
        models.append(lm)
        return lm

    monkeypatch.setattr(engine_factory, "load_model", load_and_watch)
    out = tmp_path / "gens.jsonl"
    extra = []
    ref_prompts = CAP_PROMPTS
    if reference:
        ref_prompts = ["the quick brown fox jumps over the lazy dog", "always back up your files before updating"]
        (tmp_path / "ref.txt").write_text("\n".join(ref_prompts) + "\n")
        extra = ["--reference-prompts", tmp_path / "ref.txt"]
    result = invoke(
        "generate",
        "-m",
        tiny_dir,
        "-v",
        path,
        "-l",
        layer,
        "--operator",
        "cap",
        "--cap-percentile",
        "90",
        "-n",
        "4",
        "-o",
        out,
        *extra,
        *CAP_PROMPTS,
    )
    assert result.exit_code == 0, result.output
    generated = list(seen)  # the forward passes of generation (the hand computation below adds more)
    (lm,) = models
    tau = hand_percentile(lm, vec[layer], layer, ref_prompts, 90)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == len(CAP_PROMPTS)
    for row in rows:
        assert row["operator"] == "cap" and row["cap_percentile"] == 90 and row["cap_floor"] is None
        assert row["cap_ceiling"] == {str(layer): pytest.approx(tau, rel=1e-5, abs=1e-5)}
        assert row["reference_prompts"] == (str(tmp_path / "ref.txt") if reference else None)
    projections = torch.cat([p.flatten() for p in generated])
    assert len(generated) == 4 and projections.numel() > 3 * len(CAP_PROMPTS)  # prefill, then 3 decode steps
    assert float(projections.max()) <= tau + 1e-4
    if not reference:  # unsteered, 10% of the prompts' tokens lie above τ: the cap had something to clamp
        assert hand_percentile(lm, vec[layer], layer, CAP_PROMPTS, 100) > tau + 1e-3


def test_sweep_cap_percentile_records_the_threshold_of_each_layer(tiny_dir, tmp_path):
    torch.manual_seed(1)
    vec = SteeringVector(torch.randn(4, 64))
    path = vec.save(tmp_path / "v.safetensors")
    questions = tmp_path / "q.txt"
    questions.write_text("\n".join(CAP_PROMPTS) + "\n")
    out = tmp_path / "run"
    args = [
        "sweep",
        "-m",
        tiny_dir,
        "-v",
        path,
        "-l",
        "1,2",
        "-c",
        "0,1",
        "-q",
        questions,
        "-o",
        out,
        "--operator",
        "cap",
        "--cap-percentile",
        "75",
        "--cap-floor",
        "-2",
        "-n",
        "2",
    ]
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    lm = load_model(str(tiny_dir))
    rows = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * 2 * len(CAP_PROMPTS)
    for layer in (1, 2):
        tau = cap_threshold(lm, vec, layer, CAP_PROMPTS, 75)
        assert tau == pytest.approx(hand_percentile(lm, vec[layer], layer, CAP_PROMPTS, 75), rel=1e-5, abs=1e-5)
        for row in (r for r in rows if r["layer"] == layer):
            assert row["cap_ceiling"] == pytest.approx(tau, rel=1e-6) and row["cap_floor"] == -2.0
            assert row["cap_percentile"] == 75 and row["operator"] == "cap"
    config = json.loads((out / "sweep.json").read_text())["config"]
    assert config["cap_percentile"] == 75 and set(config["cap"]) == {"1", "2"}

    # a rerun with the same flags resumes (nothing regenerated); with another percentile, it regenerates
    def generation_seconds():
        return json.loads((out / "sweep.json").read_text())["timings"]["generation_s"]

    assert generation_seconds() > 0
    assert invoke(*args).exit_code == 0 and generation_seconds() == 0.0
    result = invoke(*[("90" if a == "75" else a) for a in args])
    assert result.exit_code == 0, result.output
    assert generation_seconds() > 0
    rows = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    assert {r["cap_percentile"] for r in rows} == {90}


def test_judged_sweep_says_what_it_will_run_before_it_starts(tiny_dir, tmp_path):
    """A judged sweep prints its generations and judge calls first; margins and scores name their p."""
    import csv

    vec = SteeringVector(torch.randn(4, 64)).save(tmp_path / "v.safetensors")
    questions = tmp_path / "q.txt"
    questions.write_text("how should I store bread\nis water wet\n")
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"question": "yes or no", "positive": "no", "negative": "yes maybe"}) + "\n")
    out = tmp_path / "sweep"
    args = ["sweep", "-m", tiny_dir, "-v", vec, "-l", "1", "-c", "-2,2", "-q", questions, "-p", pairs, "-n", "2"]
    result = invoke(*args, "-t", "evil", "-j", f"local:{tiny_dir}", "--controls", "2", "-o", out)
    assert result.exit_code == 0, result.output
    plan = "sweep: 4 generations (1 layers x 2 coefficients x 2 questions)"
    assert plan in result.output and "judge calls" in result.output
    assert result.output.index(plan) < result.output.index("wrote 4 generations")  # before it started
    assert "one-sided p" in result.output
    margins = list(csv.DictReader((out / "margins.csv").open()))
    assert [m["alternative"] for m in margins] == ["less", "greater"]
    assert sum(m["reported"] == "True" for m in margins) == 1  # controls at the reported cell (whole sequences)
    assert json.loads((out / "sweep.json").read_text())["plan"]["controls_at"] == "reported"
    unjudged = invoke(*args, "--controls-at", "all", "-o", tmp_path / "all")
    assert unjudged.exit_code == 0, unjudged.output
    assert "sweep:" not in unjudged.output  # nothing to announce without a judge
    assert all(m["random_k"] == "8" for m in csv.DictReader((tmp_path / "all" / "margins.csv").open()))
