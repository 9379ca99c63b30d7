"""Checkpoints for the experiment scripts: a pytree of arrays plus JSON, saved with Orbax.

One checkpoint is one Orbax step folder, ``DIR/<step>/``, holding two items:

- ``state``: any pytree of arrays (params and optimizer states as NamedTuples, tuples, dicts;
  ``jax.Array``s on any devices or NumPy arrays), written with ``ocp.args.StandardSave``;
- ``meta``: a JSON dict (the step, the flags that change the computation, RNG states,
  counters), written with ``ocp.args.JsonSave``.

Orbax writes a step into ``<step>.orbax-checkpoint-tmp-<n>/`` and renames it to ``<step>/``
only once every item is on disk, so a checkpoint is complete or absent: a run killed while
saving leaves the previous one usable, and the next manager removes the leftover. Deleting a
step (beyond the last ``KEEP``) is not atomic, so Orbax only renames it into ``DIR/.deleted/``,
which is emptied here before each save. Saves are
asynchronous (the arrays are copied to host memory, the writing goes on in a thread); call
``close`` before exiting. State is restored as host NumPy arrays shaped like a template, so
it can be placed on any number of devices afterwards.

On top of that, ``save_progress``/``restore_progress`` checkpoint a training run's *progress*,
a dict that a script carries from step to step::

    step       int, the steps done
    runs       {name: pytree}: each run's params, optimizer state, ... (any pytrees of arrays)
    history    {column: list of per-step scalars}, all of one length, ``step``
    order      {"rng": a NumPy bit generator's state, "perm": an int array}: the data order
    extra      any pytree of arrays (say a PRNG key)
    counters   any JSON dict (say seconds spent, an accountant's step count)

and ``start_step`` decides where a run starts: the flags that change the computation (one
JSON dict) must equal the checkpoint's.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

import jax
import numpy as np

from _common import FlagError, host

KEEP = 3  # the last few checkpoints; older ones are deleted once a newer one is complete
TRASH = ".deleted"  # not a step name: Orbax's listing and ``steps_in`` skip it


def manager(directory: str, *, keep: int = KEEP):
    """An Orbax ``CheckpointManager`` over ``directory`` (created if missing)."""
    import orbax.checkpoint as ocp  # only runs that checkpoint need orbax

    _empty_trash(directory)
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           cleanup_tmp_directories=True, todelete_subdir=TRASH)
    return ocp.CheckpointManager(os.path.abspath(directory), options=options,
                                 item_names=("state", "meta"))


def steps_in(directory: str) -> list[int]:
    """The complete checkpoints' steps in ``directory``, oldest first (none if it is missing)."""
    if not os.path.isdir(directory):
        return []
    return sorted(int(name) for name in os.listdir(directory)
                  if name.isdigit() and os.path.isdir(os.path.join(directory, name)))


def save(mngr, step: int, state: Any, meta: dict) -> None:
    """Starts saving ``state`` (a pytree of arrays) and ``meta`` (JSON) as checkpoint ``step``.

    Returns once the arrays are copied off the devices; the files are written in the
    background (``close`` waits for them).
    """
    import orbax.checkpoint as ocp

    mngr.wait_until_finished()  # as mngr.save does first; then nothing is moving into the trash
    _empty_trash(str(mngr.directory))
    mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                            meta=ocp.args.JsonSave(jsonable(meta))))


def read_meta(mngr, step: int) -> dict:
    """The JSON item of checkpoint ``step``."""
    import orbax.checkpoint as ocp

    return mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]


def read_state(mngr, step: int, like: Any) -> Any:
    """The state of checkpoint ``step`` as NumPy arrays, in the pytree structure of ``like``.

    Args:
      like: a pytree with the saved structure; its leaves (arrays of any kind, on any
        devices) give each leaf's shape and dtype.

    Returns:
      The saved pytree with NumPy leaves (place it on devices with e.g. ``jaxbp.replicate``).
    """
    import orbax.checkpoint as ocp

    template = jax.tree.map(lambda x: np.zeros(np.shape(x), np.asarray(x).dtype), like)
    return mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(template)))["state"]


