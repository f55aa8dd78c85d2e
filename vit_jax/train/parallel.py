"""Where the pure steps run, chosen in this one place (`config.parallel`).

- `jit` (default): `jax.jit` over the (data, fsdp) mesh of `config.mesh` (train/sharding.py):
  each state leaf is placed by the sharding rule (replicated under pure data parallelism, large
  tensors split over `fsdp` under FSDP), the batch is split over every device, and XLA inserts
  the collectives.
- `pmap`: data parallelism only: the state is replicated with a leading device axis, each host
  batch is reshaped to [local devices, B / local devices, ...], and the step averages gradients
  with `pmean`. A mesh with fsdp > 1 is refused (config validation).

A single device needs nothing special: it is a mesh of one. Both strategies take per-process
(host-local) numpy batches and donate the state buffers. `state_shardings` is where a state of
the given shapes lives (also what Orbax restores into); `host_state` turns a device state into
the global arrays that checkpoints hold.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from vit_jax.train import sharding
from vit_jax.train.folders import writable_folder
from vit_jax.train.sharding import MeshOptions, ShardingOptions

STRATEGIES = ("jit", "pmap")  # the keys of `make`
PMAP_AXIS = "data"
DEFAULT_MESH, DEFAULT_SHARDING = MeshOptions(), ShardingOptions()  # pure data parallelism


def check_batch_size(
    global_batch_size: int, grad_accum_steps: int = 1, *, field: str = "batch_size"
) -> None:
    """Raises ValueError, naming `field`, unless every device (and every micro-batch) gets an
    equal share."""
    devices = jax.device_count()
    if global_batch_size % (devices * grad_accum_steps):
        accum = f" x grad_accum_steps={grad_accum_steps}" if grad_accum_steps > 1 else ""
        raise ValueError(
            f"{field}={global_batch_size} is not divisible by {devices} devices{accum}: use a "
            f"multiple of {devices * grad_accum_steps}."
        )


def global_replicated() -> NamedSharding:
    """Replicated over every device of every process."""
    return sharding.replicated(sharding.make_mesh(DEFAULT_MESH))


def to_host(x: jax.Array) -> np.ndarray:
    """A replicated (or per-device identical) array -> numpy, also in multi-process runs."""
    return np.asarray(x.addressable_data(0))


@dataclasses.dataclass(frozen=True)
class MeshParallel:
    """jit over a (data, fsdp) device mesh, the state placed by the sharding rule."""

    mesh: jax.sharding.Mesh
    options: ShardingOptions = DEFAULT_SHARDING
    axis_name = None  # the steps need no collective: XLA derives them from the shardings

    @classmethod
    def create(
        cls,
        devices: list | None = None,
        mesh: MeshOptions = DEFAULT_MESH,
        options: ShardingOptions = DEFAULT_SHARDING,
    ) -> MeshParallel:
        return cls(sharding.make_mesh(mesh, devices), options)

    @property
    def replicated(self) -> NamedSharding:
        return sharding.replicated(self.mesh)

    @property
    def sharded(self) -> NamedSharding:
        return sharding.batch_sharding(self.mesh)

    def state_shardings(self, abstract_state):
        """Where each leaf of a state of these shapes lives."""
        return sharding.state_shardings(abstract_state, self.mesh, self.options)

    def put_state(self, state):
        return jax.device_put(state, self.state_shardings(state))

    def put_batch(self, batch: dict) -> dict:
        return {
            k: jax.make_array_from_process_local_data(self.sharded, np.asarray(v))
            for k, v in batch.items()
        }

    def compile_train(self, train_step: Callable, state_shardings=None) -> Callable:
        """jit of train_step(state, batch) with the state kept where `state_shardings` puts it
        (default: wherever the first state given lives)."""
        state = state_shardings
        return jax.jit(
            train_step,
            in_shardings=(state, self.sharded) if state is not None else None,
            out_shardings=(state, self.replicated) if state is not None else None,
            donate_argnums=0,
        )

    def compile_eval(self, eval_step: Callable, param_shardings=None) -> Callable:
        params = self.replicated if param_shardings is None else param_shardings
        return jax.jit(
            eval_step, in_shardings=(params, self.sharded), out_shardings=self.replicated
        )

    def host_state(self, state):
        return state

    def metric(self, x: jax.Array) -> np.ndarray:
        return to_host(x)


@dataclasses.dataclass(frozen=True)
class PmapParallel:
    """pmap over the local devices, with a device axis in front of state and batch."""

    axis_name = PMAP_AXIS

    @classmethod
    def create(cls) -> PmapParallel:
        return cls()

    @property
    def _mesh(self) -> jax.sharding.Mesh:
        return jax.sharding.Mesh(np.array(jax.local_devices()), (PMAP_AXIS,))

    def state_shardings(self, abstract_state):
        """Checkpoints and initialisation use global arrays replicated over every device."""
        replicated = global_replicated()
        return jax.tree.map(lambda _: replicated, abstract_state)

    def put_state(self, state):
        n = jax.local_device_count()
        sharding_ = NamedSharding(self._mesh, P(PMAP_AXIS))
        return jax.tree.map(
            lambda x: jax.device_put(np.stack([host_value(x)] * n), sharding_), state
        )

    def put_batch(self, batch: dict) -> dict:
        n = jax.local_device_count()
        return {k: np.asarray(v).reshape(n, -1, *np.shape(v)[1:]) for k, v in batch.items()}

    def compile_train(self, train_step: Callable, state_shardings=None) -> Callable:
        return jax.pmap(train_step, axis_name=PMAP_AXIS, donate_argnums=0)

    def compile_eval(self, eval_step: Callable, param_shardings=None) -> Callable:
        return jax.pmap(eval_step, axis_name=PMAP_AXIS)

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


def use_compilation_cache(directory: str) -> str | None:
    """Turns on JAX's persistent compilation cache in `directory` ("~" expanded; "" leaves it
    off; a gs:// URL as it is), unless the JAX_COMPILATION_CACHE_DIR environment variable
    already chose one. Returns the directory in use, or None; raises ValueError if it cannot be
    written. Compiled programs are keyed by their HLO, compiler and devices, so a rerun or a
    resume of the same model with the same schedule and batch skips compilation (the
    schedule's constants are in the HLO). Every program is kept, the many that compile in
    under a second too (JAX's default keeps only longer ones; a run compiles ~100 small ones,
    most of them Orbax's slicing of the state at a save): a restart then compiles nothing,
    unless JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS says otherwise. A cache the environment
    or JAX's config chose is used with JAX's own rules."""
    chosen = os.environ.get("JAX_COMPILATION_CACHE_DIR") or jax.config.jax_compilation_cache_dir
    if chosen:
        return chosen
    if not directory:
        return None
    if "://" not in directory:  # JAX reads and writes a gs:// cache itself
        directory = writable_folder(
            directory,
            "compilation_cache_dir",
            "name a folder you can write to, or '' to turn the cache off",
        )
    jax.config.update("jax_compilation_cache_dir", directory)
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    return directory


def host_value(x) -> np.ndarray:
    """numpy value of a state leaf: a replicated jax array (read locally) or a host value."""
    return to_host(x) if isinstance(x, jax.Array) else np.asarray(x)


def make(
    strategy: str,
    devices: list | None = None,
    mesh: MeshOptions = DEFAULT_MESH,
    options: ShardingOptions = DEFAULT_SHARDING,
) -> MeshParallel | PmapParallel:
    """The parallel strategy named by `config.parallel`, one of STRATEGIES (checked with the
    config by `vit_jax.train.config.validate`); jit runs over the mesh `mesh` of `devices`
    (default: all) with the state placed by `options`."""
    if strategy == "pmap":
        return PmapParallel.create()
    return MeshParallel.create(devices, mesh, options)
