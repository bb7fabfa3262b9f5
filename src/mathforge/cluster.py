"""Running on many GPUs and nodes: data-parallel shards of the inference stages, and the guards the
training stages need under DeepSpeed ZeRO-3 and FSDP.

**Shards** (search, evaluation). ``accelerate launch --num_processes N -m mathforge.search ...`` (or
torchrun, or one launch per node with ``--num_machines``) starts N copies of an inference stage; each
copy reads its place from the variables the launcher sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``LOCAL_WORLD_SIZE``: the global rank and world size, the same numbers ``accelerate.PartialState``
reports), takes its own GPUs and works on its own problems with its own vLLM engine and executor. The
copies never talk to each other, so no process group is created: vLLM starts a single-process engine
in each, exactly as in a one-process run.

**Several nodes** (``mathforge evolve``). Run the same evolve command on every node, each with its place in
the environment (:func:`nodes_from_env`: Slurm's variables or ``NUM_MACHINES``, ``MACHINE_RANK``,
``MAIN_ADDR``, ``MAIN_PORT``, ``GPUS_PER_NODE``; ``scripts/launch.sh`` reads them with the same function) and the run folder on
a file system they share. Node 0 leads: it decides, step by step, what is done; a stage with an
accelerate config is then launched on every node at once (``--num_machines``, ``--machine_rank``, ...),
every other step runs on node 0 while the others wait (:class:`NodeSync`, a ``torch.distributed.TCPStore``
served by node 0 at ``MAIN_ADDR:EVOLVE_PORT``, default ``MAIN_PORT + 1``).

**Training under ZeRO-3 / FSDP** (``mathforge rl``): a model that is only *used* in the training
process (the PPM reward) is loaded outside ``deepspeed.zero.Init``, and transformers' ``generate`` on
the policy never waits on other ranks (see :func:`generation_guard`).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from datetime import timedelta

from mathforge.errors import UserError

# set by accelerate launch / torchrun; an inference shard removes them so that the engine it starts (vLLM,
# or torch.distributed inside a library) does not take this process for one rank of a bigger job
LAUNCHER_VARIABLES = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "ROLE_RANK",
    "ROLE_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "TORCHELASTIC_RUN_ID",
)


@dataclass(frozen=True)
class Shard:
    """This process's place among the copies of an inference stage.

    rank: global rank (0 .. world_size - 1), across all nodes; selects the problems.
    world_size: number of copies, across all nodes.
    local_rank: rank on this node; selects the GPUs.
    local_world_size: copies on this node.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def label(self) -> str:
        return f"rank{self.rank}-of-{self.world_size}"

    def owns(self, position: int) -> bool:
        """Whether the problem at ``position`` (in the whole problem list) is this copy's."""
        return position % self.world_size == self.rank


def launched_shard(environ=None) -> Shard:
    """This process's shard from the launcher's variables; one copy when none are set."""
    env = os.environ if environ is None else environ
    try:
        world = int(env.get("WORLD_SIZE", 1))
        rank = int(env.get("RANK", 0))
        local_rank = int(env.get("LOCAL_RANK", rank))
        local_world = int(env.get("LOCAL_WORLD_SIZE", world))
    except ValueError as err:
        raise UserError(f"bad launcher variable ({err}); RANK/WORLD_SIZE must be integers") from None
    if not 0 <= rank < world or not 0 <= local_rank < local_world:
        raise UserError(f"launcher variables out of range: RANK {rank}, WORLD_SIZE {world}")
    return Shard(rank, world, local_rank, local_world)


def start_shard(gpus_per_copy: int = 1) -> Shard:
    """Read this process's shard, give it its own GPUs and detach it from the launcher's job.

    With several copies on a node, copy ``local_rank`` sees GPUs ``local_rank * gpus_per_copy`` onward
    of those visible (``CUDA_VISIBLE_DEVICES`` if set, else all), so that each vLLM engine (with
    ``tensor_parallel_size = gpus_per_copy``) and its PPM land on GPUs of their own. Call before CUDA is
    initialised. Without a GPU nothing is assigned."""
    shard = launched_shard()
    for name in LAUNCHER_VARIABLES:
        os.environ.pop(name, None)
    if shard.local_world_size > 1:
        import torch

        if torch.cuda.is_available():
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            ids = visible.split(",") if visible else [str(i) for i in range(torch.cuda.device_count())]
            need = shard.local_world_size * gpus_per_copy
            if len(ids) < need:
                raise UserError(
                    f"{shard.local_world_size} processes x {gpus_per_copy} GPUs each need {need} GPUs on this "
                    f"node; {len(ids)} visible (lower --num_processes or tensor_parallel_size)"
                )
            start = shard.local_rank * gpus_per_copy
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(ids[start : start + gpus_per_copy])
    return shard


