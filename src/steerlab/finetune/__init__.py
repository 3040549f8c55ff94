"""LoRA fine-tuning with an assistant-only loss, resumable as a run stage.

Modules: :mod:`.config` (settings and their defaults), :mod:`.examples` (assistant-only labels),
:mod:`.collate` (training batches), :mod:`.targets` (what LoRA adapts), :mod:`.fingerprint` (which
base an adapter belongs to), :mod:`.training` (:func:`~.training.run_finetune` and the loop).
"""
