"""Engines: where steered generation and teacher-forced scoring run (:mod:`steerlab.engines.base`).

``hf`` (:class:`~steerlab.engines.hf.HfEngine`, the reference and default) and ``vllm``
(:class:`~steerlab.engines.vllm.engine.VllmEngine`, imported only when asked for). Pipelines take an
engine, or a loaded model that they run on the ``hf`` engine.
"""