def close(mngr) -> None:
    """Waits for pending saves to be complete on disk, then releases the manager."""
    mngr.wait_until_finished()
    _empty_trash(str(mngr.directory))
    mngr.close()


def _empty_trash(directory: str) -> None:
    # A kill while this runs leaves part of an old step in the trash, never in a step folder.
    shutil.rmtree(os.path.join(directory, TRASH), ignore_errors=True)


def jsonable(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists), for comparisons."""
    return json.loads(json.dumps(value))


def differences(saved: dict, now: dict) -> list[str]:
    """``"key: checkpoint X, now Y"`` for every key whose value differs between two dicts."""
    saved, now = jsonable(saved), jsonable(now)
    return [f"{key}: checkpoint {_show(saved.get(key))}, now {_show(now.get(key))}"
            for key in sorted(set(saved) | set(now)) if saved.get(key) != now.get(key)]


def _show(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(map(str, value))
    return "(unset)" if value is None else str(value)


def start_step(folder: str, *, computation: dict, steps: int, resume: bool,
               checkpoint_every: int | None) -> int | None:
    """The checkpoint step a run starts from (None: step 0), after checking that it may.

    Args:
      folder: the checkpoints' folder, OUT/checkpoints.
      computation: the flags that change the numbers; a checkpoint must have the same.
      steps: the run's --steps; the checkpoint's step may not be past it.
      resume: --resume given; checkpoint_every: --checkpoint-every (None: not given).

    Raises:
      FlagError: --resume with no checkpoint, or with one made with other computation flags
        or past --steps; --checkpoint-every without --resume over existing checkpoints.
    """
    found = steps_in(folder)
    if not resume:
        if checkpoint_every and found:
            raise FlagError("--checkpoint-every", f"{folder} already holds checkpoints (latest: "
                                                  f"step {found[-1]}); allowed: --resume to go "
                                                  f"on from it, or another --out")
        return None
    if not found:
        raise FlagError("--resume", f"no checkpoint in {folder}; a run saves them with "
                                    f"--checkpoint-every N")
    step = found[-1]
    mngr = manager(folder)
    try:
        meta = read_meta(mngr, step)
    finally:
        close(mngr)
    differ = differences(meta["computation"], computation)
    if differ:
        raise FlagError("--resume", f"the checkpoint {os.path.join(folder, str(step))} was made "
                                    f"with other settings ({'; '.join(differ)}); allowed: the "
                                    f"same flags (--steps may grow, --devices may change)")
    if step > steps:
        raise FlagError("--steps", f"the checkpoint in {folder} is at step {step}; allowed: "
                                   f"{step} or more to resume it, got {steps}")
    return step


def save_progress(mngr, progress: dict, *, computation: dict) -> None:
    """Starts saving ``progress`` (see the module docstring) as checkpoint ``progress["step"]``."""
    history = progress["history"]
    for values in history.values():  # device scalars to host once, not at every save
        values[:] = [host(v) for v in values]
    state = dict(runs=progress["runs"], order=progress["order"]["perm"], extra=progress["extra"],
                 history={c: np.array(v, dtype=np.float64) for c, v in history.items()})
    meta = dict(step=progress["step"], computation=computation,
                data_rng=progress["order"]["rng"], counters=progress["counters"])
    save(mngr, progress["step"], state, meta)


def restore_progress(mngr, step: int, fresh: dict) -> dict:
    """The progress saved at ``step``, as host arrays, in the structure of ``fresh`` (step 0's)."""
    meta = read_meta(mngr, step)
    like = dict(runs=fresh["runs"], order=fresh["order"]["perm"], extra=fresh["extra"],
                history={c: np.zeros(step) for c in fresh["history"]})
    state = read_state(mngr, step, like)
    # Orbax hands dicts back with sorted keys: put them back in the script's order.
    return dict(step=step, runs={k: state["runs"][k] for k in fresh["runs"]}, extra=state["extra"],
                history={c: list(state["history"][c]) for c in fresh["history"]},
                order=dict(rng=meta["data_rng"], perm=state["order"]),
                counters=meta["counters"])
