"""Monitoring: projections (a·v)/‖v‖, per-turn conversations, input loaders, `steerlab monitor`."""

import csv
import json
import math

import pytest
import torch
from cli_helpers import assert_user_error, invoke

from steerlab.activations.capture import ChatSample, capture
from steerlab.errors import SteerlabError
from steerlab.evaluate.monitor import (
    load_chat,
    load_generations,
    load_monitor_data,
    per_turn_samples,
    project,
    project_turns,
    projection,
    projection_rows,
    summarize,
)
from steerlab.pipelines.sweep import SweepConfig, run_sweep
from steerlab.vectors.vector import SteeringVector

SAMPLES = [
    ChatSample("how should I store fresh bread", "in a bread box"),
    ChatSample("is the fox quick", "yes, the quick brown fox jumps", "answer briefly"),
    ChatSample(
        [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "back up files?"},
        ],
        "always back up your files",
    ),
]
CONVERSATION = [
    {"role": "system", "content": "you are a helpful honest assistant"},
    {"role": "user", "content": "how should I store fresh bread"},
    {"role": "assistant", "content": "in a bread box so it stays soft"},
    {"role": "user", "content": "and water?"},
    {"role": "assistant", "content": "drink water and rest"},
    {"role": "user", "content": "thanks"},
    {"role": "assistant", "content": "yes"},
]
SINGLE = [{"role": "user", "content": "is the fox quick"}, {"role": "assistant", "content": "yes maybe"}]


@pytest.fixture(scope="module")
def vector(tiny_llama):
    gen = torch.Generator().manual_seed(0)
    return SteeringVector(torch.randn(tiny_llama.n_layers, tiny_llama.d_model, generator=gen))


def test_projection_equals_hand_computation_from_capture(tiny_llama, vector):
    layers = [1, 3]
    got = project(tiny_llama, SAMPLES, vector, layers, batch_size=2)
    acts = capture(tiny_llama, SAMPLES, ("response_avg", "prompt_last"), layers=layers)
    assert set(got) == {"response_avg", "prompt_last"}
    for name, a in acts.items():
        assert got[name].shape == (len(SAMPLES), len(layers))
        for i in range(len(SAMPLES)):
            for j, layer in enumerate(layers):
                v = vector.data[layer]
                expected = float(a[i, j] @ v) / float(v.norm())
                assert float(got[name][i, j]) == pytest.approx(expected, rel=1e-5, abs=1e-5)
    one = project(tiny_llama, SAMPLES[1:2], vector, "1,3", ["prompt_last"])["prompt_last"]
    torch.testing.assert_close(one[0], got["prompt_last"][1], rtol=1e-5, atol=1e-5)  # batched == single


def test_projection_pure_formula():
    a = torch.tensor([[[3.0, 4.0], [1.0, 0.0]]])
    v = torch.tensor([[0.0, 2.0], [2.0, 0.0]])
    torch.testing.assert_close(projection(a, v), torch.tensor([[4.0, 1.0]]))
    with pytest.raises(SteerlabError, match="zero vector"):
        projection(a, torch.zeros(2, 2))


def test_empty_response_is_nan_for_response_reductions(tiny_llama, vector):
    got = project(tiny_llama, [ChatSample("is water wet", ""), SAMPLES[0]], vector, 2)
    assert math.isnan(float(got["response_avg"][0, 0])) and math.isfinite(float(got["response_avg"][1, 0]))
    assert torch.isfinite(got["prompt_last"]).all()


def test_project_bad_input(tiny_llama, vector):
    zero = SteeringVector(vector.data.clone())
    zero.data[2] = 0
    with pytest.raises(SteerlabError, match=r"zero at layer\(s\) \[2\]"):
        project(tiny_llama, SAMPLES, zero, [1, 2])
    with pytest.raises(SteerlabError, match="d_model"):
        project(tiny_llama, SAMPLES, SteeringVector(torch.randn(4, 32)), 1)
    with pytest.raises(SteerlabError, match="--layer 7 is out of range"):
        project(tiny_llama, SAMPLES, vector, 7)
    with pytest.raises(SteerlabError, match="no samples"):
        project(tiny_llama, [], vector, 1)


def test_per_turn_counts_and_first_turn_matches_single_turn(tiny_llama, vector):
    samples, keys = per_turn_samples([CONVERSATION, SINGLE])
    assert len(samples) == 3 + 1
    assert [k["turn"] for k in keys] == [0, 1, 2, 0] and [k["conversation"] for k in keys] == [0, 0, 0, 1]
    assert [k["message_index"] for k in keys[:3]] == [2, 4, 6]
    assert samples[1].prompt == CONVERSATION[:4] and samples[1].response == "drink water and rest"
    keys, values = project_turns(tiny_llama, [CONVERSATION, SINGLE], vector, [0, 2])
    assert values["response_avg"].shape == (4, 2)
    single = project(
        tiny_llama,
        [ChatSample(CONVERSATION[1]["content"], CONVERSATION[2]["content"], system=CONVERSATION[0]["content"])],
        vector,
        [0, 2],
    )
    for name in ("response_avg", "prompt_last"):
        torch.testing.assert_close(values[name][0], single[name][0], rtol=1e-5, atol=1e-5)
    # Later turns see the earlier ones: turn 1's prompt_last differs from a fresh conversation's.
    fresh = project(tiny_llama, [ChatSample("and water?", "drink water and rest")], vector, [0, 2])
    assert not torch.allclose(values["response_avg"][1], fresh["response_avg"][0])


