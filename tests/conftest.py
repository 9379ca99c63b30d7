"""Strict JAX for every test: float64 available, silent rank promotion is an error."""

import os
import tempfile

# Tests run on the CPU even where an accelerator is installed (deterministic numbers).
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Most of the suite's time is XLA compiling; the same programs recur across the xdist workers
# and in the scripts the tests start as subprocesses (which inherit these variables), so one
# on-disk compilation cache serves them all. It changes no number: only compile time.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), f"jaxbp-tests-xla-cache-{os.getuid()}"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
# The tests' programs are small and run a few times each, so XLA's optimization passes cost more
# than they save: without them compiling takes ~30% less CPU. Every number is still computed by
# the same operations (each comparison has its budget); only fusion and scheduling differ.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
# XLA:CPU's older elementwise emitters compile the tests' many tiny programs ~25% faster than
# the new fusion emitters, computing the same operations.
if "xla_cpu_use_fusion_emitters" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + " --xla_cpu_use_fusion_emitters=false").strip()

import jax  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")

# Each new architecture compiles afresh, so examples are few by default (5; the compile-heavy
# model tests set fewer); HYPOTHESIS_PROFILE=thorough runs 500 a test (those with their own
# max_examples keep it). Compilation makes the first example slow; deadlines would only measure that.
settings.register_profile(
    "jaxbp", deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True,
    max_examples=5)
settings.register_profile(
    "thorough", deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=500)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "jaxbp"))
