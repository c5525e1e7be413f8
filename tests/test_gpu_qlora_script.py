"""scripts/gpu_qlora.py runs end to end in --smoke mode on a CPU (a tiny model), so the script is
ready for a GPU, and lesson 05 never shows smoke figures as measurements."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from labkit import qlora

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_qlora.py"


@pytest.mark.slow
def test_smoke_run_writes_json_and_table(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--steps", "1", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads((tmp_path / "gpu_qlora.json").read_text())
    # the tiny Llama (scripts/gpu_qlora.py's CONFIG_SMOKE), counted by hand: untied embedding and head, per
    # block q, k, v, o (key/value 32 wide), gate, up, down and two RMSNorms, then the final norm
    block = 64 * 64 + 2 * 64 * 32 + 64 * 64 + 3 * 64 * 160 + 2 * 64
    assert res["smoke"] is True and res["n_params"] == 2 * 512 * 64 + 2 * block + 64
    assert set(res["versions"]) >= {"torch", "transformers", "peft", "bitsandbytes", "cuda"}
    assert list(res["runs"]) == ["LoRA, bf16 weights", "QLoRA, NF4 + double quant", "QLoRA, NF4 + paged 8-bit AdamW"]
    bf16, nf4 = res["runs"]["LoRA, bf16 weights"], res["runs"]["QLoRA, NF4 + double quant"]
    assert nf4["model_bytes"] < bf16["model_bytes"]  # 4-bit linear layers, even on the tiny model
    # rank 16 on all seven projections of 2 blocks: r * (d_in + d_out) with hidden 64, MLP 160, key/value 32 wide
    per_block = (64 + 64) + 2 * (64 + 32) + (64 + 64) + 3 * (64 + 160)
    assert bf16["trainable_params"] == nf4["trainable_params"] == 16 * per_block * 2
    llama = sorted(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    assert bf16["target_modules"] == nf4["target_modules"] == llama  # the model's own layers (adapters.targets)
    for run in res["runs"].values():
        # random weights predict nearly uniformly over the 512-token vocabulary: the loss starts near ln 512
        # throughput is the smoke batch (2 x 32 tokens) over the measured step time
        assert run["tokens_per_s"] == pytest.approx(2 * 32 / run["step_s"]) and run["step_s"] > 0
        assert abs(run["loss_first"] - math.log(512)) < 0.5
        if res["device"] == "cpu":
            assert run["train_peak_gb"] is None  # never a made-up GPU figure
    table = (tmp_path / "gpu_qlora.md").read_text()
    assert "SMOKE RUN" in table and table.count("\n| ") == 4
    assert qlora.load_gpu_results(tmp_path / "gpu_qlora.json") is None


def test_bad_arguments_are_refused(tmp_path):
    for args in (["--smoke"], ["--smoke", "--out", str(tmp_path), "--steps", "0"]):
        proc = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2 and "error:" in proc.stderr
