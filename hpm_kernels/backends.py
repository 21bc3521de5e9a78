"""Backend registry and dispatcher.

Every op has one ``torch.library`` schema (``torch.ops.hpm.*``) whose last argument names the
backend that runs it. A backend is a table of kernels plus a declaration of what it supports
(devices, dtypes, largest row); the public wrappers resolve the name before calling the op, so
under ``torch.compile`` the choice is a constant of the graph.

Choice, first match wins: the ``backend=`` argument of a call, the innermost
``with hpm_kernels.backend(name):`` block, the ``HPM_KERNELS_BACKEND`` environment variable,
then ``"auto"``: the highest-priority available backend that supports the inputs.
An explicit request for a backend that is unavailable or refuses the inputs raises
:class:`BackendUnavailableError` saying why.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence

import torch

AUTO = "auto"
ENV_VAR = "HPM_KERNELS_BACKEND"

FLOAT_DTYPES = frozenset({torch.float16, torch.bfloat16, torch.float32, torch.float64})
#: The ``atomic_backward`` of the Triton and CUDA C++ backends: patchify with ids and gather_tokens
#: scatter-add their gradient with float atomics (Triton ``tl.atomic_add``, CUDA
#: ``patch_scatter_add_kernel`` / ``scatter_add_rows_kernel``).
ATOMIC_BACKWARD = frozenset({"patchify", "patchify_backward", "gather_tokens", "gather_tokens_backward"})


class BackendUnavailableError(RuntimeError):
    """A backend was requested that cannot run the given inputs; the message says why."""


@dataclasses.dataclass(frozen=True)
class Backend:
    """What a backend is and what it supports.

    ``kernels`` maps op names (``"patchify"``, ``"patchify_backward"``, ...) to callables with
    the op's schema minus the trailing ``backend`` argument. ``max_row`` bounds the per-row size
    (L for ``select_patches``, M for ``pairwise_ranking_loss``, L or K elsewhere), for every op
    or per op name. ``auto_devices`` are the devices where ``"auto"`` may pick this backend
    (default: all of ``devices``); an explicit request may use any of ``devices``.
    ``unavailable_reason`` returns ``None`` when the backend can run in this process;
    ``check`` returns why it refuses particular inputs, beyond the declared fields.
    """

    name: str
    kernels: Mapping[str, Callable]
    devices: frozenset[str] | None = None  # None: any device
    dtypes: frozenset[torch.dtype] = FLOAT_DTYPES
    max_row: int | Mapping[str, int] | None = None
    priority: int = 0
    auto_devices: frozenset[str] | None = None
    unavailable_reason: Callable[[], str | None] = lambda: None
    check: Callable[[str, torch.device, Sequence[torch.dtype], int], str | None] = lambda op, device, dtypes, row: None
    description: str = ""
    #: Ops (forward and backward names) whose backward kernel accumulates with float atomics: the
    #: low bits of the gradient vary from run to run. Under ``torch.use_deterministic_algorithms(True)``
    #: "auto" skips this backend for them, and running it anyway (asked for by name) raises
    #: PyTorch's non-determinism alert.
    atomic_backward: frozenset[str] = frozenset()

    def row_limit(self, op: str) -> int | None:
        if isinstance(self.max_row, Mapping):
            return self.max_row.get(op)
        return self.max_row

    def refusal(self, op: str, device: torch.device, dtypes: Sequence[torch.dtype], row: int) -> str | None:
        """Why this backend cannot run ``op`` on these inputs, or ``None`` if it can."""
        why = self.unavailable_reason()
        if why is not None:
            return why
        if op not in self.kernels:
            return f"has no kernel for {op!r}"
        if self.devices is not None and device.type not in self.devices:
            return f"runs on {sorted(self.devices)} tensors, got {device.type}"
        bad = sorted({str(d) for d in dtypes if d not in self.dtypes})
        if bad:
            return f"does not support dtype {', '.join(bad)} (supports {sorted(str(d) for d in self.dtypes)})"
        limit = self.row_limit(op)
        if limit is not None and row > limit:
            return f"supports rows up to {limit} elements, got {row}"
        return self.check(op, device, dtypes, row)

    def auto_refusal(self, op: str, device: torch.device, dtypes: Sequence[torch.dtype], row: int) -> str | None:
        """Like :meth:`refusal`, for a backend that ``"auto"`` considers."""
        if self.auto_devices is not None and device.type not in self.auto_devices:
            return f"is chosen automatically only for {sorted(self.auto_devices)} tensors (ask for it by name)"
        if op in self.atomic_backward and torch.are_deterministic_algorithms_enabled():
            return (
                f"adds the gradient of {op} with float atomics (not deterministic) and torch.use_deterministic_algorithms is on"
            )
        return self.refusal(op, device, dtypes, row)


@dataclasses.dataclass(frozen=True)
class BackendInfo:
    """One row of :func:`available_backends`."""

    name: str
    available: bool
    reason: str | None
    devices: tuple[str, ...] | None
    dtypes: tuple[str, ...]
    max_row: int | Mapping[str, int] | None
    description: str


_REGISTRY: dict[str, Backend] = {}
_FORCED: list[str] = []


def register_backend(backend: Backend) -> None:
    """Add (or replace) a backend. Backends plug in at import time of their module."""
    if backend.name == AUTO:
        raise ValueError(f"backend name {AUTO!r} is reserved")
    _REGISTRY[backend.name] = backend


def unregister_backend(name: str) -> None:
    _REGISTRY.pop(name, None)


def available_backends() -> list[BackendInfo]:
    """Every registered backend, whether it can run here, and if not, why."""
    rows = []
    for b in sorted(_REGISTRY.values(), key=lambda b: -b.priority):
        why = b.unavailable_reason()
        rows.append(
            BackendInfo(
                name=b.name,
                available=why is None,
                reason=why,
                devices=None if b.devices is None else tuple(sorted(b.devices)),
                dtypes=tuple(sorted(str(d).removeprefix("torch.") for d in b.dtypes)),
                max_row=b.max_row,
                description=b.description,
            )
        )
    return rows


@contextlib.contextmanager
def backend(name: str) -> Iterator[None]:
    """Run every hpm op in this block on backend ``name`` (or ``"auto"``).

    >>> with hpm_kernels.backend("reference"):
    ...     patches = hpm_kernels.patchify(imgs, 16)
    """
    _check_name(name, "backend")
    _FORCED.append(name)
    try:
        yield
    finally:
        _FORCED.pop()


def _check_name(name: object, argument: str) -> None:
    if not isinstance(name, str):
        raise TypeError(f"`{argument}` must be a backend name (str), got {type(name).__name__}")
    if name != AUTO and name not in _REGISTRY:
        known = ", ".join([AUTO, *sorted(_REGISTRY)])
        raise ValueError(f"`{argument}`: unknown backend {name!r}; known backends: {known}")


def requested_backend(per_call: str | None) -> str:
    """The name asked for: per-call argument, then context manager, then environment."""
    if per_call is not None:
        _check_name(per_call, "backend")
        return per_call
    if _FORCED:
        return _FORCED[-1]
    env = os.environ.get(ENV_VAR)
    if env:
        _check_name(env, ENV_VAR)
        return env
    return AUTO


def resolve(
    op: str,
    requested: str | None,
    device: torch.device,
    dtypes: Sequence[torch.dtype],
    row: int,
) -> str:
    """Pick the backend that runs ``op`` on inputs of ``device``/``dtypes`` with rows of ``row``."""
    name = requested_backend(requested)
    if name != AUTO:
        why = _REGISTRY[name].refusal(op, device, dtypes, row)
        if why is not None:
            raise BackendUnavailableError(f"backend {name!r} cannot run {op}: {why}")
        return name
    refusals = []
    for b in sorted(_REGISTRY.values(), key=lambda b: -b.priority):
        why = b.auto_refusal(op, device, dtypes, row)
        if why is None:
            return b.name
        refusals.append(f"{b.name}: {why}")
    raise BackendUnavailableError(f"no backend can run {op} on these inputs; " + "; ".join(refusals))


def alert_if_nondeterministic(op: str, name: str) -> None:
    """Raise PyTorch's non-determinism alert (an error, or a warning with ``warn_only=True``) when
    deterministic algorithms are on and backend ``name`` computes ``op``'s backward with atomics."""
    backend = _REGISTRY.get(name)
    if backend is None or op not in backend.atomic_backward or not torch.are_deterministic_algorithms_enabled():
        return
    message = (
        f"hpm::{op} on backend {name!r} (float atomic adds) does not have a deterministic implementation, but "
        "torch.use_deterministic_algorithms(True) is set: leave the backend to 'auto' (it then picks a "
        "deterministic one: 'cpu' or 'reference') or pass warn_only=True"
    )
    if torch.is_deterministic_algorithms_warn_only_enabled():
        warnings.warn(message, stacklevel=3)
    else:
        raise RuntimeError(message)


def kernel(op: str, name: str) -> Callable:
    """The callable backend ``name`` registered for ``op`` (``name`` already resolved)."""
    try:
        return _REGISTRY[name].kernels[op]
    except KeyError:
        _check_name(name, "backend")
        raise BackendUnavailableError(f"backend {name!r} has no kernel for {op}") from None