# --- loaders -------------------------------------------------------------------------------------


def write_lines(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_load_chat_whole_and_per_turn(tmp_path):
    path = write_lines(
        tmp_path / "chat.jsonl",
        [
            {"messages": CONVERSATION},
            "",
            {"messages": SINGLE},
            {"messages": [{"role": "user", "content": "only a prompt"}]},
        ],
    )
    whole = load_chat(path)
    assert whole.kind == "chat" and len(whole.samples) == 3 and whole.group_by == []
    assert whole.samples[0].prompt == CONVERSATION[:-1] and whole.samples[0].response == "yes"
    assert whole.samples[2].response == "" and [m["line"] for m in whole.meta] == [1, 3, 4]
    with pytest.raises(SteerlabError, match=r"chat.jsonl:4: --per-turn: .*no assistant"):
        load_chat(path, per_turn=True)
    path2 = write_lines(tmp_path / "chat2.jsonl", [{"messages": CONVERSATION}, {"messages": SINGLE}])
    turns = load_monitor_data(path2, per_turn=True)
    assert len(turns.samples) == 4 and turns.group_by == ["turn"]
    assert turns.meta[2] == {"line": 1, "conversation": 0, "turn": 2, "message_index": 6}


@pytest.mark.parametrize(
    ("row", "needle"),
    [
        ({"messages": []}, "chat.jsonl:1: field 'messages'"),
        ({"messages": [{"role": "bot", "content": "x"}]}, "field 'messages[0].role': expected one of"),
        ({"messages": [{"role": "assistant", "content": "x"}]}, "first non-system message must be a user"),
        ({"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "s"}]}, "may only come first"),
    ],
)
def test_load_chat_bad_rows(tmp_path, row, needle):
    with pytest.raises(SteerlabError) as info:
        load_chat(write_lines(tmp_path / "chat.jsonl", [row]))
    assert needle in str(info.value)


def test_load_generations_from_a_real_sweep(tiny_llama, vector, tmp_path):
    out = tmp_path / "sweep"
    questions = ["how should I store bread", [{"role": "user", "content": "is water wet"}]]
    run_sweep(tiny_llama, vector, questions, out, SweepConfig("1", [-2, 2], max_new_tokens=3, system="answer briefly"))
    for where in (out, out / "generations.jsonl"):
        data = load_monitor_data(where)
        assert data.kind == "generations" and len(data.samples) == 4
        assert data.group_by == ["steer_layer", "coeff"]
    assert {(m["steer_layer"], m["coeff"]) for m in data.meta} == {(1, -2.0), (1, 2.0)}
    assert all(s.system == "answer briefly" for s in data.samples)  # from sweep.json
    assert data.samples[1].prompt == [{"role": "user", "content": "is water wet"}]  # message list restored
    rows = [json.loads(x) for x in (out / "generations.jsonl").read_text().splitlines()]
    assert [s.response for s in data.samples] == [r["text"] for r in rows]
    with pytest.raises(SteerlabError, match="--per-turn needs chat data"):
        load_monitor_data(out, per_turn=True)


def test_load_generations_generate_rows_and_errors(tmp_path):
    path = write_lines(
        tmp_path / "gen.jsonl",
        [
            {"prompt": "[not json", "text": "a", "coeff": 1.0, "layer": "2", "system": "s"},
            {"prompt": "q", "text": "b", "coeff": None},
        ],
    )
    data = load_generations(path)
    assert data.samples[0] == ChatSample("[not json", "a", "s") and data.samples[1].system is None
    # the old field name 'prompt' is read; the metadata uses the one record field, 'question'
    assert data.group_by == ["steer_layer", "coeff"] and data.meta[0]["question"] == "[not json"
    with pytest.raises(SteerlabError, match=r"bad.jsonl:1: expected a generation row"):
        load_generations(write_lines(tmp_path / "bad.jsonl", [{"question": "q"}]))
    with pytest.raises(SteerlabError, match=r"--data .*odd.jsonl: expected chat JSONL"):
        load_monitor_data(write_lines(tmp_path / "odd.jsonl", [{"foo": 1}]))
    with pytest.raises(SteerlabError, match="a directory must hold"):
        load_monitor_data(tmp_path)


def test_rows_and_summary():
    from steerlab.evaluate.monitor import MonitorData

    data = MonitorData(
        "generations", [ChatSample("a", "b")] * 3, [{"coeff": 1.0}, {"coeff": -1.0}, {"coeff": 1.0}], ["coeff"]
    )
    values = {"response_avg": torch.tensor([[1.0, 2.0], [5.0, 6.0], [3.0, float("nan")]])}
    rows = projection_rows(data, values, [4, 7])
    assert len(rows) == 6 and rows[1] == {"sample": 0, "coeff": 1.0, "layer": 7, "response_avg": 2.0}
    assert rows[5]["response_avg"] is None
    summary = summarize(rows, ["coeff"], ["response_avg"])
    assert [(s["coeff"], s["layer"], s["n"]) for s in summary] == [(-1.0, 4, 1), (-1.0, 7, 1), (1.0, 4, 2), (1.0, 7, 2)]
    assert summary[2]["response_avg_mean"] == 2.0 and summary[2]["response_avg_std"] == 1.0
    assert summary[3]["response_avg_mean"] == 2.0 and summary[3]["response_avg_std"] == 0.0


# --- CLI -----------------------------------------------------------------------------------------


@pytest.fixture
def vector_file(vector, tmp_path):
    return vector.save(tmp_path / "v.safetensors")


def test_cli_monitor_per_turn_jsonl(tiny_dir, tiny_llama, vector, vector_file, tmp_path):
    data = write_lines(tmp_path / "chat.jsonl", [{"messages": CONVERSATION}, {"messages": SINGLE}])
    out = tmp_path / "res" / "proj.jsonl"
    result = invoke("monitor", "-m", tiny_dir, "-v", vector_file, "-l", "1,3", "-d", data, "--per-turn", "-o", out)
    assert result.exit_code == 0, result.output
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 4 * 2 and {r["layer"] for r in rows} == {1, 3}
    keys, values = project_turns(tiny_llama, [CONVERSATION, SINGLE], vector, [1, 3])
    for r in rows:
        j = [1, 3].index(r["layer"])
        assert r["response_avg"] == pytest.approx(float(values["response_avg"][r["sample"], j]), rel=1e-4, abs=1e-5)
        assert r["turn"] == keys[r["sample"]]["turn"]
    summary = json.loads((tmp_path / "res" / "proj.summary.json").read_text())
    assert summary["steerlab_version"] and summary["config"]["per_turn"] is True and summary["group_by"] == ["turn"]
    assert [(s["turn"], s["layer"], s["n"]) for s in summary["summary"]][:2] == [(0, 1, 2), (0, 3, 2)]
    assert "turn" in result.output and "response_avg" in result.output and "prompt_last" in result.output


def test_cli_monitor_sweep_csv(tiny_dir, tiny_llama, vector, vector_file, tmp_path):
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    write_lines(
        sweep / "generations.jsonl",
        [
            {"layer": 2, "coeff": c, "question_index": q, "question": question, "text": text}
            for c, text in ((-4.0, "no never"), (4.0, "yes always"))
            for q, question in enumerate(["is the fox quick", "should I back up my files"])
        ],
    )
    out = tmp_path / "proj.csv"
    result = invoke(
        "monitor", "-m", tiny_dir, "-v", vector_file, "-l", "2", "-d", sweep, "-o", out, "-r", "response_avg"
    )
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 4 and set(rows[0]) >= {"sample", "steer_layer", "coeff", "layer", "response_avg"}
    assert "prompt_last" not in rows[0]
    expected = project(tiny_llama, [ChatSample("is the fox quick", "no never")], vector, 2)["response_avg"]
    assert float(rows[0]["response_avg"]) == pytest.approx(float(expected[0, 0]), rel=1e-4, abs=1e-5)
    assert "-4.0" in result.output and "4.0" in result.output


def test_cli_monitor_bad_input(tiny_dir, vector_file, tmp_path):
    data = write_lines(tmp_path / "chat.jsonl", [{"messages": SINGLE}])
    base = ("monitor", "-m", tiny_dir, "-v", vector_file, "-l", "1", "-d", data)
    assert_user_error(invoke(*base, "-o", tmp_path / "x.txt"), "--out", "x.txt", ".jsonl or .csv")
    assert_user_error(invoke(*base, "-r", "bogus"), "--reduction 'bogus'")
    small = SteeringVector(torch.randn(4, 32)).save(tmp_path / "small.safetensors")
    out = tmp_path / "never.jsonl"
    result = invoke("monitor", "-m", tiny_dir, "-v", small, "-l", "1", "-d", data, "-o", out)
    assert_user_error(result, "--vector", "small.safetensors", "[4, 32]", "d_model 64")
    assert not out.exists() and not (tmp_path / "never.summary.json").exists()
    assert_user_error(invoke("monitor", "-m", tiny_dir, "-v", vector_file, "-l", "9", "-d", data), "--layer 9")
    assert_user_error(
        invoke("monitor", "-m", tiny_dir, "-v", vector_file, "-l", "1", "-d", tmp_path / "nope.jsonl"),
        "nope.jsonl",
        "not found",
    )
