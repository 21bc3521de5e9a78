"""`make compat`: build and test hpm_kernels against other PyTorch / Triton / Python versions.

    python3 tests/compat/compat.py [--rows floor,gpu-machine] [--torch 2.8.0 --torchvision 0.23.0 ...]

Each row of the matrix gets its own virtual environment under ``.compat/<row>/`` (the Python of
that row, found on PATH or under ~/.pyenv), the row's torch / torchvision / Triton from the
package index, and a copy of this working tree (tracked and untracked-not-ignored files), so the
extensions it compiles never touch the checkout's own build. In that copy, with no build variable
set, as a user would:

1. ``pip install --no-deps --no-build-isolation -e .`` (compiles the C++ and, where setup.py finds
   a toolkit for that torch's CUDA, the CUDA C++ extensions; hpm_kernels/_build.json says which);
2. the Triton interpreter tests (``tests/test_triton_*.py``, TRITON_INTERPRET=1 on CPU);
3. the offline sm_90 compile check of every Triton kernel (``tests/test_triton_compiles_for_gpu.py``);
4. the rest of the test suite;
5. for the row with the GPU machine's versions, ``benchmarks/gpu_check.sh --dry-run``.

Each row's outcome is written to ``tests/compat/results/<row>.json`` (committed) and the matrix in
README.md (between the ``compat-matrix`` markers) is regenerated from all of them. Exit status 1 if
any step of a row that ran failed. Slow (about 15 minutes a row on 2 cores, downloads included),
so it is not part of ``make test``; run it when changing the supported versions, the build, or
anything that touches the Triton or torch.library APIs.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import glob
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WORK = ROOT / ".compat"
RESULTS = Path(__file__).resolve().parent / "results"
README = ROOT / "README.md"
BEGIN, END = "<!-- compat-matrix:begin -->", "<!-- compat-matrix:end -->"

# What the test suite needs besides torch (the GPU machine has these, but not elpv-dataset or ruff,
# whose tests skip or do not run there).
TEST_DEPS = ["numpy", "pytest", "pytest-benchmark", "hypothesis", "scipy", "timm", "tqdm", "pillow", "safetensors"]
BUILD_DEPS = ["setuptools", "wheel", "ninja"]
# Variables that would make the build or the tests differ from what a user gets.
STRIPPED_ENV = ("CUDA_HOME", "CUDA_PATH", "TORCH_CUDA_ARCH_LIST", "MAX_JOBS", "HPM_KERNELS_BUILD_CUDA", "TRITON_INTERPRET")

INTERPRETER_TESTS = "interpreter"
COMPILE_CHECK = "sm90_compile"
OTHER_TESTS = "other_tests"
DRY_RUN = "gpu_check_dry_run"


@dataclasses.dataclass(frozen=True)
class Row:
    name: str
    python: str
    torch: str
    torchvision: str
    triton: str | None  # None: whatever this torch pins
    why: str
    gpu_check_dry_run: bool = False
    pins: tuple[str, ...] = ()


# Triton < 3.8's interpreter calls int() on 1-element arrays, which NumPy >= 2.4 refuses
# (tests/triton_utils.py probes it and skips the interpreter tests, saying so): pin NumPy so that
# those rows run them. A GPU runs compiled kernels and is unaffected.
OLD_TRITON_PINS = ("numpy<2.4",)


ROWS = {
    row.name: row
    for row in [
        Row(
            "floor",
            "3.10",
            "2.6.0",
            "0.21.0",
            None,
            "the oldest supported torch, on the oldest supported Python",
            pins=OLD_TRITON_PINS,
        ),
        Row(
            "gpu-machine",
            "3.12",
            "2.11.0",
            "0.26.0",
            "3.6.0",
            "the versions of this project's GPU machine (torch 2.11, Python 3.12, Triton 3.6)",
            gpu_check_dry_run=True,
            pins=OLD_TRITON_PINS,
        ),
    ]
}


def find_python(version: str) -> str:
    """An interpreter of ``version`` ("3.12"): ``python3.12`` on PATH, else pyenv's."""
    candidates = [shutil.which(f"python{version}")]
    candidates += sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/{version}.*/bin/python{version}")), reverse=True)
    for exe in filter(None, candidates):
        probe = subprocess.run([exe, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"], capture_output=True, text=True)
        if probe.returncode == 0 and probe.stdout.strip() == version:
            return exe
    raise SystemExit(f"compat: no Python {version} found (python{version} on PATH or ~/.pyenv/versions/{version}.*)")


def user_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in STRIPPED_ENV and not k.startswith("VIRTUAL_ENV")}
    env["PYTHONUNBUFFERED"] = "1"
    return env | (extra or {})


def run_logged(cmd: list[str], log: Path, cwd: Path, timeout: int, env: dict[str, str] | None = None) -> tuple[int, float, str]:
    """Run ``cmd``, output to ``log``; (exit status, seconds, last lines). 124 on timeout."""
    print(f"   $ {' '.join(cmd)}  (log: {log.relative_to(ROOT)})", flush=True)
    start = time.perf_counter()
    with log.open("w") as out:
        try:
            rc = subprocess.run(
                cmd, cwd=cwd, env=env or user_env(), stdout=out, stderr=subprocess.STDOUT, timeout=timeout
            ).returncode
        except subprocess.TimeoutExpired:
            rc = 124
    seconds = time.perf_counter() - start
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
    return rc, seconds, tail


_SUMMARY = re.compile(
    r"^=*\s*(\d+ (?:passed|failed|skipped|errors?|deselected|xfailed|xpassed)(?:, \d+ \w+)*) in [\d.]+s", re.MULTILINE
)


def pytest_summary(log: Path) -> str:
    """pytest's closing counts ("870 passed, 12 skipped"), or ''."""
    found = _SUMMARY.findall(log.read_text(errors="replace"))
    return found[-1] if found else ""


def copy_tree(dest: Path) -> None:
    """The working tree's tracked and untracked-not-ignored files (no build outputs)."""
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT, capture_output=True, check=True
    ).stdout.split(b"\0")
    if dest.exists():
        shutil.rmtree(dest)
    for name in filter(None, (f.decode() for f in files)):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


