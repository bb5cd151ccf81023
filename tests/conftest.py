import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # Triton kernels run on CPU tensors (no GPU here); read at triton import

import pytest
import torch

# Tests run on 2 cores: keep torch's thread count deterministic across machines.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session", autouse=True)
def _run_in_a_scratch_folder(tmp_path_factory):
    """Every test runs with a scratch folder as its working directory: a command given a relative output path (the
    CLI fuzzers' `--out .npz`, say) writes there, never into the checkout."""
    before = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("cwd"))
    yield
    os.chdir(before)


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)
    yield


@pytest.fixture
def one_thread():
    """One torch thread for the test: batches of a few images or points gain nothing from a second OpenMP thread,
    which only adds waits (10-50x slower when another process shares the cores). Use with
    `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---- CUDA tests: `pytest -m cuda` selects them (scripts/gpu_check.sh); without a CUDA device they skip ----------

def cuda_missing() -> str | None:
    """Why CUDA tests cannot run here, or None when a CUDA device is available."""
    if torch.cuda.is_available():
        return None
    build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
    return f"needs a CUDA device (torch {torch.__version__}, {build}, none visible)"


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: runs on a CUDA device (skipped without one); select with -m cuda")
    config.addinivalue_line("markers", "slow: minutes on one thread (quality guards); deselect with -m 'not slow'")


def pytest_collection_modifyitems(config, items):
    why = cuda_missing()
    if why is None:
        return
    skip = pytest.mark.skip(reason=why)
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


@pytest.fixture
def cuda_device():
    """torch.device("cuda"), or a clean skip without one (for a test that also has a CPU part)."""
    why = cuda_missing()
    if why is not None:
        pytest.skip(why)
    return torch.device("cuda")
