"""Build and install hpm_kernels (and the reference trainer package hpm_pretrain from python/).

Build knobs (environment variables; none is needed, the defaults are chosen for the machine):
  HPM_KERNELS_BUILD_CUDA=auto|0|1  auto (default): build the CUDA extension from csrc/ whenever a
                                   usable CUDA toolkit is found, with or without a visible GPU;
                                   0: never; 1: fail loudly if it cannot be built.
  CUDA_HOME                        the toolkit to use; by default found by hpm_kernels/build_config.py
                                   (the nvcc on PATH followed to its real toolkit, CUDA_PATH,
                                   /usr/local/cuda).
  TORCH_CUDA_ARCH_LIST             GPU archs; default: the visible GPUs' own, else "8.0+PTX".
  MAX_JOBS                         parallel compile jobs; default: one per usable core.
Building an extension needs torch at build time: `pip install --no-build-isolation .`.
What the build decided is written to hpm_kernels/_build.json (hpm_kernels.build_info()).
"""

from __future__ import annotations

import glob
import importlib.util
import os
import sys
from pathlib import Path

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _log(msg: str) -> None:
    print(f"hpm_kernels setup: {msg}", file=sys.stderr)


def _load_build_config():
    """hpm_kernels/build_config.py on its own: importing the package would need the extensions."""
    spec = importlib.util.spec_from_file_location("_hpm_build_config", os.path.join(ROOT, "hpm_kernels", "build_config.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


build_config = _load_build_config()


def _build_cuda_mode() -> str:
    mode = os.environ.get("HPM_KERNELS_BUILD_CUDA", "auto").strip().lower()
    if mode not in {"auto", "0", "1"}:
        sys.exit(f"hpm_kernels setup: HPM_KERNELS_BUILD_CUDA must be auto, 0 or 1, got {mode!r}")
    return mode


def _sources(*patterns: str) -> list[str]:
    return sorted(f for pattern in patterns for f in glob.glob(pattern))


def _torch():
    """(torch, None), or (None, why torch cannot build extensions here)."""
    try:
        import torch
    except ImportError:
        return None, "torch is not importable at build time (install torch first, then pip install --no-build-isolation .)"
    return torch, None


def _visible_capabilities(torch) -> list[tuple[int, int]]:
    try:
        return [torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())]
    except Exception:  # a driver problem means no usable GPU for choosing archs, not a failed build
        return []


def plan_cuda(record: dict) -> str | None:
    """Resolve the toolkit and archs for the CUDA extension into ``record`` and the
    environment torch's build reads; return why it cannot be built, or None."""
    mode = _build_cuda_mode()
    record["mode"] = mode
    if mode == "0":
        return "HPM_KERNELS_BUILD_CUDA=0"
    if not any(f.endswith(".cu") for f in _sources("csrc/cuda/*.cu")):
        return "csrc/cuda has no sources"
    torch, why = _torch()
    if why is not None:
        return why
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU-only build"
    toolkit = build_config.find_cuda_toolkit(torch.version.cuda)
    record.update(cuda_home=toolkit.home, cuda_home_how=toolkit.how, cuda_version=toolkit.version)
    if toolkit.home is None:
        return toolkit.reason
    arch_list, arch_why = build_config.default_arch_list(os.environ, _visible_capabilities(torch))
    record.update(arch_list=arch_list, arch_list_how=arch_why)
    # torch.utils.cpp_extension reads these; CUDA_HOME also as its module global, which it set at import.
    os.environ["CUDA_HOME"] = toolkit.home
    os.environ["TORCH_CUDA_ARCH_LIST"] = arch_list
    from torch.utils import cpp_extension

    cpp_extension.CUDA_HOME = toolkit.home
    return None


def cpu_extension(record: dict) -> list:
    """hpm_kernels._C: the hpm_C schemas and the C++ CPU kernels; needs only a C++ compiler."""
    sources = _sources("csrc/schema.cpp", "csrc/cpu/*.cpp")
    _, why = _torch()
    if why is None and len(sources) < 2:
        why = "csrc/cpu has no sources"
    record["built"], record["reason"] = why is None, why
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


def cuda_extension(record: dict, cpu_built: bool) -> list:
    """hpm_kernels._C_cuda: the CUDA kernels (registers into the hpm_C schemas of _C)."""
    why = plan_cuda(record)
    if why is None and not cpu_built:
        why = "it needs the CPU extension (its hpm_C schemas), which is not built"
    record["built"], record["reason"] = why is None, why
    if why is not None:
        if record["mode"] == "1":
            sys.exit(f"hpm_kernels setup: HPM_KERNELS_BUILD_CUDA=1 but the CUDA extension cannot be built: {why}")
        _log(f"skipping the CUDA extension: {why}")
        return []
    from torch.utils.cpp_extension import CUDAExtension

    _log(
        f"building the CUDA extension with the toolkit {record['cuda_home']} (CUDA {record['cuda_version']}; "
        f"{record['cuda_home_how']}) for TORCH_CUDA_ARCH_LIST={record['arch_list']} ({record['arch_list_how']})"
    )
    return [
        CUDAExtension(
            name="hpm_kernels._C_cuda",
            sources=_sources("csrc/cuda/*.cu", "csrc/cuda/*.cpp"),
            include_dirs=[os.path.join(ROOT, "csrc")],
            extra_compile_args={"cxx": ["-O3"], "nvcc": ["-O3", "--expt-relaxed-constexpr"]},
        )
    ]


def extensions() -> tuple[list, dict]:
    record: dict = {"cpu": {}, "cuda": {}}
    exts = cpu_extension(record["cpu"])
    exts += cuda_extension(record["cuda"], cpu_built=bool(exts))
    if not exts:
        return [], {}
    import torch
    from torch.utils.cpp_extension import BuildExtension

    jobs, jobs_why = build_config.default_max_jobs(os.environ)
    os.environ["MAX_JOBS"] = jobs
    record.update(torch=torch.__version__, torch_cuda=torch.version.cuda, python=sys.version.split()[0])
    record.update(max_jobs=int(jobs) if jobs.isdigit() else jobs, max_jobs_how=jobs_why)
    _log(f"MAX_JOBS={jobs} ({jobs_why})")

    class BuildAndRecord(BuildExtension):
        """Builds the extensions, then writes what was decided to hpm_kernels/_build.json, in the
        wheel and, for editable installs, in the source tree."""

        def run(self) -> None:
            super().run()
            targets = [os.path.join(self.build_lib, "hpm_kernels")]
            if self.inplace or getattr(self, "editable_mode", False):
                targets.append(os.path.join(ROOT, "hpm_kernels"))
            for target in targets:
                os.makedirs(target, exist_ok=True)
                build_config.write_record(record, path=Path(target) / build_config.RECORD_NAME)

    return exts, {"build_ext": BuildAndRecord}


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
