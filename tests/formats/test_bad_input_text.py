"""The shared readers of text files (steerlab.io.files, steerlab.io.tables) on any bytes: text comes
back exactly when it is UTF-8, and everything else is one clear SteerlabError naming the file and
where the bad byte is."""

import json

from bad_inputs import BAD_INPUT, LONG_NAME, NOT_UTF8, check_message, read_or_clear_error, scratch, write
from hypothesis import given
from hypothesis import strategies as st

from steerlab.errors import SteerlabError
from steerlab.io.files import file_problem, iter_lines, parse_json, read_json, read_text
from steerlab.io.tables import read_csv, read_jsonl


def _utf8(data: bytes) -> str | None:
    try:
        return data.removeprefix(b"\xef\xbb\xbf").decode("utf-8")
    except UnicodeDecodeError:
        return None


@BAD_INPUT
@given(data=st.binary(max_size=300) | st.text(max_size=100).map(str.encode))
def test_read_text_is_exactly_utf8(data):
    with scratch() as tmp:
        path = write(tmp / "f.txt", data)
        message = read_or_clear_error(lambda p: read_text(p, "text file"), path)
        assert (message is None) == (_utf8(data) is not None), message
        if message is None:
            assert read_text(path) == _utf8(data)
            universal = _utf8(data).replace("\r\n", "\n").replace("\r", "\n")  # open()'s newline=None
            assert "".join(line for _, line in iter_lines(path)) == universal
        else:
            assert message.startswith(f"text file {path}: not UTF-8 text") and "at line" in message


@BAD_INPUT
@given(
    lines=st.lists(
        st.text(alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\r\n"), max_size=20),
        min_size=1,
        max_size=6,
    ),
    bad_line=st.integers(0, 5),
    bad=st.sampled_from(NOT_UTF8),
)
def test_the_bad_line_and_column_are_named(lines, bad_line, bad):
    bad_line %= len(lines)
    data = b"\n".join(line.encode() + (bad if i == bad_line else b"") for i, line in enumerate(lines))
    with scratch() as tmp:
        path = write(tmp / "f.jsonl", data)
        expected = f"at line {bad_line + 1}, column {len(lines[bad_line]) + 1} cannot be decoded"
        for read in (read_text, lambda p: list(iter_lines(p))):
            try:
                read(path)
            except SteerlabError as exc:
                check_message(str(exc), path, expected)
            else:
                raise AssertionError("accepted")


@BAD_INPUT
@given(text=st.text(max_size=60) | st.sampled_from(["[" * 5000, "9" * 5000, '{"a": NaN}', "\ufeff{}", "1e999"]))
def test_parse_json_returns_or_names_the_place(text):
    try:
        expected = json.loads(text)
    except (ValueError, RecursionError):
        expected = SteerlabError
    try:
        value = parse_json(text, "where")
    except SteerlabError as exc:
        assert expected is SteerlabError and str(exc).startswith("where: not valid JSON ("), str(exc)
    else:
        assert value == expected or (value != value and expected != expected)  # NaN


def test_csv_cells_of_any_size_and_bad_rows(tmp_path):
    long = "x" * 300_000
    path = write(tmp_path / "t.csv", f'text\n"{long}"\n')
    assert read_csv(path, "table")[1] == [(2, {"text": long})]
    path = write(tmp_path / "bad.csv", b'a,b\n1,2\n"\xe9",3\n')
    message = read_or_clear_error(lambda p: read_csv(p, "table"), path)
    assert message == (
        f"table {path}: not UTF-8 text: byte 0xe9 at line 3, column 2 cannot be decoded; expected a "
        "UTF-8 text file (save it as UTF-8)"
    )


def test_jsonl_and_json_on_unusable_paths(tmp_path):
    long = tmp_path / (LONG_NAME + ".jsonl")
    for read in (lambda p: read_jsonl(p, "rows file"), lambda p: read_json(p, "rows file")):
        message = read_or_clear_error(read, long)
        assert message == f"rows file {long}: file name too long (306 bytes in one name; file systems allow 255)"
        assert read_or_clear_error(read, tmp_path) == f"rows file {tmp_path}: is a directory, expected a file"
    assert file_problem("a\0b") == "invalid path (it contains a NUL byte)"
    child = write(tmp_path / "f", "x") / "child"
    assert file_problem(child) == "a parent folder in the path is a file, not a directory"
