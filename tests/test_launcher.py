"""labkit.launcher: the training script's command line (a YAML config, flags that override it, --check,
exit status 2), the commands that start it (python, torchrun, accelerate launch), and the shipped
launcher files. The runs that compare 1 and 2 processes are in tests/test_scale.py."""

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from labkit import launcher, scale

ROOT = Path(__file__).resolve().parents[1]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore"}


# ----------------------------------------------------------------------------- the command line

def test_flags_override_the_config_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("steps: 7\ntasks: [dti]\ncompletion_only: false\n")
    cfg, options = launcher.parse_args(["--config", str(p), "--tasks", "risk", "qa", "--lr", "1e-3", "--check"])
    assert (cfg.steps, cfg.tasks, cfg.lr, cfg.completion_only, options.check) == (7, ["risk", "qa"], 1e-3, False, True)
    cfg, options = launcher.parse_args(["--config", str(p), "--steps", "3", "--completion_only", "--load_in_4bit"])
    assert (cfg.steps, cfg.tasks, cfg.completion_only, cfg.load_in_4bit, options.check) == (3, ["dti"], True, True, False)
    assert launcher.parse_args([])[0] == scale.TrainConfig()  # the shipped file is the defaults
    with pytest.raises(scale.ConfigError, match=r"command line: unknown key 'stpes'\. Did you mean 'steps'\?"):
        launcher.parse_args(["--stpes", "3"])
    with pytest.raises(SystemExit):  # argparse's own error: a usage line, exit status 2
        launcher.parse_args(["--steps", "three"])


