"""make_step and the data-parallel helpers, against a plain Optax loop over jax.grad."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxbp
from jaxbp import rtol_for
from tests._nets import assert_close, make_problem

NETS = {
    "tanh-softmax-nll": jaxbp.Network(sizes=(3, 5, 4), activations=("tanh", "softmax"), loss="nll"),
    "relu-relu-squared": jaxbp.Network(sizes=(4, 6, 5, 2), activations=("relu", "gelu", "identity"),
                                       loss="squared"),
    "sigmoid-binary_nll": jaxbp.Network(sizes=(2, 4, 1), activations=("softplus", "sigmoid"),
                                        loss="binary_nll"),
    "hinge": jaxbp.Network(sizes=(3, 4, 1), activations=("leaky_relu", "identity"), loss="hinge"),
}
OPTIMIZERS = {
    "sgd": lambda: optax.sgd(0.1),
    "momentum": lambda: optax.sgd(0.05, momentum=0.9),
    "adam": lambda: optax.adam(1e-2),
    "rmsprop": lambda: optax.rmsprop(1e-2),
    "chain-clip-adamw": lambda: optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-2)),
}


def reference_run(net, optimizer, params, batches):
    """The plain Optax loop with jax.grad: the ground truth."""
    @jax.jit
    def update(params, opt_state, X, Y):
        loss, grads = jax.value_and_grad(net.batch_loss)(params, X, Y)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    opt_state, losses = optimizer.init(params), []
    for X, Y in batches:
        params, opt_state, loss = update(params, opt_state, X, Y)
        losses.append(loss)
    return params, np.stack(losses)


# Each net with one optimizer (every loss and every optimizer kind is covered once).
CASES = {f"{n}-{o}": (n, o) for n, o in zip(NETS, ["sgd", "momentum", "adam", "rmsprop"])}
CASES["tanh-softmax-nll-chain-clip-adamw"] = ("tanh-softmax-nll", "chain-clip-adamw")


@pytest.mark.parametrize("grad", jaxbp.train._train.GRADS)
@pytest.mark.parametrize("case", CASES)
def test_step_trajectory_matches_plain_optax_loop_float64(case, grad):
    net_name, opt_name = CASES[case]
    net, optimizer = NETS[net_name], OPTIMIZERS[opt_name]()
    params, _, _ = make_problem(net, 0, 8, jnp.float64)
    batches = [make_problem(net, t, 8, jnp.float64)[1:] for t in range(1, 5)]
    want_params, want_losses = reference_run(net, optimizer, params, batches)
    step = jaxbp.make_step(net, optimizer, grad=grad)
    opt_state, losses = optimizer.init(params), []
    for X, Y in batches:
        params, opt_state, loss = step(params, opt_state, X, Y)
        losses.append(loss)
    assert_close(params, want_params, rtol_for(jnp.float64))
    np.testing.assert_allclose(np.stack(losses), want_losses, rtol=1e-12, atol=0)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64], ids=["float32", "float64"])
def test_sgd_step_is_params_minus_lr_times_jax_grad(dtype):
    net = NETS["tanh-softmax-nll"]
    params, X, Y = make_problem(net, 3, 16, dtype)
    step = jaxbp.make_step(net, optax.sgd(0.5), grad="manual")
    new, _, loss = step(params, optax.sgd(0.5).init(params), X, Y)
    g = jax.jit(jax.grad(net.batch_loss))(params, X, Y)
    want = jax.tree.map(lambda p, d: p - 0.5 * np.asarray(d), params, g)
    assert_close(new, want, rtol_for(dtype))
    assert abs(float(loss) - float(net.batch_loss(params, X, Y))) <= 10 * rtol_for(dtype)
    assert loss.dtype == dtype and all(leaf.dtype == dtype for leaf in jax.tree.leaves(new))


def test_step_is_pure_and_does_not_consume_its_inputs():
    net, optimizer = NETS["relu-relu-squared"], optax.adam(1e-2)
    params, X, Y = make_problem(net, 1, 4, jnp.float64)
    step = jaxbp.make_step(net, optimizer)
    state = optimizer.init(params)
    first = step(params, state, X, Y)
    again = step(params, state, X, Y)  # same inputs, still alive, same answer
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), first, again))
    changed = jax.tree.map(lambda a, b: not bool(jnp.array_equal(a, b)), first[0], params)
    assert any(jax.tree.leaves(changed))


def test_one_device_mesh_gives_the_unsharded_numbers():
    net, optimizer = NETS["tanh-softmax-nll"], optax.adam(1e-2)
    params, X, Y = make_problem(net, 2, 8, jnp.float64)
    mesh = jaxbp.batch_mesh(1)
    plain = jaxbp.make_step(net, optimizer)(params, optimizer.init(params), X, Y)
    p, s = jaxbp.replicate(mesh, (params, optimizer.init(params)))
    sharded = jaxbp.make_step(net, optimizer, mesh=mesh)(p, s, *jaxbp.shard_batch(mesh, X, Y))
    assert_close(sharded[0], plain[0], rtol_for(jnp.float64))
    assert abs(float(sharded[2]) - float(plain[2])) <= 1e-14


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(grad="finite"), ValueError, "grad: expected one of 'manual', 'autodiff', got 'finite'"),
    (dict(optimizer=optax.adam), TypeError, "optimizer: expected an optax.GradientTransformation"),
    (dict(net="tanh"), TypeError, "net: expected a jaxbp.Network or jaxbp.nn.Sequential, got str"),
    (dict(mesh="cpu"), TypeError, "mesh: expected a one-axis jax.sharding.Mesh named 'batch'"),
], ids=["grad", "optimizer", "net", "mesh"])
def test_make_step_rejects_bad_arguments(kwargs, error, match):
    args = dict(net=NETS["hinge"], optimizer=optax.sgd(0.1)) | kwargs
    with pytest.raises(error, match=match):
        jaxbp.make_step(args.pop("net"), args.pop("optimizer"), **args)


def test_mesh_and_sharding_helpers_reject_bad_arguments():
    n = jax.device_count()
    with pytest.raises(ValueError, match=rf"num_devices: expected an int in 1\.\.{n}"):
        jaxbp.batch_mesh(n + 1)
    with pytest.raises(ValueError, match="num_devices"):
        jaxbp.batch_mesh(0)
    with pytest.raises(ValueError, match=r"arrays\[1\]: expected a leading batch axis"):
        jaxbp.shard_batch(jaxbp.batch_mesh(1), np.ones((2, 3)), np.float32(1.0))


# Four CPU devices need XLA_FLAGS before JAX starts: a fresh interpreter.
_FOUR_DEVICES = textwrap.dedent("""
    import json, jax, jax.numpy as jnp, numpy as np, optax, jaxbp
    jax.config.update("jax_enable_x64", True)
    jax.config.update("jax_numpy_rank_promotion", "raise")
    out = {"device_count": jax.device_count()}
    net = jaxbp.Network(sizes=(5, 16, 3), activations=("tanh", "softmax"), loss="nll")
    rng = np.random.default_rng(0)
    for dtype in ("float32", "float64"):
        params = net.init(jax.random.key(0), dtype=dtype)
        data = [(rng.standard_normal((12, 5)).astype(dtype),
                 np.eye(3, dtype=dtype)[rng.integers(0, 3, 12)]) for _ in range(6)]
        finals = {}
        grads = ("manual", "autodiff") if dtype == "float64" else ("manual",)
        for grad in grads:
            for n in (1, 4):
                mesh = jaxbp.batch_mesh(n)
                optimizer = optax.adam(1e-2)
                step = jaxbp.make_step(net, optimizer, grad=grad, mesh=mesh)
                p, s = jaxbp.replicate(mesh, (params, optimizer.init(params)))
                for X, Y in data:
                    Xs, Ys = jaxbp.shard_batch(mesh, X, Y)
                    p, s, loss = step(p, s, Xs, Ys)
                finals[grad, n] = [np.asarray(leaf) for leaf in jax.tree.leaves(p)]
                if n == 4 and dtype == "float64":
                    out["x_devices"] = len(Xs.sharding.device_set)
                    out["x_shard_rows"] = Xs.addressable_shards[0].data.shape[0]
                    out["params_replicated"] = all(l.sharding.is_fully_replicated
                                                   for l in jax.tree.leaves(p))
                    hlo = step.lower(p, s, Xs, Ys).compile().as_text()
                    out["all_reduce"] = "all-reduce" in hlo
        ref = finals[grads[-1], 1]
        out[dtype] = {f"{g}_{n}": max(float(np.max(np.abs(a - b))) for a, b in zip(v, ref))
                      for (g, n), v in finals.items()}
    try:
        jaxbp.shard_batch(jaxbp.batch_mesh(4), np.ones((6, 5)))
    except ValueError as e:
        out["indivisible_error"] = str(e)
    print(json.dumps(out))
""")


def test_four_devices_give_one_device_numbers_up_to_round_off():
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4")
    proc = subprocess.run([sys.executable, "-c", _FOUR_DEVICES], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["device_count"] == 4
    # The batch really is split (3 rows of 12 per device), params stay whole on every device,
    # and XLA sums the gradient across devices itself.
    assert (out["x_devices"], out["x_shard_rows"]) == (4, 3)
    assert out["params_replicated"] and out["all_reduce"]
    for key, diff in out["float64"].items():
        assert diff <= 1e-12, (key, diff)
    for key, diff in out["float32"].items():
        assert diff <= 1e-5, (key, diff)
    assert "divisible by the 4 devices" in out["indivisible_error"]
