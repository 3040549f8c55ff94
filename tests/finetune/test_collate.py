"""Training batches: the shared left-padded collation, labels on the same layout."""

import torch
from finetune_data import EXAMPLES, MULTI

from steerlab.activations.capture import collate
from steerlab.finetune.collate import collate_train
from steerlab.finetune.examples import IGNORE, TrainExample, build_example
from steerlab.finetune.training import batch_loss
from steerlab.model.chat import EncodedChat


def test_layout_is_the_shared_left_padding_with_labels_aligned():
    examples = [TrainExample([5, 6, 7], [IGNORE, 6, 7]), TrainExample([8], [8]), TrainExample([1, 2], [IGNORE, IGNORE])]
    batch = collate_train(examples, pad_id=0)
    assert batch.input_ids.tolist() == [[5, 6, 7], [0, 0, 8], [0, 1, 2]]
    assert batch.attention_mask.tolist() == [[1, 1, 1], [0, 0, 1], [0, 1, 1]]
    assert batch.position_ids.tolist() == [[0, 1, 2], [0, 0, 0], [0, 0, 1]]
    assert batch.labels.tolist() == [[IGNORE, 6, 7], [IGNORE, IGNORE, 8], [IGNORE, IGNORE, IGNORE]]
    shared = collate([EncodedChat(e.input_ids, 0) for e in examples], 0, torch.device("cpu"))
    assert torch.equal(batch.input_ids, shared.input_ids) and torch.equal(batch.attention_mask, shared.attention_mask)
    assert torch.equal(batch.position_ids, shared.position_ids())


def test_batched_loss_equals_per_example(tiny_any):
    tok = tiny_any.tokenizer
    examples = [build_example(tok, m) for m in [*EXAMPLES, MULTI]]
    with torch.no_grad():
        batched, n = batch_loss(tiny_any.model, collate_train(examples, tok.pad_token_id))
        single = [batch_loss(tiny_any.model, collate_train([e], tok.pad_token_id)) for e in examples]
    assert n == sum(s[1] for s in single)
    torch.testing.assert_close(batched, sum(s[0] for s in single), rtol=1e-4, atol=1e-4)


def test_left_padded_training_step_has_finite_gradients(tiny_any):
    """Padding rows attend to nothing; their logits must not poison the gradient."""
    tok = tiny_any.tokenizer
    examples = [build_example(tok, m) for m in [EXAMPLES[0], MULTI]]
    batch = collate_train(examples, tok.pad_token_id)
    assert (batch.attention_mask == 0).any()
    tiny_any.model.zero_grad(set_to_none=True)
    loss, n = batch_loss(tiny_any.model, batch)
    (loss / n).backward()
    grads = [p.grad for p in tiny_any.model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    tiny_any.model.zero_grad(set_to_none=True)
