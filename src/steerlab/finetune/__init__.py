"""LoRA fine-tuning, SFT (assistant-only loss) or DPO (preference pairs), resumable as a run stage.

Modules: :mod:`.config` (settings and their defaults), :mod:`.examples` (assistant-only labels),
:mod:`.collate` (training batches), :mod:`.preference` (chosen/rejected examples, the base-model
reference, the DPO objective), :mod:`.loss` (log-likelihoods, the SFT and DPO losses), :mod:`.loop`
(the one training loop), :mod:`.stage` (the adapter directory as a stage, its records),
:mod:`.targets` (what LoRA adapts), :mod:`.fingerprint` (which base an adapter belongs to),
:mod:`.training` (:func:`~.training.run_finetune`, :func:`~.training.run_finetune_pairs`).
"""
