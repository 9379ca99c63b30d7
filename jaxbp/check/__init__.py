"""``jaxbp.check``: everything that compares a gradient with the truth and reports.

What lives here: ``verify`` (dense nets and ``jaxbp.nn`` models), ``check_module``,
``check_vjp``/``custom_vjp`` and ``checking()``, ``check_intermediates``, the
localization fits, finite differences, the report types and their views, the
planted mutants and the selftest.

May import: ``jaxbp.nn`` and ``jaxbp.core`` (the layers below), never ``train``
or ``cli``. Public names are re-exported from ``jaxbp``.
"""
