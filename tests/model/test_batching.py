"""The one collate: left padding, attention mask, position ids; batched == one sequence at a time."""

import pytest
import torch

from steerlab.errors import SteerlabError
from steerlab.model.batching import attention_mask, collate, pad_sequences, position_ids
from steerlab.model.chat import encode_chat

LONG_Q = "how should I store fresh bread so it stays soft and what about the crust " * 3


def test_collate_left_pads_with_positions(tiny_llama):
    tok = tiny_llama.tokenizer
    short = encode_chat(tok, "hi", "yes")
    long = encode_chat(tok, LONG_Q, "yes")
    batch = collate([short, long], tok.pad_token_id, torch.device("cpu"))
    pad = len(long.ids) - len(short.ids)
    assert batch.input_ids.shape == (2, len(long.ids)) and batch.width == len(long.ids)
    assert batch.input_ids[0, :pad].eq(tok.pad_token_id).all()
    assert batch.input_ids[0, pad:].tolist() == short.ids
    assert batch.attention_mask[0].tolist() == [0] * pad + [1] * len(short.ids)
    assert batch.position_ids()[0, pad:].tolist() == list(range(len(short.ids)))
    assert batch.position_ids()[0, :pad].tolist() == [0] * pad
    assert batch.position_ids()[1].tolist() == list(range(len(long.ids)))
    assert batch.prompt_lens.tolist() == [short.prompt_len, long.prompt_len]
    assert batch.lengths.tolist() == [len(short.ids), len(long.ids)]
    assert batch.pads.tolist() == [pad, 0]


def test_collate_token_id_lists():
    batch = collate([[5, 6, 7], [8]], pad_id=0)
    assert batch.input_ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert batch.attention_mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert batch.prompt_lens.tolist() == [3, 1]  # plain id lists: all prompt
    assert collate([[5, 6, 7], [8]], 0, prompt_lens=[2, 1]).prompt_lens.tolist() == [2, 1]
    assert collate([[1, 2]], None).input_ids.tolist() == [[1, 2]]  # no pad token: pads with 0 (masked)
    with pytest.raises(SteerlabError, match="2 prompt lengths given for 1 sequences"):
        collate([[1, 2]], 0, prompt_lens=[1, 2])
    with pytest.raises(SteerlabError, match="no sequences"):
        collate([], 0)


def test_pad_sequences_sides_and_width():
    rows = [[1, 2, 3], [4]]
    assert pad_sequences(rows, -1).tolist() == [[1, 2, 3], [-1, -1, 4]]
    assert pad_sequences(rows, -1, "right").tolist() == [[1, 2, 3], [4, -1, -1]]
    assert pad_sequences(rows, 0, width=4).tolist() == [[0, 1, 2, 3], [0, 0, 0, 4]]
    assert pad_sequences([[], [7]], 9).tolist() == [[9], [7]]
    assert attention_mask([3, 1]).tolist() == [[1, 1, 1], [0, 0, 1]]
    right = attention_mask([3, 1], side="right")
    assert position_ids(right).tolist() == [[0, 1, 2], [0, 0, 0]]
    with pytest.raises(SteerlabError, match="padding side 'middle'"):
        pad_sequences(rows, 0, "middle")  # type: ignore[arg-type]
    with pytest.raises(SteerlabError, match="does not fit a batch of width 2"):
        pad_sequences(rows, 0, width=2)


def test_batched_forward_equals_single(tiny_any):
    """Logits of every real token are the same in a left-padded batch and alone (fp32, 1e-5)."""
    lm = tiny_any
    tok = lm.tokenizer
    seqs = [encode_chat(tok, q, a) for q, a in [("hi", "yes"), (LONG_Q, "no, never"), ("is the fox quick", "x")]]
    batch = collate(seqs, tok.pad_token_id, lm.device)
    with torch.no_grad():
        batched = lm.model(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids()
        ).logits
        for row, seq in enumerate(seqs):
            one = collate([seq], tok.pad_token_id, lm.device)
            alone = lm.model(
                input_ids=one.input_ids, attention_mask=one.attention_mask, position_ids=one.position_ids()
            ).logits[0]
            start = int(batch.pads[row])
            torch.testing.assert_close(batched[row, start:], alone, rtol=1e-5, atol=1e-5)
