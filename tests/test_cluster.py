"""Data-parallel search through a real 2-process `accelerate launch` (one vLLM engine and one executor pool
per process, one tree file each), resumed after one rank is killed; the shard helpers.

The tiny model has random weights, so its trees are small (most chunks are invalid): what is tested is
which problems each copy searches and where the trees go, not their quality.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mathforge.cluster import Shard, launched_shard
from mathforge.data.loading import load_problems
from mathforge.errors import UserError
from mathforge.search.mcts import read_tree_set, read_trees, shard_file, tree_files

REPO = Path(__file__).resolve().parents[1]
ENV = {
    **os.environ,
    "OMP_NUM_THREADS": "1",
    "PYTHONPATH": str(REPO / "src"),
    "TOKENIZERS_PARALLELISM": "false",
}


def search_command(model, data, out, *extra):
    return [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(REPO / "accelerate_configs/cpu_2proc.yaml"),
        "-m", "mathforge.search.mcts",
        "--model_name_or_path", str(model), "--dataset_name", str(data), "--output_file", str(out),
        "--num_candidates", "2", "--batch_problems", "2", "--exec_workers", "2", *extra,
    ]  # fmt: skip


def ids_per_file(out: Path) -> dict[str, list[str]]:
    return {Path(f).name: [str(t["id"]) for t in read_trees(f)] for f in tree_files(out)}


@pytest.fixture(scope="module")
def problems(toy_data, tmp_path_factory):
    """A slice of the toy set (rows 5..16): its ids must be those of the whole file."""
    rows = (toy_data / "train.jsonl").read_text().splitlines()
    path = tmp_path_factory.mktemp("cluster-data") / "train.jsonl"
    path.write_text(
        "".join(json.dumps({k: v for k, v in json.loads(r).items() if k != "id"}) + "\n" for r in rows)
    )
    return path


@pytest.mark.slow
def test_two_process_vllm_search_shards_cover_the_problem_set_once(tiny_model, problems, tmp_path):
    out = tmp_path / "trees.jsonl"
    cmd = search_command(tiny_model, problems, out, "--backend", "vllm", "--dataset_split", "train[5:15]",
                         "--num_rollouts", "2", "--max_new_tokens", "16")  # fmt: skip
    run = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=ENV, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    files = ids_per_file(out)
    assert sorted(files) == ["trees.rank0-of-2.jsonl", "trees.rank1-of-2.jsonl"]  # no unsharded file
    want = [f"train-{i}" for i in range(5, 15)]  # the one-process problem set, ids of the whole file
    assert files["trees.rank0-of-2.jsonl"] == want[0::2] and files["trees.rank1-of-2.jsonl"] == want[1::2]
    assert {t["config"]["backend"] for t in read_tree_set(out)} == {"vllm"}

    from mathforge.search.extract import main as extract

    stats = extract(["--trees", str(out), "--output_dir", str(tmp_path / "data")])
    assert stats["problems"] == 10  # extract reads both shards from the unsharded name


@pytest.mark.slow
def test_killed_rank_resumes_without_duplicates(tiny_model, problems, tmp_path):
    out = tmp_path / "trees.jsonl"
    cmd = search_command(tiny_model, problems, out, "--backend", "transformers", "--max_problems", "24",
                         "--num_rollouts", "6", "--max_new_tokens", "48")  # fmt: skip
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    rank1 = Path(str(out).replace(".jsonl", ".rank1-of-2.jsonl"))
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if rank1.exists() and len(read_trees(rank1)) >= 2:
            break
        time.sleep(0.2)
    pid = next(p for p in _descendants(proc.pid) if _env(p).get("RANK") == "1")
    os.kill(pid, signal.SIGKILL)  # rank 1 dies; the launcher then stops rank 0
    proc.wait(timeout=120)
    assert proc.returncode != 0
    killed = ids_per_file(out)
    assert 2 <= len(killed["trees.rank1-of-2.jsonl"]) < 12, "rank 1 was not killed mid-run"

    run = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=ENV, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    files = ids_per_file(out)
    every = [i for ids in files.values() for i in ids]
    assert len(every) == len(set(every)) == 24  # no problem twice, none missing
    assert set(every) == set(load_problems(str(problems), max_problems=24)["id"])
    for name, ids in killed.items():  # trees written before the kill are kept, not searched again
        assert files[name][: len(ids)] == ids


def _descendants(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-eo", "pid=,ppid="], capture_output=True, text=True).stdout.split("\n")
    children = {}
    for line in out:
        if line.strip():
            p, parent = map(int, line.split())
            children.setdefault(parent, []).append(p)
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _env(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def test_shard_files_and_positions(tmp_path):
    assert shard_file(tmp_path / "t.jsonl", 3, 8) == str(tmp_path / "t.rank3-of-8.jsonl")
    assert shard_file(tmp_path / "t.jsonl", 0, 1) == str(tmp_path / "t.jsonl")
    (tmp_path / "t.rank0-of-2.jsonl").write_text('{"id": "a"}\n{"id": "b"}\n')
    (tmp_path / "t.rank1-of-2.jsonl").write_text('{"id": "c"}\n{"id": "d')  # torn last line
    (tmp_path / "t.jsonl").write_text('{"id": "b"}\n')  # a later one-process re-run found b done
    (tmp_path / "other.rank0-of-2.jsonl").write_text('{"id": "x"}\n')
    assert [Path(f).name for f in tree_files(tmp_path / "t.jsonl")] == [
        "t.jsonl",
        "t.rank0-of-2.jsonl",
        "t.rank1-of-2.jsonl",
    ]
    assert [t["id"] for t in read_tree_set(tmp_path / "t.jsonl")] == ["b", "a", "c"]
    shards = [Shard(r, 3) for r in range(3)]
    assert [[p for p in range(7) if s.owns(p)] for s in shards] == [[0, 3, 6], [1, 4], [2, 5]]


def test_launched_shard_reads_the_global_rank():
    assert launched_shard({}) == Shard()
    # node 1 of 2, 8 processes each: global rank 11, local rank 3
    env = {"RANK": "11", "WORLD_SIZE": "16", "LOCAL_RANK": "3", "LOCAL_WORLD_SIZE": "8"}
    assert launched_shard(env) == Shard(11, 16, 3, 8)
    with pytest.raises(UserError, match="out of range"):
        launched_shard({"RANK": "2", "WORLD_SIZE": "2"})


@pytest.fixture(scope="module")
def random_ppm(tiny_model, tmp_path_factory):
    """The tiny model with a random 1-label head, saved as `mathforge ppm` saves a PPM."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = tmp_path_factory.mktemp("ppm") / "ppm"
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


