"""The NumPy bridge: run the user's unchanged NumPy code with NumPy routed to jax.numpy.

What lives here, one concept per private file:

* ``_values``: raw values (NumPy on the host, jax tracers under a transformation), the
  per-thread call state, and ``UntraceableError``.
* ``_array``: ``BArray``, the NumPy-like array that accepts in-place writes (views that write
  through, ``+=`` on slices, boolean masks) as functional updates of its storage.
* ``_namespace``: ``NUMPY``, the dispatching namespace that stands in for ``numpy`` (NumPy for
  concrete arguments, ``jax.numpy`` for traced ones; ``np.random`` on the host).
* ``_swap``: which modules hold the user's code, and swapping their NumPy names for the call.
* ``_scrub``: nothing traced leaks into globals, dicts or objects after the call.
* ``_as_jax``: ``as_jax(fn, scope=)``, which puts these together.

This subpackage imports only ``jaxbp.core`` (and nothing else of jaxbp); the checks of
NumPy code (``jaxbp.check_layer``, ``check_loss``, ``check_modules``) build on it.
"""

from jaxbp.bridge._array import BArray
from jaxbp.bridge._as_jax import as_jax
from jaxbp.bridge._swap import is_user_module
from jaxbp.bridge._values import UntraceableError

__all__ = ["BArray", "UntraceableError", "as_jax", "is_user_module"]
