"""Build and install fastsde: one native extension, fastsde._C (C++/OpenMP; + CUDA when torch has CUDA).

Development install (uses the venv's pinned torch; an isolated build env would fetch a different torch):

    pip install --no-build-isolation -e .
"""
import glob
import os

from setuptools import find_packages, setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
import torch

ROOT = os.path.dirname(os.path.abspath(__file__))


def _rel(pattern):
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def _has_nvcc():
    """True when torch was built with CUDA and its CUDA_HOME has nvcc. torch falls back to /usr/local/cuda when nvcc
    is not on PATH; a runtime-only install there has no compiler, and the build stays CPU-only (CUDA tensors then
    run the Triton or reference backend)."""
    if not torch.version.cuda or CUDA_HOME is None:
        return False
    if not os.path.exists(os.path.join(CUDA_HOME, "bin", "nvcc")):
        print(f"fastsde: torch has CUDA {torch.version.cuda} but {CUDA_HOME} has no bin/nvcc: building the CPU "
              "extension only")
        return False
    return True


def native_extension():
    """fastsde._C: CppExtension on CPU-only torch, CUDAExtension when torch has CUDA and nvcc is found."""
    # csrc/api/*.cpp: further torch.library fragments of the fastsde library (one per op family)
    sources = _rel("csrc/bindings.cpp") + _rel("csrc/api/*.cpp") + _rel("csrc/cpu/*.cpp")
    # -ffp-contract=off: only explicit fmas (csrc/fsn1.h, csrc/step.h), so every SIMD level computes the same bits.
    # No -march: csrc/cpu/step_avx2.cpp / step_avx512.cpp pick their ISA with #pragma GCC target and are chosen at
    # run time; everything else runs on any x86-64.
    cxx = ["-O3", "-std=c++17", "-fopenmp", "-ffp-contract=off", "-fno-math-errno"]
    common = dict(
        name="fastsde._C",
        include_dirs=[os.path.join(ROOT, "csrc")],
        extra_link_args=["-fopenmp"],
    )
    if _has_nvcc():
        # The torch-free kernels of csrc/cuda; bindings.cpp registers them under FASTSDE_WITH_CUDA. BuildExtension
        # adds the CUDA include dir, cudart, the __CUDA_NO_HALF* defines and the -gencode flags (TORCH_CUDA_ARCH_LIST);
        # CMakeLists.txt compile-checks both halves with the same flags where no GPU torch is installed.
        return CUDAExtension(
            sources=sources + _rel("csrc/cuda/*.cu"),
            extra_compile_args={
                "cxx": cxx + ["-DFASTSDE_WITH_CUDA"],
                "nvcc": ["-O3", "-std=c++17", "--fmad=false", "-DFASTSDE_WITH_CUDA"],
            },
            **common,
        )
    return CppExtension(sources=sources, extra_compile_args={"cxx": cxx}, **common)


def package_data():
    """The digits application's shipped models (fastsde/digits/weights/)."""
    return {"fastsde.digits": ["weights/*.safetensors"]}


setup(
    name="fastsde",
    version="0.1.0",
    description="A fast sampler for score-based diffusion models (fused C++/CUDA/Triton sampler steps)",
    python_requires=">=3.9",
    packages=find_packages(include=["fastsde", "fastsde.*"]) + ["fastsde.kernels", "fastsde.benchmarks"],
    package_dir={"fastsde.kernels": "kernels", "fastsde.benchmarks": "benchmarks"},
    package_data=package_data(),
    ext_modules=[native_extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    # The engine (fastsde.sde, sampling, ops, nn, models, likelihood, controllable) needs only these.
    install_requires=[
        "torch>=2.1",
        "numpy>=1.24",
        "scipy>=1.10",
        "safetensors>=0.4",
    ],
    # The digits application (fastsde.digits, the `fastsde` command's image commands, progress bars, pictures).
    extras_require={
        "digits": ["scikit-learn>=1.2", "matplotlib>=3.7", "tqdm>=4.60"],
        "triton": ["triton>=2.1"],
        # Compatibility tests against k-diffusion's and diffusers' own samplers (tests/test_real_packages.py).
        # k-diffusion's full dependency list pulls torchvision and a CUDA torch: the dev environment installs it
        # with --no-deps (requirements-nodeps.txt) and only what k_diffusion.sampling imports.
        "dev": ["pytest", "diffusers>=0.42", "torchsde>=0.2.5", "torchdiffeq>=0.2", "Pillow"],
    },
    entry_points={"console_scripts": ["fastsde = fastsde.cli:main"]},
    zip_safe=False,
)