def group_test_files(src: Path) -> dict[str, list[str]]:
    triton = sorted(p.relative_to(src).as_posix() for p in (src / "tests").glob("test_triton_*.py"))
    compile_check = "tests/test_triton_compiles_for_gpu.py"
    interpreter = [t for t in triton if t not in (compile_check, "tests/test_triton_gpu.py")]
    return {INTERPRETER_TESTS: interpreter, COMPILE_CHECK: [compile_check]}


def run_row(row: Row, args: argparse.Namespace) -> dict:
    home = WORK / row.name
    logs = home / "logs"
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir(parents=True)
    venv, src = home / "venv", home / "src"
    py = venv / "bin" / "python"
    result: dict = {
        "row": row.name,
        "why": row.why,
        "asked": {
            "python": row.python,
            "torch": row.torch,
            "torchvision": row.torchvision,
            "triton": row.triton,
            "pins": list(row.pins),
        },
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, no GPU" if not args.gpu_note else args.gpu_note,
        "command": "make compat" + (f" COMPAT_ARGS='--rows {row.name}'" if args.rows else ""),
        "steps": {},
    }
    steps = result["steps"]

    def record(step: str, rc: int, seconds: float, log: Path, tail: str, summary: str = "") -> bool:
        steps[step] = {"ok": rc == 0, "exit": rc, "seconds": round(seconds, 1), "summary": summary, "log": log.name}
        state = "ok" if rc == 0 else f"FAILED (exit {rc})"
        print(f"   {step}: {state} in {seconds:.0f} s {summary}", flush=True)
        if rc != 0:
            print("\n".join("     | " + line for line in tail.splitlines()), flush=True)
        return rc == 0

    print(f"== {row.name}: Python {row.python}, torch {row.torch}, Triton {row.triton or '(torch pin)'}", flush=True)
    if not py.exists():
        subprocess.run([find_python(row.python), "-m", "venv", str(venv)], check=True)
    pins = [f"torch=={row.torch}", f"torchvision=={row.torchvision}", *row.pins] + (
        [f"triton=={row.triton}"] if row.triton else []
    )
    log = logs / "install.log"
    rc, s, tail = run_logged([str(py), "-m", "pip", "install", *BUILD_DEPS, *pins, *TEST_DEPS], log, ROOT, 3600)
    if not record("install", rc, s, log, tail):
        return result
    versions = subprocess.run(
        [
            str(py),
            "-c",
            "import sys, numpy, torch, triton; print(sys.version.split()[0], torch.__version__, triton.__version__, numpy.__version__)",
        ],
        capture_output=True,
        text=True,
    ).stdout.split()
    result["versions"] = dict(zip(["python", "torch", "triton", "numpy"], versions))

    copy_tree(src)
    log = logs / "build.log"
    rc, s, tail = run_logged([str(py), "-m", "pip", "install", "--no-deps", "--no-build-isolation", "-e", "."], log, src, 3600)
    ok = record("build", rc, s, log, tail)
    build = (
        json.loads((src / "hpm_kernels" / "_build.json").read_text()) if (src / "hpm_kernels" / "_build.json").exists() else None
    )
    result["build"] = build
    if not ok:
        return result
    check = subprocess.run(
        [str(py), "-c", "import hpm_kernels as hk\nfor b in hk.available_backends(): print(b.name, b.available, b.reason)"],
        cwd=src,
        capture_output=True,
        text=True,
        env=user_env(),
    )
    result["backends"] = check.stdout.strip().splitlines() + (
        [f"import failed: {check.stderr[-500:]}"] if check.returncode else []
    )

    groups = group_test_files(src)
    pytest = [str(py), "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    # A fresh Triton cache per row, so that the sm_90 compile check really compiles.
    triton_cache = home / "triton-cache"
    shutil.rmtree(triton_cache, ignore_errors=True)
    test_env = user_env({"TRITON_CACHE_DIR": str(triton_cache)})
    for step, files in groups.items():
        log = logs / f"{step}.log"
        rc, s, tail = run_logged([*pytest, *files], log, src, 3600, test_env)
        record(step, rc, s, log, tail, pytest_summary(log))
    ignore = [f"--ignore={f}" for files in groups.values() for f in files]
    log = logs / f"{OTHER_TESTS}.log"
    rc, s, tail = run_logged([*pytest, "tests", *ignore], log, src, 3600, test_env)
    record(OTHER_TESTS, rc, s, log, tail, pytest_summary(log))
    if row.gpu_check_dry_run:
        log = logs / f"{DRY_RUN}.log"
        env = user_env({"PYTHON": str(py), "OUT": str(home / "gpu_check"), "TRITON_CACHE_DIR": str(triton_cache)})
        rc, s, tail = run_logged(["bash", "benchmarks/gpu_check.sh", "--dry-run"], log, src, 1800, env)
        record(DRY_RUN, rc, s, log, tail)
    return result


def _cell(result: dict, step: str) -> str:
    info = result["steps"].get(step)
    if info is None:
        return "not run"
    text = ("pass" if info["ok"] else f"**FAIL** (exit {info['exit']})") + (f": {info['summary']}" if info["summary"] else "")
    return f"{text} ({info['seconds']:.0f} s)"


def _build_cell(result: dict, part: str) -> str:
    build = result.get("build") or {}
    section = build.get(part) or {}
    if "build" not in result["steps"]:
        return "not run"
    if not result["steps"]["build"]["ok"]:
        return f"**FAIL** (exit {result['steps']['build']['exit']})"
    if section.get("built"):
        extra = f", arch {build['cuda'].get('arch_list')}, CUDA {build['cuda'].get('cuda_version')}" if part == "cuda" else ""
        return f"built{extra}"
    return f"not built: {section.get('reason')}"


def render_matrix(results: list[dict]) -> str:
    lines = [
        "| row | Python | torch | Triton | NumPy | C++ ext | CUDA ext | build | Triton interpreter tests | sm_90 compile check | other tests | gpu_check dry run | date |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        v = r.get("versions") or r["asked"]
        build_time = f"{r['steps']['build']['seconds']:.0f} s" if "build" in r["steps"] else "not run"
        dry = _cell(r, DRY_RUN) if DRY_RUN in r["steps"] else "n/a"
        lines.append(
            f"| {r['row']} | {v.get('python')} | {v.get('torch')} | {v.get('triton') or '(torch pin)'} | {v.get('numpy', '?')} | {_build_cell(r, 'cpu')} "
            f"| {_build_cell(r, 'cuda')} | {build_time} | {_cell(r, INTERPRETER_TESTS)} | {_cell(r, COMPILE_CHECK)} "
            f"| {_cell(r, OTHER_TESTS)} | {dry} | {r['date'][:10]} |"
        )
    return "\n".join(lines)


def update_readme(table: str) -> None:
    text = README.read_text()
    if BEGIN not in text or END not in text:
        print(f"compat: README.md has no {BEGIN} ... {END} block; matrix not written there", file=sys.stderr)
        return
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    README.write_text(f"{head}{BEGIN}\n{table}\n{END}{tail}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="", help=f"comma list of rows (default: all of {', '.join(ROWS)})")
    parser.add_argument("--name", help="a row of its own, with --python/--torch/--torchvision[/--triton]")
    parser.add_argument("--python")
    parser.add_argument("--torch")
    parser.add_argument("--torchvision")
    parser.add_argument("--triton")
    parser.add_argument("--gpu-note", default="", help=argparse.SUPPRESS)
    parser.add_argument("--render-only", action="store_true", help="only regenerate README's matrix from tests/compat/results")
    args = parser.parse_args(argv)

    rows = [ROWS[name] for name in args.rows.split(",") if name] if args.rows else []
    if args.name:
        if not (args.python and args.torch and args.torchvision):
            parser.error("--name needs --python, --torch and --torchvision")
        rows.append(Row(args.name, args.python, args.torch, args.torchvision, args.triton, "exploring the supported range"))
    if not rows and not args.render_only:
        rows = list(ROWS.values())
    RESULTS.mkdir(exist_ok=True)
    failed = False
    for row in rows:
        result = run_row(row, args)
        (RESULTS / f"{row.name}.json").write_text(json.dumps(result, indent=2) + "\n")
        failed |= len(result["steps"]) < 2 or not all(s["ok"] for s in result["steps"].values())
    results = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.json"))]
    order = {name: i for i, name in enumerate(ROWS)}
    results.sort(key=lambda r: (order.get(r["row"], len(order)), r["row"]))
    table = render_matrix(results)
    print(table)
    update_readme(table)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