POOLING_CHECK = """
import sys
import pytest
from mathforge.ppm import VLLMPPMScorer, load_scorer
from mathforge.search.mcts import load_ppm

ppm = sys.argv[1]
texts = [
    "<|im_start|>user\\nWhat is 2+3?<|im_end|>\\n",
    "<step>\\nprint(2+3)\\n</step>\\n<output>\\n5\\n</output>",
    "x",
]
texts += [texts[1] * 40]  # longer than a batch neighbour: padding must not matter
hf = load_scorer(ppm)
want = hf.raw(texts)
assert len(set(round(w, 4) for w in want)) == len(texts)  # a head that tells the texts apart
exact = VLLMPPMScorer(ppm, dtype="float32")
assert exact.raw(texts) == pytest.approx(want, abs=1e-5)
assert exact(texts) == pytest.approx(hf(texts), abs=1e-5) and exact.raw([]) == []
del exact
# what search builds (dtype auto: vLLM on CPU runs the float32 model in bfloat16)
default = load_ppm(ppm, backend="vllm", gpu_memory_utilization=0.2)
assert isinstance(default, VLLMPPMScorer)
assert default.raw(texts) == pytest.approx(want, abs=0.01)
print("pooling scores match")
"""


@pytest.mark.slow
def test_vllm_pooling_scores_the_ppm_as_transformers_does(random_ppm):
    """vLLM's pooling runner serves the Qwen2ForSequenceClassification head: same raw outputs, same scores.
    In a fresh process: after a pooling engine, a vLLM engine started later in the same process fails
    ("process group is not initialized"), which would break the tests that come after this one."""
    run = subprocess.run(
        [sys.executable, "-c", POOLING_CHECK, str(random_ppm)],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=900,
    )
    assert run.returncode == 0 and "pooling scores match" in run.stdout, run.stderr[-3000:]


