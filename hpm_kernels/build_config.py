"""What the build of the C++/CUDA extensions uses, chosen for the user, and the record of what it built.

``setup.py`` loads this file on its own (standard library only, no torch import at module level)
to decide, with no environment variable set:

- **which CUDA toolkit** (:func:`find_cuda_toolkit`): an explicit ``CUDA_HOME`` wins; otherwise the
  toolkit that the ``nvcc`` on ``PATH`` really runs (through symlinks, and through wrapper
  scripts by asking nvcc itself), then ``CUDA_PATH``, then ``/usr/local/cuda``: the first directory
  that holds ``bin/nvcc``, the CUDA runtime library and headers, and whose CUDA major version is
  torch's. torch's own guess (the directory above the ``nvcc`` on ``PATH``) is wrong when that
  ``nvcc`` is a wrapper script, and the link then fails late with ``cannot find -lcudart``.
- **which GPU architectures** (:func:`default_arch_list`): ``TORCH_CUDA_ARCH_LIST`` if set; else
  the visible GPUs' own; else ``8.0+PTX`` (sm_80 machine code, run natively by every Ampere and
  Ada GPU, plus compute_80 PTX that the driver compiles for Hopper, Blackwell and later).
- **how many compile jobs** (:func:`default_max_jobs`): ``MAX_JOBS`` if set, else one per usable
  core, fewer where memory is short (about 2 GiB per nvcc job).

The build writes what it decided to ``hpm_kernels/_build.json`` (:func:`write_record`), which
:func:`read_record` and ``hpm_kernels.build_info()`` return, so a missing extension is explained by
the same words the build printed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

RECORD_NAME = "_build.json"
RECORD_PATH = Path(__file__).resolve().parent / RECORD_NAME
#: The record's section for each extension module of hpm_kernels.
EXTENSIONS = {"cpu": "_C", "cuda": "_C_cuda"}
#: The arch list for a build that sees no GPU: one SASS arch plus PTX for every newer GPU.
NO_GPU_ARCH_LIST = "8.0+PTX"
CONVENTIONAL_HOME = "/usr/local/cuda"
_RUNTIME_DIRS = ("lib64", "lib", "targets/x86_64-linux/lib", "targets/sbsa-linux/lib")
_INCLUDE_DIRS = ("include", "targets/x86_64-linux/include", "targets/sbsa-linux/include")
_GIB = 1024**3


@dataclass(frozen=True)
class Toolkit:
    """The result of :func:`find_cuda_toolkit`: ``home`` is None when no usable toolkit was found,
    and then ``reason`` says why, naming every place that was tried."""

    home: str | None
    how: str
    version: str | None = None
    rejected: tuple[tuple[str, str], ...] = field(default=())

    @property
    def reason(self) -> str | None:
        if self.home is not None:
            return None
        if not self.rejected:
            return self.how
        tried = "; ".join(f"{where}: {why}" for where, why in self.rejected)
        return f"{self.how} (tried {tried})"


def toolkit_version(home: str | os.PathLike) -> str | None:
    """The toolkit's CUDA version "major.minor" from its version.json (CUDA >= 11.1) or version.txt."""
    home = Path(home)
    try:
        data = json.loads((home / "version.json").read_text())
        version = data["cuda"]["version"]
    except (OSError, ValueError, KeyError, TypeError):
        try:
            version = (home / "version.txt").read_text()
        except OSError:
            return None
    match = re.search(r"(\d+)\.(\d+)", str(version))
    return f"{match.group(1)}.{match.group(2)}" if match else None