def test_cli_reports_errors_with_exit_status_2(capsys, monkeypatch):
    assert launcher.main(["--check", "--lr", "-1"]) == 2
    assert "error: lr must be a positive number" in capsys.readouterr().err
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert launcher.main(["--check"]) == 2  # the default global 8 = micro 8 cannot split over 2 processes
    assert "not divisible by world_size x micro_batch = 2 x 8" in capsys.readouterr().err
    assert launcher.main(["--check", "--micro_batch", "4"]) == 0
    assert "2 process(es) x micro_batch 4 x 1 accumulation" in capsys.readouterr().out
    monkeypatch.setenv("RANK", "1")  # other ranks stay quiet
    assert launcher.main(["--check", "--lr", "0"]) == 2
    assert capsys.readouterr().err == ""
    from labkit.course import cli

    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.setenv("RANK", "0")
    assert cli.main(["train", "--check", "--config", "/no/such.yaml"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_script_is_a_thin_cli():
    text = (ROOT / "scripts" / "train_sft.py").read_text()
    assert "from labkit.launcher import main" in text and len(text.splitlines()) < 30


def test_launch_commands():
    over = {"steps": 3, "tasks": ["dti", "risk"], "load_in_4bit": True, "lr": 1e-3}
    assert launcher.flags(over) == ["--steps", "3", "--tasks", "dti", "risk", "--load_in_4bit", "True", "--lr", "0.001"]
    cfg, _ = launcher.parse_args(launcher.flags(over))  # what launch_command writes, the script reads back
    assert (cfg.steps, cfg.tasks, cfg.load_in_4bit, cfg.lr) == (3, ["dti", "risk"], True, 1e-3)
    with pytest.raises(ValueError, match=r"tasks=\[\] cannot be written as a flag"):
        launcher.flags({"tasks": []})
    one = launcher.launch_command(1, overrides={"steps": 3}, launcher="python")
    assert one[1:] == ["-m", "labkit.launcher", "--config", str(scale.DEFAULT_CONFIG), "--steps", "3"]
    two = launcher.launch_command(2)
    assert two[1:3] == ["-m", "torch.distributed.run"] and two[two.index("--nproc_per_node") + 1] == "2"
    acc = launcher.launch_command(2, launcher="accelerate")
    assert "accelerate.commands.launch" in acc and str(scale.CONFIG_DIR / "accelerate_ddp.yaml") in acc
    with pytest.raises(ValueError, match="runs one process"):
        launcher.launch_command(2, launcher="python")
    with pytest.raises(ValueError, match="launcher must be one of"):
        launcher.launch_command(1, launcher="mpirun")


@pytest.mark.parametrize("four_bit", [False, True])
def test_the_script_loads_bitsandbytes_only_when_it_quantises(four_bit):
    code = textwrap.dedent(f"""
        import sys
        from labkit import launcher
        rc = launcher.main(["--check", "--load_in_4bit", "{'true' if four_bit else 'false'}", "--device", "cpu"])
        assert rc == 0, rc
        assert "peft" in sys.modules
        print("BNB", sys.modules.get("bitsandbytes") is not None)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180, env=_env())
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"BNB {four_bit}" in out.stdout, out.stdout


@pytest.mark.slow
def test_fsdp_config_is_refused_on_cpu_with_a_clear_error(tmp_path):
    """accelerate 1.15 runs FSDP only on GPUs (with cpu=True it silently builds DDP instead): the script
    parses the FSDP settings accelerate launch passes, then refuses."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(scale.CONFIG_DIR / "accelerate_fsdp.yaml"), "--num_processes", "2", "--main_process_port",
           str(launcher.free_port()), "-m", "labkit.launcher", "--micro_batch", "4",
           "--output_dir", str(tmp_path / "x")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=_env())
    assert proc.returncode != 0
    assert "error: FSDP was requested (fsdp_version=2, reshard_after_forward=True)" in proc.stderr
    assert "only on GPUs" in proc.stderr and not (tmp_path / "x").exists()


def test_a_refused_config_surfaces_the_scripts_own_message():
    """torchrun buries a rank's "error: ..." line under pages of its own report; run() raises ConfigError
    with the script's message, and RuntimeError with the end of the output for anything else."""
    report = "error: global_batch=6 is not divisible by world_size x micro_batch = 4 x 1 = 4; use ...\n" + "x" * 5000
    exc = launcher.failure(1, report, ["torchrun"])
    assert isinstance(exc, scale.ConfigError) and str(exc).startswith("global_batch=6 is not divisible")
    other = launcher.failure(1, "Traceback ...\nValueError: boom", ["python", "-m", "labkit.launcher"])
    assert type(other) is RuntimeError and "exit 1" in str(other) and "ValueError: boom" in str(other)


def test_run_refuses_a_batch_plan_that_cannot_split_before_starting_a_process(tmp_path, monkeypatch):
    """Lesson 16's exercise: a global batch that does not split over the processes stops with the fix named,
    before any process starts (the script's own refusal under torchrun is test_cli_reports_errors_...)."""
    def no_launch(*args):
        raise AssertionError("run() started processes for a plan it should have refused")

    monkeypatch.setattr(launcher, "_run_group", no_launch)
    with pytest.raises(scale.ConfigError, match=r"global_batch=6 is not divisible by world_size x micro_batch = 2 x 2 = 4; "
                                                r"with 2 process\(es\) use micro_batch in \[1, 3\]"):
        launcher.run(2, {"global_batch": 6, "micro_batch": 2, "steps": 1}, workdir=tmp_path)
    with pytest.raises(scale.ConfigError, match="unknown key 'stpes'"):
        launcher.run(1, {"stpes": 3}, workdir=tmp_path)
    assert not list(tmp_path.iterdir())


CRASHING_RANK = textwrap.dedent("""
    import os, sys, time
    import torch.distributed as dist
    dist.init_process_group("gloo")
    if dist.get_rank() == 1:
        raise RuntimeError("rank 1 broke on purpose")
    dist.barrier()  # rank 0 waits for a rank that will never come
""")


@pytest.mark.slow
def test_a_rank_that_crashes_stops_the_whole_run(tmp_path, monkeypatch):
    """One rank raising while the other waits in a collective: the launcher ends the group, and run()
    raises with the crashed rank's message instead of hanging until its timeout."""
    worker = tmp_path / "worker.py"
    worker.write_text(CRASHING_RANK)
    monkeypatch.setattr(launcher, "launch_command", lambda nproc, config, overrides, name: [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), str(worker)])
    # a hang would end in TimeoutError (launcher.run stops the group at its timeout), not this RuntimeError
    with pytest.raises(RuntimeError, match="rank 1 broke on purpose"):
        # micro-batch 4: a plan that splits over 2 processes, which run() checks before it launches anything
        launcher.run(2, {"micro_batch": 4}, workdir=tmp_path, timeout=240)


HANGING_RUN = textwrap.dedent("""
    import os, subprocess, sys, time
    rank = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])  # a rank that never ends
    open(sys.argv[1], "w").write(f"{os.getpid()} {rank.pid}")
    print("started", flush=True)
    rank.wait()
""")


def _gone(pid, seconds=10.0):
    """PID has ended (no such process, or a zombie waiting to be reaped) within SECONDS."""
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_rank_that_hangs_is_stopped_at_the_timeout_with_every_process(tmp_path, monkeypatch):
    """A run that never ends raises TimeoutError naming the timeout, with the output so far, and leaves no
    process behind: the launcher's ranks are killed with it (killing only the launcher would orphan them)."""
    worker, pids = tmp_path / "hang.py", tmp_path / "pids"
    worker.write_text(HANGING_RUN)
    monkeypatch.setattr(launcher, "launch_command", lambda nproc, config, overrides, name: [
        sys.executable, str(worker), str(pids)])
    with pytest.raises(TimeoutError, match=r"did not finish within 5 s \(a rank hung\?\)[\s\S]*started"):
        launcher.run(1, {}, workdir=tmp_path, timeout=5)  # time enough to start two Pythons on a busy machine
    parent, rank = map(int, pids.read_text().split())
    assert _gone(parent) and _gone(rank), "a process of the run was left running"


# ----------------------------------------------------------------------------- shipped launcher files

def test_accelerate_configs_parse():
    from accelerate.commands.config.config_args import ClusterConfig

    ddp = ClusterConfig.from_yaml_file(str(scale.CONFIG_DIR / "accelerate_ddp.yaml"))
    fsdp = ClusterConfig.from_yaml_file(str(scale.CONFIG_DIR / "accelerate_fsdp.yaml"))
    assert ddp.distributed_type.name == "MULTI_GPU" and ddp.mixed_precision == "no"
    assert fsdp.distributed_type.name == "FSDP"
    assert fsdp.fsdp_config["fsdp_version"] == 2 and fsdp.fsdp_config["fsdp_reshard_after_forward"] is True
    assert fsdp.fsdp_config["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"


def test_slurm_example_is_valid_bash_and_uses_real_config_keys():
    path = scale.CONFIG_DIR / "slurm_train_sft.sbatch"
    text = path.read_text()
    assert subprocess.run(["bash", "-n", str(path)]).returncode == 0
    assert "srun torchrun" in text and "scripts/train_sft.py" in text and "#SBATCH --nodes=2" in text
    script = text[text.index("scripts/train_sft.py"):text.index("\n\n", text.index("scripts/train_sft.py"))]
    keys = re.findall(r"--(\w+) ", script)
    assert "config" in keys and "precision" in keys and set(keys) - {"config"} <= set(scale.FIELDS)


def test_shown_command_hides_this_machines_paths(tmp_path):
    work = str(tmp_path / "labkit_scale_x")
    cmd = launcher.launch_command(2, scale.DEFAULT_CONFIG, {"output_dir": f"{work}/adapter", "steps": 3})
    text = launcher.shown_command({"command": cmd, "workdir": work})
    assert text.startswith("python -m torch.distributed.run ")
    assert "--config labkit/assets/configs/sft_lora.yaml" in text and "--output_dir $WORK/adapter" in text
    assert str(ROOT) not in text and str(tmp_path) not in text and sys.executable not in text
    with pytest.raises(scale.ConfigError, match="labkit/assets/configs/sft_lora.yaml in the labkit package"):
        scale.load_config(tmp_path / "missing.yaml")
    assert str(ROOT) not in str(pytest.raises(scale.ConfigError, scale.load_config, tmp_path / "m.yaml").value)
