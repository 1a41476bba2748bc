"""Shared schemas, below the estimator, the backends and the governor.

Board descriptions and their frequency domains as objects (``board``, ``domains``), the energy model
(``energy``), model descriptions (``workload``, ``onnx_model``) and config loading (``loading``).
Nothing here does I/O on hardware; every other package may import it, it imports none of them.
"""