def _nvcc_version(nvcc: str, run: Callable[..., subprocess.CompletedProcess]) -> str | None:
    try:
        out = run([nvcc, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"release (\d+)\.(\d+)", out or "")
    return f"{match.group(1)}.{match.group(2)}" if match else None


def toolkit_problem(
    home: str | os.PathLike,
    torch_cuda: str | None,
    run: Callable[..., subprocess.CompletedProcess] = subprocess.run,
) -> tuple[str | None, str | None]:
    """``(why home is not a usable toolkit or None, its CUDA version or None)``.

    Usable: ``bin/nvcc`` is an executable file, the runtime library (``libcudart.so``) and
    ``cuda_runtime.h`` are there, and its CUDA major version equals torch's (``torch_cuda``, e.g.
    "13.0"), which torch.utils.cpp_extension requires."""
    home = Path(home)
    nvcc = home / "bin" / "nvcc"
    if not home.is_dir():
        return "no such directory", None
    if not (nvcc.is_file() and os.access(nvcc, os.X_OK)):
        return "no executable bin/nvcc", None
    if not any((home / d / "libcudart.so").exists() for d in _RUNTIME_DIRS):
        return f"no CUDA runtime library (libcudart.so in {', '.join(_RUNTIME_DIRS[:2])})", None
    if not any((home / d / "cuda_runtime.h").exists() for d in _INCLUDE_DIRS):
        return "no CUDA headers (include/cuda_runtime.h)", None
    version = toolkit_version(home) or _nvcc_version(str(nvcc), run)
    if torch_cuda and version and version.split(".")[0] != torch_cuda.split(".")[0]:
        return (
            f"CUDA {version}, but torch was built with CUDA {torch_cuda} (the major versions must match; "
            f"install a CUDA {torch_cuda.split('.')[0]} toolkit or a torch built for CUDA {version.split('.')[0]})"
        ), version
    return None, version


def _home_nvcc_runs(nvcc: str, run: Callable[..., subprocess.CompletedProcess]) -> str | None:
    """The toolkit a (possibly wrapper) ``nvcc`` really runs: its ``--dryrun`` prints the directory
    of the real driver as ``_HERE_`` (or ``TOP``) without compiling anything."""
    try:
        out = run(
            [nvcc, "--dryrun", "-c", "-x", "cu", os.devnull, "-o", os.devnull],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    text = (out.stdout or "") + "\n" + (out.stderr or "")
    match = re.search(r"^#\$ (?:_HERE_|TOP)=(.+)$", text, flags=re.MULTILINE)
    if not match:
        return None
    bin_dir = Path(match.group(1).strip())
    return str(bin_dir.parent) if bin_dir.name == "bin" else None


def find_cuda_toolkit(
    torch_cuda: str | None,
    environ: Mapping[str, str] = os.environ,
    which: Callable[[str], str | None] = shutil.which,
    run: Callable[..., subprocess.CompletedProcess] = subprocess.run,
) -> Toolkit:
    """The CUDA toolkit to build with, for a torch built with CUDA ``torch_cuda`` (e.g. "13.0").

    An explicit ``CUDA_HOME`` wins (and is reported, not replaced, when unusable). Otherwise the
    candidates, in order: the toolkit the ``nvcc`` on ``PATH`` runs (its real path through symlinks,
    then the one it reports running, for wrapper scripts), ``CUDA_PATH``, ``/usr/local/cuda``."""
    explicit = environ.get("CUDA_HOME", "").strip()
    if explicit:
        why, version = toolkit_problem(explicit, torch_cuda, run)
        if why is None:
            return Toolkit(explicit, "CUDA_HOME from the environment", version)
        return Toolkit(None, f"CUDA_HOME={explicit} is set but is not a usable CUDA toolkit: {why}")

    candidates: list[tuple[str, str]] = []
    nvcc = which("nvcc")
    if nvcc:
        real = Path(nvcc).resolve()
        candidates.append((str(real.parent.parent), f"the nvcc on PATH ({nvcc})"))
        reported = _home_nvcc_runs(nvcc, run)
        if reported:
            candidates.append((reported, f"the toolkit the nvcc on PATH ({nvcc}) runs"))
    cuda_path = environ.get("CUDA_PATH", "").strip()
    if cuda_path:
        candidates.append((cuda_path, "CUDA_PATH"))
    candidates.append((CONVENTIONAL_HOME, "the conventional location"))

    rejected: list[tuple[str, str]] = []
    seen: set[str] = set()
    for home, how in candidates:
        key = os.path.realpath(home)
        if key in seen:
            continue
        seen.add(key)
        why, version = toolkit_problem(home, torch_cuda, run)
        if why is None:
            return Toolkit(home, how, version, tuple(rejected))
        rejected.append((home, why))
    return Toolkit(None, "no usable CUDA toolkit found (set CUDA_HOME to one)", None, tuple(rejected))


def default_arch_list(environ: Mapping[str, str], visible_capabilities: list[tuple[int, int]]) -> tuple[str, str]:
    """``(TORCH_CUDA_ARCH_LIST value, why)``: the environment's if set, else the visible GPUs' own
    architectures, else :data:`NO_GPU_ARCH_LIST`."""
    explicit = environ.get("TORCH_CUDA_ARCH_LIST", "").strip()
    if explicit:
        return explicit, "TORCH_CUDA_ARCH_LIST from the environment"
    if visible_capabilities:
        archs = sorted(set(visible_capabilities))
        return ";".join(f"{major}.{minor}" for major, minor in archs), "the visible GPUs' own architectures"
    return NO_GPU_ARCH_LIST, "no GPU visible: sm_80 machine code plus PTX that newer GPUs compile at load"


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _available_memory() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def default_max_jobs(environ: Mapping[str, str]) -> tuple[str, str]:
    """``(MAX_JOBS value, why)``: the environment's if set, else one job per usable core, capped at
    one per 2 GiB of available memory (an nvcc job of csrc/cuda peaks near that)."""
    explicit = environ.get("MAX_JOBS", "").strip()
    if explicit:
        return explicit, "MAX_JOBS from the environment"
    cores = _usable_cores()
    memory = _available_memory()
    jobs = cores if memory is None else max(1, min(cores, memory // (2 * _GIB)))
    return str(jobs), f"{cores} usable cores" + ("" if jobs == cores else f", memory for {jobs} jobs")


def write_record(record: Mapping[str, object], path: Path = RECORD_PATH) -> None:
    path.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")


def read_record(path: Path = RECORD_PATH) -> dict | None:
    """What the last build of this installation decided (None if it was not built by setup.py)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def summary(record: Mapping | None = None) -> str:
    """One line per extension saying what the build did, for people (``make install`` prints it)."""
    record = read_record() if record is None else record
    if record is None:
        return "hpm_kernels build: no record (not built by setup.py with torch present)"
    lines = []
    for part, module in EXTENSIONS.items():
        section = record.get(part) or {}
        if section.get("built"):
            detail = ""
            if part == "cuda":
                detail = (
                    f" (CUDA {section.get('cuda_version')} at {section.get('cuda_home')}, "
                    f"TORCH_CUDA_ARCH_LIST={section.get('arch_list')}: {section.get('arch_list_how')})"
                )
            lines.append(f"hpm_kernels build: hpm_kernels.{module} built{detail}")
        else:
            lines.append(f"hpm_kernels build: hpm_kernels.{module} not built: {section.get('reason')}")
    return "\n".join(lines)
