"""The course's SFT + LoRA training script, for one process or many (labkit.launcher.main; the training is labkit.scale).

    python scripts/train_sft.py --config labkit/assets/configs/sft_lora.yaml
    torchrun --standalone --nproc_per_node 2 scripts/train_sft.py --config labkit/assets/configs/sft_lora.yaml
    accelerate launch --config_file labkit/assets/configs/accelerate_ddp.yaml --num_processes 2 \
        scripts/train_sft.py --config labkit/assets/configs/sft_lora.yaml --steps 20

Every config key is also a flag that overrides the file (`--steps 20 --tasks dti risk`; `--help` lists
them); `--check` checks the config and the batch plan and stops.
Exit status 2 with an "error: ..." line for a bad config.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from labkit.launcher import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