# --- DeepSpeed ZeRO-3 on 2 CPU processes ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def deepspeed_cpu_ops():
    """DeepSpeed's CPU backend compiles its shared-memory collectives op on first use (minutes on 2 cores, in
    every rank at once); `scripts/install.sh` builds it at install, this builds it here should it be missing."""
    run = subprocess.run(
        [sys.executable, "-c", "from deepspeed.comm.torch import build_shm_op; build_shm_op()"],
        capture_output=True, text=True, env=ENV, timeout=900,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]


def launch_bounded(cmd, seconds: int) -> subprocess.CompletedProcess:
    """Run a launch in its own process group; kill the whole group if it outlives ``seconds`` (a hang)."""
    proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # fmt: skip
    try:
        out, _ = proc.communicate(timeout=seconds)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"launch still running after {seconds}s (hung); last output:\n{out[-2000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, "")


def zero3_launch(module: str, *args) -> list[str]:
    return [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(REPO / "accelerate_configs/cpu_zero3_2proc.yaml"), "-m", module, *args,
    ]  # fmt: skip


def rank_reports(out: Path) -> list[dict]:
    return [json.loads((out / "ranks" / f"rank_{r}.json").read_text()) for r in (0, 1)]


@pytest.mark.slow
def test_zero3_sft_on_two_cpu_processes(deepspeed_cpu_ops, tiny_model, toy_data, tmp_path):
    out = tmp_path / "sft"
    run = launch_bounded(
        zero3_launch(
            "mathforge.sft", "--config", str(REPO / "recipes/tiny/sft/config_toy.yaml"),
            "--model_name_or_path", str(tiny_model), "--dataset_name", str(toy_data), "--output_dir", str(out),
            "--max_steps", "4", "--per_device_train_batch_size", "4", "--save_steps", "4", "--logging_steps", "2",
        ),
        600,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:]
    for rank, report in enumerate(rank_reports(out)):
        assert report["rank"] == rank and report["world_size"] == 2 and report["global_step"] == 4
        assert report["distributed_type"] == "DistributedType.DEEPSPEED"
    from transformers import AutoModelForCausalLM

    saved = AutoModelForCausalLM.from_pretrained(out)  # gathered from the partitions into whole tensors
    reference = AutoModelForCausalLM.from_pretrained(tiny_model)
    for (name, p), (_, q) in zip(saved.named_parameters(), reference.named_parameters()):
        assert p.shape == q.shape, name