# --- several nodes -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Nodes:
    """This machine's place in a job of several nodes.

    num_machines: nodes in the job (1: everything runs here, as without this class).
    machine_rank: this node's rank; node 0 leads and serves the coordination store.
    main_addr: address of node 0, reachable from every node.
    main_port: port of the stages' own rendezvous (``accelerate launch --main_process_port``).
    evolve_port: port of evolve's coordination store on node 0.
    gpus_per_node: processes per node of a launched stage; None: the accelerate config's ``num_processes``.
    """

    num_machines: int = 1
    machine_rank: int = 0
    main_addr: str = "127.0.0.1"
    main_port: int = 29500
    evolve_port: int = 29501
    gpus_per_node: int | None = None

    @property
    def many(self) -> bool:
        return self.num_machines > 1

    @property
    def leads(self) -> bool:
        return self.machine_rank == 0

    def launch_args(self, accelerate_config: str, one_node_too: bool = False) -> list[str]:
        """The ``accelerate launch`` arguments that place this node's processes in the whole job (with one
        node: none, unless ``one_node_too``, so that ``gpus_per_node`` sets the processes there too)."""
        if not (self.many or one_node_too):
            return []
        per_node = self.gpus_per_node
        if per_node is None:
            from mathforge.config import load_yaml

            per_node = int(load_yaml(accelerate_config).get("num_processes") or 1)
        return [
            "--num_machines", str(self.num_machines), "--machine_rank", str(self.machine_rank),
            "--num_processes", str(self.num_machines * per_node),
            "--main_process_ip", self.main_addr, "--main_process_port", str(self.main_port),
        ]  # fmt: skip


def gpus_on_this_node() -> int:
    """The GPUs ``nvidia-smi -L`` lists (0 without a driver)."""
    try:
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout
    except OSError:
        return 0
    return sum(line.startswith("GPU") for line in listed.splitlines())


def launch_on_this_node(argv: list[str]) -> None:
    """``scripts/launch.sh CONFIG MODULE [ARGS...]``: ``accelerate launch`` one stage on this node as part of a job
    of ``NUM_MACHINES`` nodes (:func:`nodes_from_env`); ``GPUS_PER_NODE`` (default: the GPUs listed here) x
    nodes processes, whatever the config's ``num_processes``."""
    if len(argv) < 2:
        raise UserError("usage: scripts/launch.sh ACCELERATE_CONFIG MODULE [ARGS...]")
    config, module, rest = argv[0], argv[1], argv[2:]
    if not os.path.isfile(config):
        raise UserError(f"accelerate config not found: {config}")
    nodes = nodes_from_env()
    gpus = nodes.gpus_per_node or gpus_on_this_node()
    if not gpus:
        raise UserError("no GPU found; set GPUS_PER_NODE")
    nodes = replace(nodes, gpus_per_node=gpus)
    print(
        f"launch.sh: node {nodes.machine_rank} of {nodes.num_machines}, {gpus} GPUs each, main "
        f"{nodes.main_addr}:{nodes.main_port}: {module}",
        file=sys.stderr,
        flush=True,
    )
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", config,
               *nodes.launch_args(config, one_node_too=True), "-m", module, *rest]  # fmt: skip
    os.execv(sys.executable, command)


