"""The child process of ship.reload_without_peft: load a merged folder with plain transformers while importing
peft fails, run a batch and answer prompts, write the results to a work folder.

    python reload_child.py FOLDER WORK MAX_NEW_TOKENS     (run by path, so labkit/__init__ runs after the block)
"""
import importlib.abc, importlib.util, json, sys, time

class Blocked(importlib.abc.Loader):
    def create_module(self, spec):
        return None

    def exec_module(self, module):
        raise ImportError("peft is blocked in this process: the reload path must not need it")

class BlockPeft(importlib.abc.MetaPathFinder):
    """peft looks installed (transformers asks), but importing it, or any part of it, fails."""
    def find_spec(self, name, path=None, target=None):
        if name == "peft" or name.startswith("peft."):
            return importlib.util.spec_from_loader(name, Blocked())
        return None

sys.meta_path.insert(0, BlockPeft())
folder, work, max_new_tokens = sys.argv[1], sys.argv[2], int(sys.argv[3])
t0 = time.perf_counter()
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained(folder, use_safetensors=True, trust_remote_code=False).eval()
tok = AutoTokenizer.from_pretrained(folder)
seconds = time.perf_counter() - t0
from labkit.evaluate import answer  # plain generate(); labkit imports peft only where adapters are loaded
batch = load_file(work + "/batch.safetensors")
with torch.no_grad():
    logits = model(**batch).logits.float()
save_file({"logits": logits.contiguous()}, work + "/logits.safetensors")
prompts = json.load(open(work + "/prompts.json"))
answers = answer(model, tok, prompts, max_new_tokens=max_new_tokens) if prompts else []
json.dump({"answers": answers, "load_seconds": seconds, "dtype": str(next(model.parameters()).dtype),
           "class": type(model).__name__,
           "peft_modules": sorted(m for m in sys.modules if m == "peft" or m.startswith("peft."))},
          open(work + "/result.json", "w"))
