import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # Triton kernels run on CPU tensors (no GPU here); read at triton import
# `fastsde sample` builds an ahead-of-time package per model, precision and batch size on first use (~20 s each):
# off for the suite, on in tests/test_aot.py, which builds into a temporary cache
os.environ.setdefault("FASTSDE_AOT", "0")

import pytest
import torch

try:  # no hypothesis test may depend on the machine's load: no per-example deadline, the same examples every run
    from hypothesis import settings as _hypothesis_settings

    _hypothesis_settings.register_profile("fastsde", deadline=None, derandomize=True)
    _hypothesis_settings.load_profile("fastsde")
except ImportError:  # hypothesis is a dev requirement; the suites that use it import it themselves
    pass

# Tests run on 2 cores: keep torch's thread count deterministic across machines.
torch.set_num_threads(min(2, os.cpu_count() or 1))


# FASTSDE_TEST_TIMES=PATH: write each test's wall time and CPU time (this process's threads plus the subprocesses
# it waited for) as JSON to PATH. Two such files, one from a plain run and one under scripts/emulate_cpu.sh, both
# on an idle machine, estimate another CPU kind's suite time (scripts/suite_estimate.py).
_TIMES_PATH = os.environ.get("FASTSDE_TEST_TIMES")
_TIMES: dict = {}


if _TIMES_PATH:
    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(item, nextitem):
        import resource
        import time

        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        yield
        kids1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        _TIMES[item.nodeid] = {"wall_s": time.perf_counter() - wall0, "cpu_s": time.process_time() - cpu0
                               + (kids1.ru_utime - kids.ru_utime) + (kids1.ru_stime - kids.ru_stime)}

    def pytest_sessionfinish(session, exitstatus):
        import json

        with open(_TIMES_PATH, "w") as f:
            json.dump(_TIMES, f, indent=0)


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
    stray = [item.nodeid for item in items
             if item.get_closest_marker("cuda") is not None and item.path.name != "test_cuda.py"]
    if stray:  # scripts/gpu_check.sh collects tests/test_cuda.py only: a CUDA test elsewhere would never run
        raise pytest.UsageError(f"cuda-marked tests belong in tests/test_cuda.py, found {stray[:3]}")
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