def nodes_from_env(environ=None) -> Nodes:
    """The node's place from ``NUM_MACHINES``/``MACHINE_RANK``/``MAIN_ADDR``/``MAIN_PORT``/``EVOLVE_PORT``/
    ``GPUS_PER_NODE``, else Slurm's ``SLURM_NNODES``/``SLURM_NODEID``/``SLURM_JOB_NODELIST``; one node when
    none is set."""
    env = os.environ if environ is None else environ
    try:
        machines = int(env.get("NUM_MACHINES") or env.get("SLURM_NNODES") or 1)
        rank = int(env.get("MACHINE_RANK") or env.get("SLURM_NODEID") or 0)
        port = int(env.get("MAIN_PORT") or 29500)
        evolve_port = int(env.get("EVOLVE_PORT") or port + 1)
        gpus = int(env["GPUS_PER_NODE"]) if env.get("GPUS_PER_NODE") else None
    except ValueError as err:
        raise UserError(
            f"bad node variable ({err}); NUM_MACHINES, MACHINE_RANK and the ports are integers"
        ) from None
    if not 0 <= rank < machines:
        raise UserError(f"MACHINE_RANK {rank} is not a node of NUM_MACHINES {machines} (0 .. {machines - 1})")
    addr = env.get("MAIN_ADDR")
    if not addr and machines > 1 and env.get("SLURM_JOB_NODELIST"):
        hosts = subprocess.run(
            ["scontrol", "show", "hostnames", env["SLURM_JOB_NODELIST"]], capture_output=True, text=True
        ).stdout.split()
        addr = hosts[0] if hosts else None
    if not addr:
        if machines > 1:
            raise UserError(
                f"NUM_MACHINES={machines} needs MAIN_ADDR (the address of the node with MACHINE_RANK 0)"
            )
        addr = "127.0.0.1"
    return Nodes(machines, rank, addr, port, evolve_port, gpus)


class NodeSync:
    """Node 0 tells the other nodes what each step is, through a key-value store it serves.

    Keys: ``step <i>`` = ``launch`` (every node launches it now), ``done`` (node 0 ran it; its outputs
    are in the shared run folder) or ``skip`` (finished before); ``abort`` = the error that stopped a node;
    ``finished <rank>`` = a follower is through its steps (node 0, serving the store, waits for these);
    ``stopped <rank>`` = a follower saw the abort (node 0 keeps serving until then, so the follower reads why)."""

    POLL_SECONDS = 1.0
    ABORT_GRACE_SECONDS = 30.0

    def __init__(self, nodes: Nodes, connect_timeout: float = 1800.0):
        from torch.distributed import TCPStore

        self.nodes = nodes
        try:
            self.store = TCPStore(
                nodes.main_addr, nodes.evolve_port, is_master=nodes.leads,
                timeout=timedelta(seconds=connect_timeout), wait_for_workers=False,
            )  # fmt: skip
        except (RuntimeError, OSError) as err:
            where = f"{nodes.main_addr}:{nodes.evolve_port}"
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise UserError(
                f"node {nodes.machine_rank}: cannot {'serve' if nodes.leads else 'reach'} the evolve store at "
                f"{where} ({first}); check MAIN_ADDR and that EVOLVE_PORT is free on node 0"
            ) from None

    def __enter__(self) -> NodeSync:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if error is not None:  # this node stops: the others stop with its error instead of waiting for it
            self.abort(str(error) or kind.__name__)
            self._wait_for_followers_to_stop()

    def tell(self, key: str, value: str) -> None:
        self.store.set(key, value)

    def hear(self, key: str) -> str:
        """The value of ``key`` once node 0 sets it; a UserError if a node aborted or node 0 is gone."""
        while True:
            try:
                if self.store.check(["abort"]):
                    why = self.store.get("abort").decode()
                    if not self.nodes.leads:
                        self.store.set(f"stopped {self.nodes.machine_rank}", "1")
                    raise UserError(f"stopped because {why}")
                if self.store.check([key]):
                    return self.store.get(key).decode()
            except (RuntimeError, OSError) as err:  # DistStoreError and connection errors
                raise UserError(f"node 0 is gone (its evolve store stopped answering: {err})") from None
            time.sleep(self.POLL_SECONDS)

    def abort(self, message: str) -> None:
        """Tell the other nodes why this one stops (the first abort's message stays)."""
        with contextlib.suppress(RuntimeError, OSError):
            if not self.store.check(["abort"]):
                self.store.set("abort", f"node {self.nodes.machine_rank} failed: {message}")
            if not self.nodes.leads:
                self.store.set(f"stopped {self.nodes.machine_rank}", "1")

    def _wait_for_followers_to_stop(self) -> None:
        """Node 0 serves the store: closing it at once would leave a follower reading "node 0 is gone"."""
        if not self.nodes.leads:
            return
        deadline = time.monotonic() + self.ABORT_GRACE_SECONDS
        waiting = [f"stopped {rank}" for rank in range(1, self.nodes.num_machines)]
        with contextlib.suppress(RuntimeError, OSError):
            while waiting and time.monotonic() < deadline:
                waiting = [key for key in waiting if not self.store.check([key])]
                time.sleep(0.1)

    def finish(self) -> None:
        """A follower reports it is through; node 0 waits until every follower has (it serves the store)."""
        if not self.nodes.leads:
            self.store.set(f"finished {self.nodes.machine_rank}", "1")
            return
        for rank in range(1, self.nodes.num_machines):
            self.hear(f"finished {rank}")