@pytest.mark.slow
def test_zero3_rl_with_ppm_reward_and_transformers_step_rollouts(
    deepspeed_cpu_ops, sft_policy, toy_data, tmp_path
):
    """ZeRO-3 GRPO with step rollouts from the trainer's own policy and the ppm reward. Ranks make different
    numbers of generate calls (each as many rounds as its longest trajectory); with transformers' synced_gpus
    on, this launch hung (killed after 300 s); without the PPM loaded outside zero.Init it failed with
    "'weight' must be 2-D". Bounded: a launch still running after 600 s fails the test."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    ppm = tmp_path / "ppm"
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(sft_policy)
    head = AutoModelForSequenceClassification.from_pretrained(sft_policy, num_labels=1)
    head.config.pad_token_id = tokenizer.pad_token_id
    head.save_pretrained(ppm)
    tokenizer.save_pretrained(ppm)
    out = tmp_path / "rl"
    run = launch_bounded(
        zero3_launch(
            "mathforge.rl", "--config", str(REPO / "recipes/tiny/rl/config_toy.yaml"),
            "--model_name_or_path", str(sft_policy), "--dataset_name", str(toy_data), "--output_dir", str(out),
            "--max_steps", "2", "--per_device_train_batch_size", "4", "--num_generations", "4",
            "--num_iterations", "1", "--logging_steps", "1", "--save_steps", "2", "--disable_tqdm", "true",
            "--reward_funcs", "accuracy", "ppm", "--reward_weights", "1", "1", "--ppm_path", str(ppm),
        ),
        600,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:]
    for report in rank_reports(out):
        assert report["world_size"] == 2 and report["global_step"] == 2
        assert report["distributed_type"] == "DistributedType.DEEPSPEED"
    ppm_means = [float(m) for m in re.findall(r"'rewards/ppm/mean': '([^']+)'", run.stdout)]
    assert len(ppm_means) == 2 and all(-1 <= m <= 1 for m in ppm_means) and len(set(ppm_means)) == 2
    assert re.findall(r"'rollout/steps': '([^']+)'", run.stdout)  # the rollouts ran steps in the executor


class _StandIn:
    """Attribute bag standing in for a trainer whose distributed state cannot exist here (FSDP needs a GPU in
    accelerate: on CPU its FSDP launch falls back to separate single processes)."""

    def __init__(self, **kw):
        self.__dict__.update(kw)


def _trainer(kind: str, stage: int = 0, gather: bool = True, processes: int = 2):
    from accelerate.utils import DistributedType

    plugin = _StandIn(zero_stage=stage)
    accelerator = _StandIn(
        num_processes=processes,
        distributed_type=DistributedType[kind],
        state=_StandIn(deepspeed_plugin=plugin),
    )
    return _StandIn(accelerator=accelerator, use_vllm=False, args=_StandIn(ds3_gather_for_generation=gather))


def test_generation_guard_refuses_what_would_hang():
    from mathforge.cluster import for_generation, generation_guard

    assert generation_guard(_trainer("DEEPSPEED", stage=3)) == {"synced_gpus": False}
    assert generation_guard(_trainer("MULTI_GPU")) == {"synced_gpus": False}
    assert generation_guard(_trainer("DEEPSPEED", stage=3, processes=1)) == {}
    with pytest.raises(UserError, match="under FSDP would hang"):
        generation_guard(_trainer("FSDP"))
    with pytest.raises(UserError, match="ds3_gather_for_generation: true"):
        generation_guard(_trainer("DEEPSPEED", stage=3, gather=False))

    class Model:
        name = "policy"

        def generate(self, **kwargs):
            return kwargs

    wrapped = for_generation(Model(), _trainer("DEEPSPEED", stage=3))
    assert wrapped.generate(max_new_tokens=4) == {"synced_gpus": False, "max_new_tokens": 4}
    assert wrapped.name == "policy"


@pytest.mark.slow
def test_two_nodes_on_one_machine_through_launch_sh(tiny_model, problems, tmp_path):
    """scripts/launch.sh as two 'nodes' of one GPU each (both on this machine, MAIN_ADDR 127.0.0.1): the
    search copies get global ranks 0 and 1 (local rank 0 each) and split the problems by global rank."""
    out = tmp_path / "trees.jsonl"
    args = ["--model_name_or_path", str(tiny_model), "--dataset_name", str(problems), "--output_file", str(out),
            "--max_problems", "6", "--num_rollouts", "2", "--num_candidates", "2", "--max_new_tokens", "16",
            "--exec_workers", "2"]  # fmt: skip
    base = {**ENV, "NUM_MACHINES": "2", "GPUS_PER_NODE": "1", "MAIN_ADDR": "127.0.0.1", "MAIN_PORT": "29517",
            "PYTHON": sys.executable}  # fmt: skip
    cmd = ["bash", str(REPO / "scripts/launch.sh"), str(REPO / "accelerate_configs/cpu_2proc.yaml"),
           "mathforge.search.mcts", *args]  # fmt: skip
    nodes = [
        subprocess.Popen(
            cmd,
            cwd=REPO,
            env={**base, "MACHINE_RANK": str(r)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for r in (0, 1)
    ]
    logs = [node.communicate(timeout=600)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], logs[0][-2000:] + logs[1][-2000:]
    assert "node 1 of 2, 1 GPUs each" in logs[1]
    files = ids_per_file(out)
    assert files == {
        "trees.rank0-of-2.jsonl": ["train-0", "train-2", "train-4"],
        "trees.rank1-of-2.jsonl": ["train-1", "train-3", "train-5"],
    }


def test_launch_sh_needs_the_main_address_for_several_nodes():
    env = {**ENV, "NUM_MACHINES": "2", "GPUS_PER_NODE": "8", "PYTHON": sys.executable}
    env.pop("MAIN_ADDR", None)
    env.pop("SLURM_JOB_NODELIST", None)
    run = subprocess.run(["bash", str(REPO / "scripts/launch.sh"), str(REPO / "accelerate_configs/zero3.yaml"),
                          "mathforge.sft"], capture_output=True, text=True, env=env)  # fmt: skip
    assert run.returncode == 2 and "needs MAIN_ADDR" in run.stderr
    # one node, no GPU listed (here) and no GPUS_PER_NODE: nothing to place the processes on
    env = {k: v for k, v in env.items() if k not in ("NUM_MACHINES", "GPUS_PER_NODE")}
    run = subprocess.run(["bash", str(REPO / "scripts/launch.sh"), str(REPO / "accelerate_configs/zero3.yaml"),
                          "mathforge.sft"], capture_output=True, text=True, env=env)  # fmt: skip
    assert run.returncode == 2 and run.stderr.strip() == "launch.sh: no GPU found; set GPUS_PER_NODE"


def test_evolve_launches_search_with_accelerate_and_finds_its_shards(tmp_path):
    """An `accelerate: {search: ...}` entry makes evolve launch search as N data-parallel copies, and the
    step counts as done from the copies' shard files (nothing runs here but the plan and the check)."""
    from evolve_helpers import micro_config, write_config

    from mathforge.evolve import Plan, command, parse_args

    config = REPO / "accelerate_configs/cpu_2proc.yaml"
    path = write_config(
        micro_config(tmp_path / "runs", accelerate={"search": str(config)}), tmp_path / "c.yaml"
    )
    plan = Plan(parse_args(["--config", str(path)]))
    step = next(s for s in plan.steps if s.name == "search")
    cmd = command(step, plan.config)
    assert cmd[1:5] == ["-m", "accelerate.commands.launch", "--config_file", str(config)]
    assert cmd[5:7] == ["-m", "mathforge.search.mcts"]
    out = Path(step.recipe["output_file"])
    assert not step.done()
    toy = Path(step.recipe["dataset_name"])
    toy.mkdir(parents=True)
    rows = [{"problem": f"{i}+1?", "answer": str(i + 1)} for i in range(3)]
    (toy / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    step.recipe["max_problems"] = 3
    out.parent.mkdir(parents=True)
    Path(shard_file(out, 0, 2)).write_text('{"id": "train-0"}\n{"id": "train-2"}\n')
    assert not step.done()  # rank 1's problem is missing
    Path(shard_file(out, 1, 2)).write_text('{"id": "train-1"}\n')
    assert step.done()


@pytest.mark.slow
def test_launched_evaluation_shards_by_global_rank_and_merges(tiny_model, problems, tmp_path):
    """`accelerate launch -m mathforge.eval` on 2 processes: each copy its own problems (by global rank),
    the last to finish merges; the merged samples are the problems a one-process run evaluates, once each."""
    out = tmp_path / "eval"
    args = ["--model_name_or_path", str(tiny_model), "--dataset_name", str(problems), "--max_problems", "6",
            "--backend", "transformers", "--prompt_format", "cot", "--max_new_tokens", "8", "--n", "1",
            "--output_dir", str(out)]  # fmt: skip
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(REPO / "accelerate_configs/cpu_2proc.yaml"), "-m", "mathforge.eval", *args]  # fmt: skip
    run = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=ENV, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    shard_ids = [
        [json.loads(line)["id"] for line in (out / "shards" / str(r) / "samples.jsonl").open()]
        for r in (0, 1)
    ]
    assert shard_ids == [["train-0", "train-2", "train-4"], ["train-1", "train-3", "train-5"]]
    merged = [json.loads(line) for line in (out / "samples.jsonl").open()]
    assert [s["id"] for s in merged] == [f"train-{i}" for i in range(6)]
    assert json.loads((out / "results.json").read_text())["problems"] == 6


