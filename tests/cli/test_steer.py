"""`steerlab generate --out` writes generation records with the one field set (question, text, ...),
which `steerlab monitor` reads back; steering flags come from the shared option set."""

import json

import torch
from cli_helpers import invoke

from steerlab.vectors.vector import SteeringVector


def test_generate_writes_generation_records(tiny_dir, tmp_path):
    vec = SteeringVector(torch.randn(4, 64)).save(tmp_path / "v.safetensors")
    out = tmp_path / "gens.jsonl"
    messages = tmp_path / "prompts.jsonl"
    messages.write_text(json.dumps({"messages": [{"role": "user", "content": "is water wet"}]}) + "\n")
    result = invoke("generate", "-m", tiny_dir, "-v", vec, "--layers", "-1", "-c", "-2,0,2", "-n", "3",
                    "--prompts-file", messages, "-o", out, "how should I store bread")
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
