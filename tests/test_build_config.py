"""How the build finds a CUDA toolkit and picks archs and jobs (hpm_kernels/build_config.py), on
fake toolkits laid out in a temporary directory, and setup.py's use of it with no variable set."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hpm_kernels import build_config

ROOT = Path(__file__).resolve().parents[1]


def make_toolkit(root: Path, version: str = "13.0", *, runtime: bool = True, headers: bool = True) -> Path:
    """A directory shaped like a CUDA toolkit: bin/nvcc (answers --version and --dryrun as the
    real one does), lib64/libcudart.so, include/cuda_runtime.h, version.json."""
    (root / "bin").mkdir(parents=True)
    nvcc = root / "bin" / "nvcc"
    nvcc.write_text(
        "#!/bin/sh\n"
        f'case "$*" in *--dryrun*) echo "#\\$ _HERE_={root}/bin" >&2;; '
        f'*--version*) echo "Cuda compilation tools, release {version}, V{version}.1";; esac\n'
    )
    nvcc.chmod(0o755)
    if runtime:
        (root / "lib64").mkdir()
        (root / "lib64" / "libcudart.so").write_text("")
    if headers:
        (root / "include").mkdir()
        (root / "include" / "cuda_runtime.h").write_text("")
    (root / "version.json").write_text(json.dumps({"cuda": {"name": "CUDA SDK", "version": f"{version}.2"}}))
    return root


def wrapper_on_path(bin_dir: Path, target: Path) -> Path:
    """A directory like /usr/local/bin holding an nvcc wrapper script that execs ``target``."""
    bin_dir.mkdir(parents=True)
    wrapper = bin_dir / "nvcc"
    wrapper.write_text(f'#!/bin/sh\nexec {target} "$@"\n')
    wrapper.chmod(0o755)
    return wrapper


def find(torch_cuda="13.0", environ=None, nvcc=None):
    return build_config.find_cuda_toolkit(torch_cuda, environ=environ or {}, which=lambda _: None if nvcc is None else str(nvcc))


@pytest.fixture
def no_conventional_home(monkeypatch, tmp_path):
    """Point /usr/local/cuda somewhere empty so the tests do not depend on this machine."""
    monkeypatch.setattr(build_config, "CONVENTIONAL_HOME", str(tmp_path / "no-usr-local-cuda"))


def test_a_wrapper_nvcc_on_path_is_followed_to_the_toolkit_it_runs(tmp_path, no_conventional_home):
    real = make_toolkit(tmp_path / "cuda-13.0")
    wrapper = wrapper_on_path(tmp_path / "usr-local" / "bin", real / "bin" / "nvcc")
    found = find(nvcc=wrapper)
    assert found.home == str(real) and found.version == "13.0" and found.reason is None
    # torch's guess (the directory above the wrapper) was tried first and rejected, with why.
    assert found.rejected == ((str(tmp_path / "usr-local"), "no CUDA runtime library (libcudart.so in lib64, lib)"),)


def test_a_symlinked_nvcc_resolves_to_its_toolkit(tmp_path, no_conventional_home):
    real = make_toolkit(tmp_path / "cuda-13.0")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "nvcc").symlink_to(real / "bin" / "nvcc")
    found = find(nvcc=tmp_path / "bin" / "nvcc")
    assert found.home == str(real) and found.rejected == ()


def test_explicit_cuda_home_wins(tmp_path, no_conventional_home):
    explicit = make_toolkit(tmp_path / "explicit")
    on_path = make_toolkit(tmp_path / "on-path")
    found = find(environ={"CUDA_HOME": str(explicit)}, nvcc=on_path / "bin" / "nvcc")
    assert found.home == str(explicit) and found.how == "CUDA_HOME from the environment"


def test_an_unusable_explicit_cuda_home_is_reported_not_replaced(tmp_path, no_conventional_home):
    broken = make_toolkit(tmp_path / "broken", runtime=False)
    usable = make_toolkit(tmp_path / "usable")
    found = find(environ={"CUDA_HOME": str(broken)}, nvcc=usable / "bin" / "nvcc")
    assert found.home is None
    assert (
        found.reason
        == f"CUDA_HOME={broken} is set but is not a usable CUDA toolkit: no CUDA runtime library (libcudart.so in lib64, lib)"
    )


def test_cuda_path_then_the_conventional_location(tmp_path, monkeypatch):
    via_cuda_path = make_toolkit(tmp_path / "cuda-path")
    conventional = make_toolkit(tmp_path / "usr-local-cuda")
    monkeypatch.setattr(build_config, "CONVENTIONAL_HOME", str(conventional))
    assert find(environ={"CUDA_PATH": str(via_cuda_path)}).home == str(via_cuda_path)
    found = find()
    assert found.home == str(conventional) and found.how == "the conventional location"


@pytest.mark.parametrize(
    ("layout", "why"),
    [
        ({"runtime": False}, "no CUDA runtime library"),
        ({"headers": False}, "no CUDA headers"),
        ({"version": "12.4"}, "CUDA 12.4, but torch was built with CUDA 13.0 (the major versions must match"),
    ],
)
def test_incomplete_or_mismatched_toolkits_are_refused_with_the_reason(tmp_path, monkeypatch, layout, why):
    home = make_toolkit(tmp_path / "cuda", **layout)
    monkeypatch.setattr(build_config, "CONVENTIONAL_HOME", str(home))
    found = find()
    assert found.home is None
    assert found.reason.startswith("no usable CUDA toolkit found (set CUDA_HOME to one) (tried ")
    assert f"{home}: {why}" in found.reason


def test_the_version_comes_from_nvcc_when_the_toolkit_has_no_version_file(tmp_path, monkeypatch):
    home = make_toolkit(tmp_path / "cuda", version="12.8")
    (home / "version.json").unlink()
    monkeypatch.setattr(build_config, "CONVENTIONAL_HOME", str(home))
    assert find(torch_cuda="12.6").version == "12.8"
    assert "CUDA 12.8, but torch was built with CUDA 13.0" in find(torch_cuda="13.0").reason


def test_nothing_anywhere_names_every_place_tried(tmp_path, no_conventional_home):
    found = find(environ={"CUDA_PATH": str(tmp_path / "nope")})
    assert found.home is None
    assert found.reason == (
        f"no usable CUDA toolkit found (set CUDA_HOME to one) (tried {tmp_path / 'nope'}: no such directory; "
        f"{build_config.CONVENTIONAL_HOME}: no such directory)"
    )


def test_arch_list_environment_then_visible_gpus_then_sass_plus_ptx():
    assert build_config.default_arch_list({"TORCH_CUDA_ARCH_LIST": "7.5"}, [(9, 0)]) == (
        "7.5",
        "TORCH_CUDA_ARCH_LIST from the environment",
    )
    assert build_config.default_arch_list({}, [(9, 0), (8, 0), (9, 0)])[0] == "8.0;9.0"
    assert build_config.default_arch_list({}, [])[0] == build_config.NO_GPU_ARCH_LIST == "8.0+PTX"


def test_max_jobs_environment_then_cores():
    assert build_config.default_max_jobs({"MAX_JOBS": "3"}) == ("3", "MAX_JOBS from the environment")
    jobs, why = build_config.default_max_jobs({})
    assert 1 <= int(jobs) <= (os.cpu_count() or 1) and "usable cores" in why


def test_setup_finds_the_toolkit_behind_a_wrapper_with_no_variable_set(tmp_path):
    """setup.py itself, as `pip install` runs it, with a PATH whose nvcc is a wrapper and no
    CUDA_HOME / CUDA_PATH / TORCH_CUDA_ARCH_LIST / MAX_JOBS: it resolves the real toolkit."""
    if torch.version.cuda is None:
        pytest.skip(f"torch {torch.__version__} is a CPU-only build: setup.py builds no CUDA extension")
    real = make_toolkit(tmp_path / "cuda-real", version=torch.version.cuda)
    wrapper = wrapper_on_path(tmp_path / "bin", real / "bin" / "nvcc")
    strip = {"CUDA_HOME", "CUDA_PATH", "TORCH_CUDA_ARCH_LIST", "MAX_JOBS", "HPM_KERNELS_BUILD_CUDA", "CUDA_VISIBLE_DEVICES"}
    env = {k: v for k, v in os.environ.items() if k not in strip}
    env["PATH"] = f"{wrapper.parent}{os.pathsep}{env.get('PATH', '')}"
    run = subprocess.run([sys.executable, "setup.py", "--name"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert f"building the CUDA extension with the toolkit {real} " in run.stderr, run.stderr
    assert "MAX_JOBS=" in run.stderr
    if not torch.cuda.is_available():
        assert "TORCH_CUDA_ARCH_LIST=8.0+PTX (no GPU visible" in run.stderr


def test_summary_says_what_was_built_and_why_not(tmp_path):
    record = {
        "cpu": {"built": True, "reason": None},
        "cuda": {"built": False, "mode": "auto", "reason": "torch 2.6.0+cpu is a CPU-only build"},
    }
    build_config.write_record(record, path=tmp_path / "_build.json")
    assert build_config.read_record(tmp_path / "_build.json") == record
    assert build_config.summary(record).splitlines() == [
        "hpm_kernels build: hpm_kernels._C built",
        "hpm_kernels build: hpm_kernels._C_cuda not built: torch 2.6.0+cpu is a CPU-only build",
    ]
    assert build_config.read_record(tmp_path / "missing.json") is None


def test_the_installed_record_matches_this_torch():
    """What `make install` / pip wrote for this installation (hk.build_info())."""
    import hpm_kernels as hk

    record = hk.build_info()
    assert record is not None, "no hpm_kernels/_build.json: install with `make install` or `pip install --no-build-isolation .`"
    assert record["torch"] == torch.__version__ and record["cpu"]["built"] is True
    assert record["cuda"]["built"] or record["cuda"]["reason"]