def test_nodes_from_the_environment_and_their_launch_arguments(tmp_path):
    from mathforge.cluster import Nodes, nodes_from_env

    assert nodes_from_env({}) == Nodes() and not Nodes().many and Nodes().launch_args("any.yaml") == []
    nodes = nodes_from_env(
        {"NUM_MACHINES": "2", "MACHINE_RANK": "1", "MAIN_ADDR": "10.0.0.1", "MAIN_PORT": "6000"}
    )
    assert (nodes.many, nodes.leads, nodes.evolve_port) == (True, False, 6001)
    config = tmp_path / "ddp.yaml"
    config.write_text("num_processes: 8\n")
    assert nodes.launch_args(str(config)) == [
        "--num_machines", "2", "--machine_rank", "1", "--num_processes", "16",
        "--main_process_ip", "10.0.0.1", "--main_process_port", "6000",
    ]  # fmt: skip
    slurm = nodes_from_env(
        {"SLURM_NNODES": "4", "SLURM_NODEID": "3", "MAIN_ADDR": "n0", "GPUS_PER_NODE": "2"}
    )
    assert (slurm.num_machines, slurm.machine_rank, slurm.gpus_per_node) == (4, 3, 2)
    assert "--num_processes 8" in " ".join(slurm.launch_args(str(config)))
    for bad, message in (
        ({"NUM_MACHINES": "2"}, "needs MAIN_ADDR"),
        ({"NUM_MACHINES": "2", "MACHINE_RANK": "2", "MAIN_ADDR": "x"}, "is not a node of NUM_MACHINES 2"),
        ({"NUM_MACHINES": "two"}, "bad node variable"),
    ):
        with pytest.raises(UserError, match=message):
            nodes_from_env(bad)


def test_node_0_keeps_its_store_until_the_other_node_has_read_why_it_stopped():
    """Node 0 (its own process) fails and exits; node 1 asks only 2 s later and still gets node 0's error,
    not "node 0 is gone": node 0 serves the store until node 1 has seen the abort."""
    import socket

    from mathforge.cluster import Nodes, NodeSync

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    leader = (
        "import sys; from mathforge.cluster import Nodes, NodeSync\n"
        f"nodes = Nodes(2, 0, '127.0.0.1', {port - 1}, {port}, 1)\n"
        "with NodeSync(nodes):\n"
        "    print('serving', flush=True)\n"
        "    raise SystemExit('round 0, step sft: broken base model')\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", leader], env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "serving"
        sync = NodeSync(Nodes(2, 1, "127.0.0.1", port - 1, port, 1), connect_timeout=30)
        time.sleep(2.0)  # node 0 has aborted by now; without the grace its process would be gone
        with pytest.raises(UserError, match="stopped because node 0 failed: round 0, step sft: broken base"):
            sync.hear("step 1")
        assert proc.wait(timeout=30) != 0
    finally:
        proc.kill()
