"""pytest-benchmark front end of the suites (benchmarks/test_suites.py): `pytest benchmarks --benchmark-only`.

Options (besides pytest-benchmark's own --benchmark-*): --bench-smoke (common.smoke: one call per measurement, the
smallest sizes; what CI runs), --bench-quick, --bench-no-compile, --bench-device cpu|cuda, --bench-backend
native|triton, --bench-threads N (default 2), --bench-suite NAME (repeatable; default every suite).
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # Triton kernels on CPU tensors where no GPU is present

import pytest  # noqa: E402


def pytest_addoption(parser):
    group = parser.getgroup("fastsde bench", "fastsde's benchmark suites (fastsde bench SUITE)")
    group.addoption("--bench-smoke", action="store_true", help="smoke mode: one call per measurement, tiny sizes")
    group.addoption("--bench-quick", action="store_true", help="fewer repeats")
    group.addoption("--bench-no-compile", action="store_true", help="skip the torch.compile baselines")
    group.addoption("--bench-device", choices=("cpu", "cuda"), default="cpu", help="where the tensors live")
    group.addoption("--bench-backend", choices=("native", "triton"), default="native", help="the fused backend")
    group.addoption("--bench-threads", type=int, default=2, help="torch/OpenMP threads (default 2)")
    group.addoption("--bench-suite", action="append", default=None, metavar="NAME",
                    help="only this suite (repeatable); default: every suite of `fastsde bench`")


@pytest.fixture(scope="session")
def bench_options(request):
    import torch

    from fastsde.benchmarks.common import get_device

    opt = request.config.getoption
    if opt("--bench-threads") < 1:
        raise pytest.UsageError(f"--bench-threads must be >= 1, got {opt('--bench-threads')}")
    torch.set_num_threads(opt("--bench-threads"))
    return {"smoke": opt("--bench-smoke"), "quick": opt("--bench-quick"), "use_compile": not opt("--bench-no-compile"),
            "device": get_device(opt("--bench-device")), "backend": opt("--bench-backend")}