# --- training under ZeRO-3 / FSDP --------------------------------------------------------------------------


@contextlib.contextmanager
def outside_zero_init():
    """Load models inside this block as whole models, even when the process runs under a ZeRO-3
    accelerate config (which makes ``from_pretrained`` build them under ``deepspeed.zero.Init``, their
    parameters partitioned across ranks for a DeepSpeed engine that is never created for a model used
    only for inference in the training process).

    TRL instead wraps its own reward models in a DeepSpeed inference engine (``prepare_deepspeed``); under
    ZeRO-3 every forward then gathers parameters from all ranks, which only works when every rank makes
    the same forward calls. A scorer called on each rank's own rollouts must have whole weights. The
    switch is transformers' own: its DeepSpeed config reference, unset while the block runs (accelerate's
    ``zero3_init_context_manager(enable=False)`` re-sets the same stage-3 config in accelerate 1.16)."""
    import transformers.integrations.deepspeed as hf_deepspeed

    ref = getattr(hf_deepspeed, "_hf_deepspeed_config_weak_ref", None)
    config = ref() if ref is not None else None
    if config is None or not hf_deepspeed.is_deepspeed_zero3_enabled():
        yield
        return
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        hf_deepspeed.set_hf_deepspeed_config(config)


def for_generation(model, trainer):
    """``model`` (the trainer's policy, unwrapped for generation), with :func:`generation_guard`'s
    arguments added to every ``generate`` call."""
    extra = generation_guard(trainer)
    return _GenerateWith(model, extra) if extra else model


class _GenerateWith:
    """A model whose ``generate`` gets extra keyword arguments; everything else is the model's."""

    def __init__(self, model, extra: dict):
        self._model, self._extra = model, extra

    def generate(self, *args, **kwargs):
        return self._model.generate(*args, **{**self._extra, **kwargs})

    def __getattr__(self, name):
        return getattr(self._model, name)


def generation_guard(trainer) -> dict:
    """The extra ``generate`` arguments for step rollouts from the trainer's own (transformers) policy,
    or a one-line error where they would hang.

    transformers turns ``synced_gpus`` on under ZeRO-3 and FSDP: every rank then keeps stepping until all
    are done, which only works if every rank makes the same number of ``generate`` calls. Step rollouts
    make as many as their own trajectories need, so they must not sync: under ZeRO-3 the parameters are
    gathered for generation (TRL's ``ds3_gather_for_generation``, its default) and each rank generates
    alone (``synced_gpus=False``). FSDP gives no such whole copy to ``generate`` here, so it is refused."""
    accelerator = trainer.accelerator
    if getattr(trainer, "use_vllm", False) or accelerator.num_processes == 1:
        return {}
    from accelerate.utils import DistributedType

    kind = accelerator.distributed_type
    if kind == DistributedType.FSDP:
        raise UserError(
            "step rollouts with transformers generate under FSDP would hang (ranks make different numbers of "
            "generate calls on a sharded model): use_vllm: true, a DeepSpeed config, or rollout_format: text"
        )
    if (
        kind == DistributedType.DEEPSPEED
        and getattr(accelerator.state.deepspeed_plugin, "zero_stage", 0) == 3
    ):
        if not trainer.args.ds3_gather_for_generation:
            raise UserError(
                "step rollouts under ZeRO-3 need ds3_gather_for_generation: true (each rank generates alone "
                "with whole weights; sharded weights would make the ranks wait on each other's calls)"
            )
    return {"synced_gpus": False}


if __name__ == "__main__":
    try:
        launch_on_this_node(sys.argv[1:])
    except UserError as err:
        print(f"launch.sh: {err}", file=sys.stderr)
        sys.exit(2)
