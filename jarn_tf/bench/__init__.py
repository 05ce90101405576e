"""Benchmarks: time and memory per training mode (``training``), attacks against their references
(``attacks``), the ``gan`` mode per regulariser (``gan``), FLOPs per training step (``flops``).

``python -m jarn_tf.bench`` runs ``jarn_tf.bench.training`` (``__main__.py``).
"""
