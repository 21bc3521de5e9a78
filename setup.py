"""Build and install hpm_kernels (and the reference trainer package hpm_pretrain from python/).

Build knobs (environment variables):
  HPM_KERNELS_BUILD_CUDA=auto|0|1  auto (default): build the CUDA extension from csrc/ whenever
                                   the CUDA toolkit is found (nvcc / CUDA_HOME), with or without a
                                   visible GPU; 0: never; 1: fail loudly if it cannot be built.
  TORCH_CUDA_ARCH_LIST             GPU archs to compile for (default "8.0;9.0").
  MAX_JOBS                         parallel compile jobs (read by torch's BuildExtension/ninja).
Building an extension needs torch at build time: `pip install --no-build-isolation .`.
"""

from __future__ import annotations

import glob
import os
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_ARCH_LIST = "8.0;9.0"


def _log(msg: str) -> None:
    print(f"hpm_kernels setup: {msg}", file=sys.stderr)


def _build_cuda_mode() -> str:
    mode = os.environ.get("HPM_KERNELS_BUILD_CUDA", "auto").strip().lower()
    if mode not in {"auto", "0", "1"}:
        sys.exit(f"hpm_kernels setup: HPM_KERNELS_BUILD_CUDA must be auto, 0 or 1, got {mode!r}")
    return mode


def _sources(*patterns: str) -> list[str]:
    return sorted(f for pattern in patterns for f in glob.glob(pattern))


def _why_no_torch() -> str | None:
    try:
        import torch  # noqa: F401
        from torch.utils import cpp_extension  # noqa: F401
    except ImportError:
        return "torch is not importable at build time (install torch first, then pip install --no-build-isolation .)"
    return None


def _why_no_cuda_build() -> str | None:
    """Why the CUDA extension cannot be built here, or None. A missing GPU is not a reason."""
    why = _why_no_torch()
    if why is not None:
        return why
    import torch
    from torch.utils import cpp_extension

    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU-only build"
    home = cpp_extension.CUDA_HOME
    if home is None:
        return "no CUDA toolkit found (set CUDA_HOME or put nvcc on PATH)"
    # torch guesses CUDA_HOME from the nvcc on PATH; a wrapper script there gives a directory
    # without the toolkit, and the link would fail late with "cannot find -lcudart".
    runtime = [os.path.join(home, d, "libcudart.so") for d in ("lib64", "lib", os.path.join("targets", "x86_64-linux", "lib"))]
    if not any(os.path.exists(f) for f in runtime):
        return (
            f"CUDA_HOME={home} holds no CUDA runtime library (libcudart.so); set CUDA_HOME to the toolkit, e.g. /usr/local/cuda"
        )
    return None


def cpu_extension() -> list:
    """hpm_kernels._C: the hpm_C schemas and the C++ CPU kernels; needs only a C++ compiler."""
    sources = _sources("csrc/schema.cpp", "csrc/cpu/*.cpp")
    if len(sources) < 2:
        _log("csrc/cpu has no sources yet: no CPU extension to build")
        return []
    why = _why_no_torch()
    if why is not None:
        _log(f"skipping the C++ extensions: {why}")
        return []
    from torch.utils.cpp_extension import CppExtension

    return [
        CppExtension(
            name="hpm_kernels._C",
            sources=sources,
            include_dirs=[os.path.join(ROOT, "csrc")],
            extra_compile_args={"cxx": ["-O3", "-fopenmp"]},
            extra_link_args=["-fopenmp"],
        )
    ]


def cuda_extension() -> list:
    """hpm_kernels._C_cuda: the CUDA kernels (registers into the hpm_C schemas of _C)."""
    mode = _build_cuda_mode()
    sources = _sources("csrc/cuda/*.cu", "csrc/cuda/*.cpp")
    if mode == "0":
        _log("HPM_KERNELS_BUILD_CUDA=0: skipping the CUDA extension")
        return []
    if not any(f.endswith(".cu") for f in sources):
        _log("csrc/cuda has no sources yet: no CUDA extension to build")
        return []
    why = _why_no_cuda_build()
    if why is not None:
        if mode == "1":
            sys.exit(f"hpm_kernels setup: HPM_KERNELS_BUILD_CUDA=1 but the CUDA extension cannot be built: {why}")
        _log(f"skipping the CUDA extension: {why}")
        return []
    from torch.utils.cpp_extension import CUDAExtension

    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_ARCH_LIST)
    _log(f"building the CUDA extension for TORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']}")
    return [
        CUDAExtension(
            name="hpm_kernels._C_cuda",
            sources=sources,
            include_dirs=[os.path.join(ROOT, "csrc")],
            extra_compile_args={"cxx": ["-O3"], "nvcc": ["-O3", "--expt-relaxed-constexpr"]},
        )
    ]


def extensions() -> tuple[list, dict]:
    mode = _build_cuda_mode()
    exts = cpu_extension()
    cuda = cuda_extension()
    if cuda and not exts:
        if mode == "1":
            sys.exit("hpm_kernels setup: the CUDA extension needs the CPU extension (its hpm_C schemas), which is not built")
        _log("skipping the CUDA extension: it needs the CPU extension (its hpm_C schemas)")
        cuda = []
    exts += cuda
    if not exts:
        return [], {}
    from torch.utils.cpp_extension import BuildExtension

    return exts, {"build_ext": BuildExtension}


ext_modules, cmdclass = extensions()
TRAIN_REQUIRES = ["torchvision", "timm", "tqdm", "pillow", "elpv-dataset", "safetensors"]

setup(
    name="hpm_kernels",
    version="0.1.0",
    description="Fused PyTorch ops (Triton, CUDA C++, C++) for Hard Patches Mining masked-image pretraining",
    long_description=open(os.path.join(ROOT, "README.md"), encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    packages=find_packages(include=["hpm_kernels", "hpm_kernels.*"]) + find_packages("python"),
    package_dir={"hpm_pretrain": "python/hpm_pretrain"},
    install_requires=["torch>=2.6", "numpy"],
    extras_require={
        # runtime deps of the reference trainer (hpm_pretrain); elpv-dataset's images are CC BY-NC-SA 4.0
        "train": TRAIN_REQUIRES,
        "test": [*TRAIN_REQUIRES, "pytest", "pytest-benchmark", "hypothesis", "ruff", "scipy"],
    },
    entry_points={"console_scripts": ["hpm-pretrain=hpm_pretrain.cli:main"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    zip_safe=False,
)
