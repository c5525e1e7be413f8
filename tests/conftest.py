"""Test defaults: offline, quiet, deterministic, isolated. Nothing in the suite may reach the network, and
nothing writes the learner's own files (the exercise progress file lives in a temporary folder)."""

import os
import socket
import tempfile

# set, not setdefault: a developer's HF_HUB_OFFLINE=0 must not let the suite download (the kernels that
# papermill starts inherit this environment too)
os.environ.update({
    "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1", "TOKENIZERS_PARALLELISM": "false",
})
# check() and quiz() record progress; in the suite (and the notebooks it runs) that goes to a scratch file
os.environ["LABKIT_PROGRESS"] = os.path.join(tempfile.mkdtemp(prefix="labkit-test-progress-"), "progress.json")

import pytest  # noqa: E402

_connect = socket.socket.connect


def _local_only(self, address):
    """The socket guard: connections to this machine only (Jupyter kernels, torch's gloo rendezvous)."""
    host = address[0] if isinstance(address, tuple) else address
    if self.family in (socket.AF_INET, socket.AF_INET6) and host not in ("127.0.0.1", "localhost", "::1", "0.0.0.0"):
        raise OSError(f"the test suite must not reach the network (a connection to {address!r} was refused)")
    return _connect(self, address)


socket.socket.connect = _local_only

import hub_models as _hub  # noqa: E402  (tests/ is on sys.path: pytest puts a conftest's folder there)


@pytest.fixture(scope="session")
def base():
    """The bundled model and tokenizer, loaded once for the whole session (CPU, float32)."""
    from labkit import env, models

    env.quiet()
    return models.load_base(device="cpu")


@pytest.fixture(scope="session")
def hub_models():
    """{kind: folder} of the locally built Hub-style fixture models (tests/hub_models.py), built once into
    .cache/hub_models/ and reused while their sources and library versions stay the same."""
    return _hub.cached()


@pytest.fixture(scope="session", params=_hub.KINDS, ids=list(_hub.KINDS))
def hub_model(request, hub_models):
    """(kind, folder) of each Hub-style fixture model in turn: a test using it runs once per kind."""
    return request.param, hub_models[request.param]


@pytest.fixture(scope="session")
def load_script():
    """load_script("name") imports scripts/name.py as a module (scripts/ is not a package)."""
    import importlib.util
    from pathlib import Path

    def load(name: str):
        path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod

    return load


@pytest.fixture
def checker_env(tmp_path, monkeypatch):
    """labkit.check with a private progress file (TMP_PATH/progress.json) and its default isolation
    and timeout; a test module opts in with pytestmark = pytest.mark.usefixtures("checker_env")."""
    monkeypatch.setenv("LABKIT_PROGRESS", str(tmp_path / "progress.json"))
    monkeypatch.delenv("LABKIT_CHECK_ISOLATION", raising=False)
    monkeypatch.delenv("LABKIT_CHECK_TIMEOUT", raising=False)


@pytest.fixture
def failed():
    """failed(result, *words): assert RESULT is a failed labkit.check Result whose message holds
    every one of WORDS; returns it."""
    from labkit.check import Result

    def check_failed(result, *words):
        assert isinstance(result, Result) and result.passed is False
        for w in words:
            assert w in result.message, (w, result.message)
        return result

    return check_failed


@pytest.fixture
def merge():
    """A right answer to the exercise lora_merge, for the checker's own tests."""

    def merge(W, A, B, alpha, r):
        return W + (alpha / r) * (B @ A)

    return merge


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Keep each test's call report on the item, so a fixture can tell a failure (the browser test
    takes a screenshot then)."""
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "call":
        item.rep_call = rep
