"""The ``vllm`` engine (:mod:`.engine`, host side), its worker extension (:mod:`.worker`, inside vLLM's
worker processes) and the plain-data protocol between them (:mod:`.protocol`). Importing this package
imports no vLLM; :class:`~steerlab.engines.vllm.engine.VllmEngine` does, when it starts."""
