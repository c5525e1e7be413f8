"""Starting labkit.scale's training: the command line each process runs, and the commands that start them.

    python scripts/train_sft.py --config labkit/assets/configs/sft_lora.yaml           # one process
    torchrun --standalone --nproc_per_node 2 scripts/train_sft.py --config ...         # two processes (DDP)
    accelerate launch --config_file labkit/assets/configs/accelerate_ddp.yaml --num_processes 8 \\
        scripts/train_sft.py --config ...                                              # eight GPUs
    labkit train --config FILE --steps 20 --lr 1e-3                                     # the same, as a command

- `parse_args` and `main`: the script's command line. transformers' HfArgumentParser turns every field
  of labkit.scale.TrainConfig into a flag (--steps 20, --tasks dti risk, --load_in_4bit); the YAML file
  of --config gives the defaults the flags override. `main` checks the config and the batch plan for the
  launched group (WORLD_SIZE), prints errors on rank 0 only and exits with status 2 on a bad config.
- `launch_command` and `run`: the same script on NPROC processes of this machine (python, torchrun or
  accelerate launch), from a notebook or a test, reading back the log rank 0 writes.

(labkit.course.links is something else: the Colab and Binder links of the lessons.)
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import env, scale
from .scale import CONFIG_DIR, ConfigError, DEFAULT_CONFIG

LAUNCHERS = ("python", "torchrun", "accelerate")


# ----------------------------------------------------------------------------- the command line of each process

def parse_args(argv=None):
    """(TrainConfig, options) from the command line ARGV: --config FILE (YAML; default the course's),
    then one flag per TrainConfig field, overriding the file; options.check is --check.

    Raises ConfigError for a bad file, an unknown key (in it or as a flag: --stpes 3) or a value of the
    wrong type; a flag argparse cannot convert (--steps x) is argparse's own error: a usage line and
    exit status 2.
    """
    from transformers import HfArgumentParser

    parser = HfArgumentParser(scale.TrainConfig, prog="train_sft",
                              description="SFT + LoRA on one process or many (python, torchrun, accelerate launch).")
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help=f"YAML file (default: {DEFAULT_CONFIG})")
    parser.add_argument("--check", action="store_true", help="check the config and the batch plan, then stop")
    config = parser.parse_known_args(argv)[0].config
    parser.set_defaults(**dataclasses.asdict(scale.load_config(config, check=False)))  # the file's values
    cfg, options, rest = parser.parse_args_into_dataclasses(argv, return_remaining_strings=True)
    scale.check_keys([a[2:].split("=")[0] for a in rest if a.startswith("--")] or rest, "command line")
    return cfg, options


def _is_rank0() -> bool:
    return os.environ.get("RANK", "0") == "0"


def skip_bitsandbytes() -> bool:
    """Keep peft from importing bitsandbytes in a process that will not quantise.

    peft imports bitsandbytes whenever it is installed, and that import costs about 120 MB of memory
    per process on a CPU (measured: RSS 220 -> 340 MB); with 8 ranks on a node that is 1 GB for
    nothing. A None entry in sys.modules is Python's way to say "not available": importlib's
    find_spec returns None for it and `import bitsandbytes` raises ImportError, so peft and
    transformers skip their 4-bit code. Only for the script's own processes, before peft is
    imported; returns whether it was applied.
    """
    if "bitsandbytes" in sys.modules or "peft" in sys.modules:
        return False
    sys.modules["bitsandbytes"] = None
    return True


def main(argv=None) -> int:
    """The training script (scripts/train_sft.py, `labkit train`, python -m labkit.launcher): parse, check, train."""

    env.quiet()  # before peft imports bitsandbytes, whose import logs a line
    try:
        cfg, options = parse_args(argv)
        if not cfg.load_in_4bit:
            skip_bitsandbytes()
        scale.check_config(cfg)
        try:
            scale.check_fsdp_device(scale.process_device(cfg.device))
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        world = int(os.environ.get("WORLD_SIZE", "1"))
        accum = scale.accumulation_steps(cfg.global_batch, world, cfg.micro_batch)
        if options.check:
            if _is_rank0():
                print(f"config ok: {world} process(es) x micro_batch {cfg.micro_batch} x {accum} accumulation "
                      f"step(s) = global batch {cfg.global_batch}")
            return 0
        scale.train(cfg, exit_when_done=True)
    except ConfigError as exc:
        if _is_rank0():
            print(f"error: {exc}", file=sys.stderr, flush=True)
        else:
            time.sleep(1.0)  # let rank 0 print the error before the launcher stops the group
        return 2
    return 0


# ----------------------------------------------------------------------------- starting it from a notebook or a test

def flags(overrides: dict) -> list[str]:
    """{"steps": 3, "tasks": ["dti", "risk"]} -> ["--steps", "3", "--tasks", "dti", "risk"] (parse_args' syntax)."""
    out = []
    for key, value in overrides.items():
        if isinstance(value, (list, tuple)):
            if not value:
                raise ValueError(f"{key}=[] cannot be written as a flag (it takes one or more values); "
                                 "set it in the config file instead.")
            out += [f"--{key}", *map(str, value)]
        else:
            out += [f"--{key}", str(value)]
    return out


def launch_command(nproc: int = 1, config=DEFAULT_CONFIG, overrides: dict | None = None,
                   launcher: str = "torchrun") -> list[str]:
    """The command that runs the training script on NPROC processes of this machine.

    launcher "torchrun": `python -m torch.distributed.run --standalone --nproc_per_node N -m labkit.launcher`
    (nproc 1 with torchrun still makes a group of one; launcher "python" runs the script plainly, one
    process, no process group). "accelerate": `accelerate launch` with the course's DDP config.
    OVERRIDES become flags (see flags).
    """
    script = ["-m", "labkit.launcher", "--config", str(config), *flags(overrides or {})]
    if launcher == "python":
        if nproc != 1:
            raise ValueError("launcher='python' runs one process; use 'torchrun' or 'accelerate' for more.")
        return [sys.executable, *script]
    if launcher == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
                "--nproc_per_node", str(nproc), *script]
    if launcher == "accelerate":
        return [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                str(CONFIG_DIR / "accelerate_ddp.yaml"), "--num_processes", str(nproc), "--main_process_port",
                str(free_port()), *script]
    raise ValueError(f"launcher must be one of {LAUNCHERS}; got {launcher!r}.")


def shown_command(log: dict) -> str:
    """The command of a run() log as a reader can copy it: "python" for this interpreter, paths inside the
    course relative to its root (labkit/assets/configs/...), and the run's temporary folder as $WORK; no path
    of the machine it ran on."""
    root = str(Path(__file__).resolve().parents[1]) + os.sep
    work = log.get("workdir")

    def one(arg: str) -> str:
        if arg == sys.executable:
            return "python"
        if work and arg.startswith(work):
            return "$WORK" + arg[len(work):]
        return arg[len(root):] if arg.startswith(root) else arg

    return " ".join(one(str(a)) for a in log["command"])


def free_port() -> int:
    """A TCP port that is free on this machine now (for accelerate launch's rendezvous)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def failure(returncode: int, output: str, cmd) -> Exception:
    """The exception for a launched run that ended with RETURNCODE: ConfigError with the script's own message
    when a rank printed "error: ..." (a config the script refused; a launcher such as torchrun then adds
    pages of its own report, which would bury it), else RuntimeError naming the first exception a rank
    raised, then the end of OUTPUT."""
    import re

    lines = output.splitlines()
    errors = [line[len("error: "):] for line in lines if line.startswith("error: ")]
    if errors:
        return ConfigError(errors[0])
    raised = [line.strip() for line in lines if re.match(r"(\[rank\d+\]:)?\s*[\w.]*(Error|Exception): \S", line)
              and "torch.distributed.elastic" not in line]
    # the rank that failed first, not the ones whose connection to it then broke (gloo: "remote worker")
    raised.sort(key=lambda line: "remote worker" in line or "Connection closed by peer" in line)
    first = f"{raised[0]}\n" if raised else ""
    return RuntimeError(f"the training run failed (exit {returncode}): {first}{' '.join(map(str, cmd))}\n{output[-3000:]}")


def _run_group(cmd, timeout: float, environment: dict) -> subprocess.CompletedProcess:
    """subprocess.run(CMD) in its own process group; past TIMEOUT seconds (a rank that hangs) or on an
    interrupt the whole group is killed, the launcher's ranks included (killing only the launcher leaves
    them running), and a hang raises TimeoutError with the end of the output."""
    import signal

    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except BaseException as exc:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        out, err = proc.communicate()
        if isinstance(exc, subprocess.TimeoutExpired):
            raise TimeoutError(f"the training run did not finish within {timeout:g} s (a rank hung?) and every one "
                               f"of its processes was stopped: {' '.join(map(str, cmd))}\n{(out + err)[-3000:]}") from None
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def run(nproc: int = 1, overrides: dict | None = None, launcher: str | None = None, config=DEFAULT_CONFIG,
        threads_per_process: int = 1, timeout: float = 600, workdir=None) -> dict:
    """Run the training script in fresh processes and return its log (the dict labkit.scale.train returns).

    launcher: None picks "python" for one process and "torchrun" for more. The device is the config's
    (default "auto": CUDA when there is a GPU for every process, else the CPU; labkit.scale.process_device).
    Output files go to WORKDIR (a new temporary folder by default) unless OVERRIDES set output_dir and log_file.
    The log gets "command" (what ran; shown_command prints it without this machine's paths), "workdir"
    and "wall_seconds" (start-up included). A global batch that does not split over NPROC processes raises
    ConfigError before anything starts; a config the script refuses (exit status 2) raises ConfigError
    with the script's own "error: ..." message; any other failure raises RuntimeError with
    the end of the output; a run past TIMEOUT seconds (a rank that hangs) is stopped, every rank with
    it, and raises TimeoutError. The processes return freed memory to the system at once (glibc's
    MALLOC_TRIM_THRESHOLD_=0): a rank's resident memory stays about 100 MB lower, which lets a notebook
    run two ranks and the launcher within a laptop's memory.
    """
    launcher = launcher or ("python" if nproc == 1 else "torchrun")
    # a batch plan that cannot split over NPROC processes stops here, before any process starts (the script
    # would refuse it too, with the same message, after starting NPROC Pythons)
    cfg = scale.load_config(config, overrides, check=False)
    scale.accumulation_steps(cfg.global_batch, nproc, cfg.micro_batch)
    workdir = Path(workdir or tempfile.mkdtemp(prefix="labkit_scale_"))
    overrides = {"output_dir": str(workdir / "adapter"), "log_file": str(workdir / "log.json"), "log_every": 0,
                 **(overrides or {})}
    cmd = launch_command(nproc, config, overrides, launcher)
    environment = {**os.environ, "OMP_NUM_THREADS": str(threads_per_process), "TOKENIZERS_PARALLELISM": "false",
                   "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TQDM_DISABLE": "1", "PYTHONWARNINGS": "ignore",
                   "MALLOC_TRIM_THRESHOLD_": "0"}
    root = str(Path(__file__).resolve().parents[1])
    environment["PYTHONPATH"] = root + os.pathsep + environment.get("PYTHONPATH", "") if environment.get(
        "PYTHONPATH") else root
    t0 = time.perf_counter()
    proc = _run_group(cmd, timeout, environment)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise failure(proc.returncode, proc.stdout + proc.stderr, cmd)
    log = json.loads(Path(overrides["log_file"]).read_text())
    log["command"] = cmd
    log["workdir"] = str(workdir)
    log["wall_seconds"] = wall
    log["stdout"] = proc.stdout
    return log


if __name__ == "__main__":
    sys.exit(main())
