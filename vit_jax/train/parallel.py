"""Where the pure steps run: data parallelism over all devices, chosen in this one place.

- `jit` (default): `jax.jit` over a 1-D `jax.make_mesh` mesh named "data"; the state is
  replicated, the batch is sharded along its first axis, and XLA inserts the gradient all-reduce.
- `pmap`: the state is replicated with a leading device axis, each host batch is reshaped to
  [local devices, B / local devices, ...], and the step averages gradients with `pmean`.

A single device needs nothing special: it is a mesh of one. Both strategies take per-process
(host-local) numpy batches and donate the state buffers. `host_state` turns a device state back
into one global, replicated (jit-layout) state for checkpoints.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

STRATEGIES = ("jit", "pmap")  # the keys of `make`
AXIS = "data"


def check_batch_size(global_batch_size: int, grad_accum_steps: int = 1) -> None:
    """Raises ValueError unless every device (and every micro-batch) gets an equal share."""
    devices = jax.device_count()
    if global_batch_size % (devices * grad_accum_steps):
        raise ValueError(
            f"batch_size={global_batch_size} is not divisible by {devices} devices x "
            f"grad_accum_steps={grad_accum_steps}: use a multiple of {devices * grad_accum_steps}."
        )


def global_replicated() -> NamedSharding:
    """Replicated over every device of every process: the layout of saved checkpoints."""
    mesh = jax.make_mesh((jax.device_count(),), (AXIS,), axis_types=(jax.sharding.AxisType.Auto,))
    return NamedSharding(mesh, P())


def to_host(x: jax.Array) -> np.ndarray:
    """A replicated (or per-device identical) array -> numpy, also in multi-process runs."""
    return np.asarray(x.addressable_data(0))


@dataclasses.dataclass(frozen=True)
class MeshParallel:
    """jit over a data-parallel mesh."""

    mesh: jax.sharding.Mesh
    axis_name = None  # the steps need no collective: XLA derives it from the shardings

    @classmethod
    def create(cls, devices: list | None = None) -> MeshParallel:
        devices = jax.devices() if devices is None else devices
        mesh = jax.make_mesh(
            (len(devices),), (AXIS,), axis_types=(jax.sharding.AxisType.Auto,), devices=devices
        )
        return cls(mesh)

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, P())

    @property
    def sharded(self) -> NamedSharding:
        return NamedSharding(self.mesh, P(AXIS))

    def put_state(self, state):
        return jax.device_put(state, self.replicated)

    def put_batch(self, batch: dict) -> dict:
        return {
            k: jax.make_array_from_process_local_data(self.sharded, np.asarray(v))
            for k, v in batch.items()
        }

    def compile_train(self, train_step: Callable) -> Callable:
        r, s = self.replicated, self.sharded
        return jax.jit(train_step, in_shardings=(r, s, r), out_shardings=(r, r), donate_argnums=0)

    def compile_eval(self, eval_step: Callable) -> Callable:
        r, s = self.replicated, self.sharded
        return jax.jit(eval_step, in_shardings=(r, s), out_shardings=r)

    def put_rng(self, rng: jax.Array) -> jax.Array:
        return jax.device_put(rng, self.replicated)

    def host_state(self, state):
        return state

    def metric(self, x: jax.Array) -> np.ndarray:
        return to_host(x)


@dataclasses.dataclass(frozen=True)
class PmapParallel:
    """pmap over the local devices, with a device axis in front of state and batch."""

    axis_name = AXIS

    @classmethod
    def create(cls) -> PmapParallel:
        return cls()

    @property
    def _mesh(self) -> jax.sharding.Mesh:
        return jax.sharding.Mesh(np.array(jax.local_devices()), (AXIS,))

    def put_state(self, state):
        n = jax.local_device_count()
        sharding = NamedSharding(self._mesh, P(AXIS))
        return jax.tree.map(
            lambda x: jax.device_put(np.stack([host_value(x)] * n), sharding), state
        )

    def put_batch(self, batch: dict) -> dict:
        n = jax.local_device_count()
        return {k: np.asarray(v).reshape(n, -1, *np.shape(v)[1:]) for k, v in batch.items()}

    def compile_train(self, train_step: Callable) -> Callable:
        return jax.pmap(train_step, axis_name=AXIS, in_axes=(0, 0, None), donate_argnums=0)

    def compile_eval(self, eval_step: Callable) -> Callable:
        return jax.pmap(eval_step, axis_name=AXIS)

    def put_rng(self, rng: jax.Array) -> jax.Array:
        return rng

    def host_state(self, state):
        """This process's device-0 copy of the replicated state, as global arrays replicated
        over all devices of all processes (what Orbax saves in multi-process runs)."""
        replicated = global_replicated()
        return jax.tree.map(
            lambda x: jax.make_array_from_process_local_data(
                replicated, np.asarray(x.addressable_data(0))[0]
            ),
            state,
        )

    def metric(self, x: jax.Array) -> np.ndarray:
        return np.asarray(x.addressable_data(0))[0] if x.ndim else to_host(x)


def host_value(x) -> np.ndarray:
    """numpy value of a state leaf: a replicated jax array (read locally) or a host value."""
    return to_host(x) if isinstance(x, jax.Array) else np.asarray(x)


def make(strategy: str, devices: list | None = None) -> MeshParallel | PmapParallel:
    """The parallel strategy named by `config.parallel`, one of STRATEGIES (checked with the
    config by `vit_jax.train.config.validate`); jit runs over `devices` (default: all)."""
    create = {"jit": lambda: MeshParallel.create(devices), "pmap": PmapParallel.create}
    return create[strategy]()
