"""JSONL/CSV reading and writing (steerlab.io.tables): FILE:LINE errors, atomic writes, round trips."""

import json
import os

import pytest

from steerlab.errors import SteerlabError
from steerlab.io.tables import csv_text, first_jsonl_row, iter_jsonl, read_csv, read_jsonl, write_csv, write_jsonl


def test_jsonl_round_trip_and_line_numbers(tmp_path):
    rows = [{"question": "é?", "n": 1}, {"question": "b", "x": None}]
    path = tmp_path / "a.jsonl"
    write_jsonl(path, rows)
    assert "é" in path.read_text(encoding="utf-8")  # non-ASCII kept
    path.write_text("\n" + path.read_text(encoding="utf-8") + "\n\n", encoding="utf-8")
    assert read_jsonl(path) == [(2, rows[0]), (3, rows[1])]  # blank lines skipped, numbers as in an editor
    assert first_jsonl_row(path) == (2, rows[0])


@pytest.mark.parametrize(
    ("text", "objects", "match"),
    [
        ('{"a": 1}\n{"a": \n', True, r"bad.jsonl:2: invalid JSON"),
        ('{"a": 1}\n\n[1, 2]\n', True, r"bad.jsonl:3: expected a JSON object, got list"),
        ('"a"\n{"a": \n', False, r"bad.jsonl:2: invalid JSON"),
        ("\n\n", True, r"pairs file .*bad.jsonl is empty"),
    ],
)
def test_jsonl_errors_name_file_and_line(tmp_path, text, objects, match):
    path = tmp_path / "bad.jsonl"
    path.write_text(text)
    with pytest.raises(SteerlabError, match=match):
        read_jsonl(path, "pairs file", objects=objects)


def test_jsonl_missing_file_and_any_values(tmp_path):
    with pytest.raises(SteerlabError, match=r"chat file .*nope.jsonl: file not found"):
        read_jsonl(tmp_path / "nope.jsonl", "chat file")
    path = tmp_path / "s.jsonl"
    path.write_text('"chat one"\n{"k": "v"}\n')
    assert [v for _, v in iter_jsonl(path, objects=False)] == ["chat one", {"k": "v"}]
    # lazily: the first row is read without touching a later bad line
    path.write_text('{"k": 1}\n{bad\n')
    assert first_jsonl_row(path) == (1, {"k": 1})


def test_writes_are_atomic(tmp_path):
    path = tmp_path / "out.jsonl"
    write_jsonl(path, [{"a": 1}])

    def rows():
        yield {"a": 2}
        raise RuntimeError("generator failed mid-write")

    with pytest.raises(RuntimeError):
        write_jsonl(path, rows())
    assert read_jsonl(path) == [(1, {"a": 1})]  # old content kept
    with pytest.raises(TypeError):
        write_csv(tmp_path / "t.csv", [{"a": 1}, 5])  # type: ignore[list-item]
    assert sorted(os.listdir(tmp_path)) == ["out.jsonl"]  # no partial or temp files


def test_csv_round_trip_header_union_and_multiline_cells(tmp_path):
    rows = [{"layer": 1, "coeff": -2.0}, {"layer": 2, "margin": None, "text": "two\nlines, quoted"}]
    assert csv_text(rows).splitlines()[0] == "layer,coeff,margin,text"
    path = write_csv(tmp_path / "t.csv", [*rows, {"layer": 3}])
    header, got = read_csv(path, "table", columns=["layer"])
    assert header == ["layer", "coeff", "margin", "text"]
    assert [n for n, _ in got] == [2, 3, 5]  # the multi-line row is numbered by its first line
    assert got[1][1] == {"layer": "2", "coeff": "", "margin": "", "text": "two\nlines, quoted"}


def test_csv_errors(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("")
    with pytest.raises(SteerlabError, match=r"table .*t.csv is empty"):
        read_csv(path, "table")
    path.write_text("a,b\n1,2\n1,2,3\n")
    with pytest.raises(SteerlabError, match=r"t.csv:3: 3 cells for 2 columns"):
        read_csv(path)
    with pytest.raises(SteerlabError, match=r"column\(s\) \['c'\] not in the header"):
        read_csv(path, columns=["c"])
    with pytest.raises(SteerlabError, match="not found"):
        read_csv(tmp_path / "nope.csv")


def test_pairs_reader_is_the_tables_reader(tmp_path):
    from steerlab.formats import pairs

    assert pairs.read_jsonl is read_jsonl
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"question": "q", "positive": "p", "negative": "n"}) + "\n{oops\n")
    with pytest.raises(SteerlabError, match=r"p.jsonl:2: invalid JSON"):
        pairs.load_pairs(path)
