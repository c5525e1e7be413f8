"""Written by labkit.harness.write_tasks: lm-eval's custom_dataset for the course's task files."""
from pathlib import Path


def load_jsonl(data_file, **_):
    """The JSONL DATA_FILE beside this module as a datasets.DatasetDict with one split, "test"."""
    import json

    from datasets import Dataset, DatasetDict

    lines = (Path(__file__).resolve().parent / data_file).read_text().splitlines()
    return DatasetDict({"test": Dataset.from_list([json.loads(line) for line in lines if line.strip()])})
