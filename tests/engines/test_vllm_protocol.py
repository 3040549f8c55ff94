"""steerlab.engines.vllm.protocol: what travels to vLLM's workers (plain data; no vLLM needed)."""

import json

import pytest
import torch

from steerlab.engines.vllm.protocol import (
    cache_salt,
    capture_request,
    parse_request,
    row_interventions,
    vector_id,
    vector_payload,
)
from steerlab.steering.operators import Intervention


def test_vector_id_is_a_hash_of_the_content():
    v = torch.arange(8, dtype=torch.float32)
    assert vector_id(v) == vector_id(v.clone().double())  # the float32 values, whatever the dtype given
    changed = v.clone()
    changed[3] += 1e-3
    assert vector_id(changed) != vector_id(v)
    assert torch.equal(torch.frombuffer(bytearray(vector_payload(v)), dtype=torch.float32), v)


def test_rows_get_their_own_coefficients_and_only_their_specs():
    v = torch.ones(4)
    everywhere = [Intervention(2, v, torch.tensor([0.0, 1.5, -2.0]), positions="response")]
    some = [Intervention(1, 2 * v, 3.0, operator="ablate", rows=[2]), Intervention(3, 2 * v, 3.0, rows=[2])]
    rows = row_interventions([everywhere, some], 3, response_starts=[5, 6, 7])
    assert rows[0] == []  # coefficient 0 of add is the identity: left out, so the row stays unsteered
    assert [(i["l"], i["c"], i["rs"]) for i in rows[1]] == [(2, 1.5, 6)]
    assert [(i["l"], i["op"], i["c"]) for i in rows[2]] == [(2, "add", -2.0), (1, "ablate", 3.0), (3, "add", 3.0)]
    assert rows[2][1]["v"] == vector_id(2 * v) != rows[2][0]["v"]


def test_cap_is_kept_at_coefficient_zero_and_thresholds_travel():
    iv = Intervention(0, torch.ones(4), 0.0, operator="cap", ceiling=1.5, floor=-0.5)
    (row,) = row_interventions([[iv]], 1)
    assert row[0]["op"] == "cap" and row[0]["ceil"] == 1.5 and row[0]["floor"] == -0.5


def test_cache_salt_separates_conditions_and_shares_identical_ones():
    item = {"l": 2, "v": "abc", "op": "add", "c": 1.0, "pos": "all", "sc": "raw", "ref": None, "ceil": None,
            "floor": None, "rs": None}  # fmt: skip
    assert cache_salt([], 10) is None  # unsteered rows keep sharing the plain prefix cache
    assert cache_salt([item], 10) == cache_salt([dict(item)], 10)
    assert cache_salt([item], 10) == cache_salt([item], 99)  # "all" steers every token alike
    assert cache_salt([item], 10) != cache_salt([{**item, "c": 2.0}], 10)
    assert cache_salt([item], 10) != cache_salt([{**item, "v": "abd"}], 10)
    positional = {**item, "pos": "response"}
    assert cache_salt([positional], 10) != cache_salt([positional], 11)  # where the prompt ends matters
    assert cache_salt([item], 10) != cache_salt([item], 10, lora="/adapter")
    salt = cache_salt([positional], 10)
    assert len(salt) <= 128 and not set("@/\\") & set(salt)  # vLLM's rules for cache_salt


def test_requests_parse_from_dicts_json_strings_and_lists():
    item = {"l": 1, "v": "x", "op": "add", "pos": "all", "c": 2.0}
    assert parse_request(None) is None and parse_request({"other": 1}) is None
    assert parse_request({"steerlab": [item]}) == {"steer": [item], "capture": None}
    over_http = {"steerlab": json.dumps({"steer": [item], "capture": capture_request("k", [0], 3)})}
    parsed = parse_request(over_http)
    assert parsed["steer"] == [item] and parsed["capture"]["key"] == "k" and parsed["capture"]["P"] == 3
    with pytest.raises(ValueError, match="missing"):
        parse_request({"steerlab": [{"l": 1}]})
    with pytest.raises(ValueError, match="unknown operator"):
        parse_request({"steerlab": [{**item, "op": "scale"}]})
