"""``jaxbp.train``: training steps built on manual backprop.

What lives here: ``make_step`` (Optax updates from your gradient function), the
checked step (``check_every``), the private DP-SGD step and the sharding helpers
(``batch_mesh``, ``replicate``, ``shard_batch``).

May import: ``jaxbp.check``, ``jaxbp.nn`` and ``jaxbp.core``, never ``cli``.
Public names are re-exported from ``jaxbp``.
"""
