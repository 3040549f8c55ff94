import json

import pytest
from typer.testing import CliRunner

from steerlab.cli.app import app
from steerlab.errors import SteerlabError
from steerlab.formats.traits import (
    Trait,
    coherence_prompt,
    list_traits,
    load_trait,
    system_prompt,
    trait_from_dict,
)

BUILTINS = ("evil", "sycophantic", "hallucinating", "impolite", "optimistic", "humorous", "apathetic", "deceptive")

PV_STYLE = {  # a persona-vectors style external file
    "instruction": [{"pos": "Be cheerful about everything.", "neg": "Be gloomy about everything."}],
    "questions": ["How was your day?", "What do you think about Mondays?"],
    "eval_prompt": "Question: {question}\nAnswer: {answer}\nRate 0-100 how cheerful it is.",
}


def test_builtins_listed():
    assert sorted(BUILTINS) == list_traits()


@pytest.mark.parametrize("name", BUILTINS)
def test_builtin_trait_counts_and_disjoint_questions(name):
    extract, evaluate = load_trait(name), load_trait(name, split="eval")
    assert isinstance(extract, Trait)
    assert extract.name == name
    assert len(extract.instruction) >= 5
    assert len(extract.questions) >= 20 and len(evaluate.questions) >= 20
    assert not set(extract.questions) & set(evaluate.questions)
    assert len(set(extract.questions)) == len(extract.questions)
    assert extract.instruction == evaluate.instruction
    assert extract.eval_prompt == evaluate.eval_prompt
    filled = extract.judge_prompt("Q?", "A {with} braces.")
    assert "Q?" in filled and "A {with} braces." in filled


def test_external_file_loads_unchanged(tmp_path):
    path = tmp_path / "cheerful.json"
    path.write_text(json.dumps({**PV_STYLE, "notes": "extra keys are kept"}))
    trait = load_trait(path)
    assert trait.name == "cheerful"
    assert trait.source == str(path)
    assert trait.to_json() == {**PV_STYLE, "notes": "extra keys are kept"}
    assert load_trait(str(path), split="eval").questions == PV_STYLE["questions"]


def _write(tmp_path, obj, raw=None):
    path = tmp_path / "bad_trait.json"
    path.write_text(raw if raw is not None else json.dumps(obj))
    return path


MALFORMED = {
    "missing questions": ({k: v for k, v in PV_STYLE.items() if k != "questions"}, "'questions'"),
    "missing eval_prompt": ({k: v for k, v in PV_STYLE.items() if k != "eval_prompt"}, "'eval_prompt'"),
    "empty questions": ({**PV_STYLE, "questions": []}, "'questions'"),
    "blank question": ({**PV_STYLE, "questions": ["ok?", "  "]}, "'questions'"),
    "empty instruction": ({**PV_STYLE, "instruction": []}, "'instruction'"),
    "pair without neg": ({**PV_STYLE, "instruction": [{"pos": "x"}]}, "'instruction[0].neg'"),
    "no {answer}": ({**PV_STYLE, "eval_prompt": "Rate {question}"}, "{answer}"),
    "no {question}": ({**PV_STYLE, "eval_prompt": "Rate {answer}"}, "{question}"),
    "other placeholder": ({**PV_STYLE, "eval_prompt": "{question} {answer} {score}"}, "{score}"),
    "stray brace": ({**PV_STYLE, "eval_prompt": "{question} {answer} {"}, "'eval_prompt'"),
    "questions not a list": ({**PV_STYLE, "questions": "why?"}, "'questions'"),
    "not an object": ([1, 2], "JSON object"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_trait_names_file_and_field(tmp_path, case):
    obj, needle = MALFORMED[case]
    path = _write(tmp_path, obj)
    with pytest.raises(SteerlabError) as err:
        load_trait(path)
    message = str(err.value)
    assert str(path) in message
    assert needle in message, message


def test_invalid_json_names_file_and_position(tmp_path):
    path = _write(tmp_path, None, raw='{"instruction": [')
    with pytest.raises(SteerlabError, match=r"bad_trait\.json: not valid JSON \(line 1"):
        load_trait(path)


def test_missing_field_message_says_what_is_expected(tmp_path):
    path = _write(tmp_path, MALFORMED["missing questions"][0])
    with pytest.raises(SteerlabError, match=r"missing field 'questions' .*non-empty list"):
        load_trait(path)


def test_unknown_name_split_and_file(tmp_path):
    with pytest.raises(SteerlabError, match=r"unknown trait 'nope'.*evil"):
        load_trait("nope")
    with pytest.raises(SteerlabError, match="split 'train'"):
        load_trait("evil", split="train")
    with pytest.raises(SteerlabError, match="file not found"):
        load_trait(tmp_path / "absent.json")


def test_trait_from_dict_without_file():
    with pytest.raises(SteerlabError, match="trait 'x': field 'questions'"):
        trait_from_dict({**PV_STYLE, "questions": []}, name="x")


def test_system_prompt():
    assert system_prompt("Be kind.") == "You are a helpful assistant. Be kind."
    assert system_prompt("Be cruel.", "evil") == "You are an evil assistant. Be cruel."
    trait = load_trait("evil")
    pos, neg = trait.system_prompts("pos"), trait.system_prompts("neg")
    assert len(pos) == len(neg) == len(trait.instruction)
    assert pos[0] == f"You are an evil assistant. {trait.instruction[0].pos}"
    assert neg[0] == f"You are a helpful assistant. {trait.instruction[0].neg}"
    with pytest.raises(SteerlabError):
        trait.system_prompts("both")


def test_coherence_prompt():
    text = coherence_prompt()
    assert "{question}" in text and "{answer}" in text
    assert "0 to 100" in text
    text.format(question="q", answer="a")


runner = CliRunner()


def test_cli_traits_list():
    result = runner.invoke(app, ["traits", "list", "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.output)}
    assert set(rows) == set(BUILTINS)
    assert rows["evil"]["instructions"] >= 5 and rows["evil"]["eval_questions"] >= 20
    table = runner.invoke(app, ["traits", "list"])
    assert table.exit_code == 0 and "sycophantic" in table.output


def test_cli_traits_show(tmp_path):
    result = runner.invoke(app, ["traits", "show", "evil", "--split", "eval"])
    assert result.exit_code == 0, result.output
    assert "instruction pairs (6)" in result.output
    assert "eval questions (24)" in result.output
    path = tmp_path / "cheerful.json"
    path.write_text(json.dumps(PV_STYLE))
    result = runner.invoke(app, ["traits", "show", str(path), "--json"])
    assert result.exit_code == 0 and json.loads(result.output) == PV_STYLE


def test_cli_traits_show_errors(tmp_path):
    result = runner.invoke(app, ["traits", "show", "nope"])
    assert result.exit_code == 2
    assert "unknown trait 'nope'" in result.output
    path = _write(tmp_path, MALFORMED["no {answer}"][0])
    result = runner.invoke(app, ["traits", "show", str(path)])
    assert result.exit_code == 2 and "eval_prompt" in result.output
