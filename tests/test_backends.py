"""The backend registry and dispatcher (hpm_kernels/backends.py).

Fake backends wrap the reference kernels and count their calls, so a test can tell which
backend ran an op (forward and backward) without any GPU.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterator

import pytest
import torch

import hpm_kernels as hk
from hpm_kernels import backends
from hpm_kernels.backends import ENV_VAR, Backend, BackendUnavailableError
from hpm_kernels.reference import KERNELS as REFERENCE_KERNELS

P_SIZE = 4


@pytest.fixture(autouse=True)
def registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Backend]]:
    """Snapshot the registry and the context-manager stack; restore both whatever the test does."""
    monkeypatch.delenv(ENV_VAR, raising=False)
    saved_registry = dict(backends._REGISTRY)
    saved_forced = list(backends._FORCED)
    try:
        yield backends._REGISTRY
    finally:
        backends._REGISTRY.clear()
        backends._REGISTRY.update(saved_registry)
        backends._FORCED[:] = saved_forced


class Fake:
    """A registered backend that runs the reference kernels and counts calls per op."""

    def __init__(self, name: str, priority: int = 10, *, ops: Callable[[str], bool] = lambda op: True, **kwargs) -> None:
        self.name = name
        self.calls: collections.Counter[str] = collections.Counter()
        kernels = {op: self._counted(op, fn) for op, fn in REFERENCE_KERNELS.items() if ops(op)}
        self.backend = Backend(name=name, kernels=kernels, priority=priority, description=f"fake {name}", **kwargs)
        hk.register_backend(self.backend)

    def _counted(self, op: str, fn: Callable) -> Callable:
        def run(*args):
            self.calls[op] += 1
            return fn(*args)

        return run

    @property
    def total(self) -> int:
        return sum(self.calls.values())


def imgs(dtype: torch.dtype = torch.float32, h: int = 8, w: int = 8) -> torch.Tensor:
    return torch.randn(2, 3, h, w, dtype=dtype)


def reference_patchify(x: torch.Tensor) -> torch.Tensor:
    return hk.patchify(x, P_SIZE, backend="reference")


# ---------------------------------------------------------------------------- listing


def test_reference_is_listed_and_available() -> None:
    rows = {row.name: row for row in hk.available_backends()}
    ref = rows["reference"]
    assert ref.available is True
    assert ref.reason is None
    assert ref.devices is None
    assert "float32" in ref.dtypes and "float64" in ref.dtypes


def test_listing_is_sorted_by_priority() -> None:
    Fake("low", priority=-5)
    Fake("high", priority=50)
    names = [row.name for row in hk.available_backends()]
    assert names.index("high") < names.index("reference") < names.index("low")


def test_auto_is_a_reserved_name() -> None:
    with pytest.raises(ValueError, match="reserved"):
        hk.register_backend(Backend(name="auto", kernels=REFERENCE_KERNELS))


# ---------------------------------------------------------------------------- choosing


def test_auto_picks_the_highest_priority_backend() -> None:
    fake = Fake("fast", priority=10)
    x = imgs()
    out = hk.patchify(x, P_SIZE)
    assert fake.calls == {"patchify": 1}
    torch.testing.assert_close(out, reference_patchify(x), rtol=0, atol=0)
    assert fake.calls == {"patchify": 1}  # the reference call above did not touch the fake


def test_per_call_backend_overrides_auto() -> None:
    fake = Fake("fast", priority=10)
    hk.patchify(imgs(), P_SIZE, backend="reference")
    assert fake.total == 0
    hk.patchify(imgs(), P_SIZE, backend="fast")
    assert fake.calls == {"patchify": 1}


def test_context_manager_overrides_auto() -> None:
    fake = Fake("fast", priority=10)
    with hk.backend("reference"):
        hk.patchify(imgs(), P_SIZE)
        hk.select_patches(torch.randn(2, 16), torch.rand(2, 16), 0.75, 0.5)
    assert fake.total == 0
    hk.patchify(imgs(), P_SIZE)
    assert fake.calls == {"patchify": 1}


def test_context_manager_auto_means_auto() -> None:
    fake = Fake("fast", priority=10)
    with hk.backend("reference"), hk.backend("auto"):
        hk.patchify(imgs(), P_SIZE)
    assert fake.calls == {"patchify": 1}


def test_nested_context_managers_restore() -> None:
    fake = Fake("slow", priority=-10)  # auto picks reference
    hk.patchify(imgs(), P_SIZE)
    assert fake.total == 0
    with hk.backend("slow"):
        hk.patchify(imgs(), P_SIZE)
        assert fake.calls["patchify"] == 1
        with hk.backend("reference"):
            hk.patchify(imgs(), P_SIZE)
            assert fake.calls["patchify"] == 1
            with hk.backend("slow"):
                hk.patchify(imgs(), P_SIZE)
                assert fake.calls["patchify"] == 2
            hk.patchify(imgs(), P_SIZE)
            assert fake.calls["patchify"] == 2
        hk.patchify(imgs(), P_SIZE)
        assert fake.calls["patchify"] == 3
    hk.patchify(imgs(), P_SIZE)
    assert fake.calls["patchify"] == 3
    assert backends._FORCED == []


def test_context_manager_restores_after_an_exception() -> None:
    fake = Fake("slow", priority=-10)
    with pytest.raises(KeyError), hk.backend("slow"):
        raise KeyError("boom")
    assert backends._FORCED == []
    hk.patchify(imgs(), P_SIZE)
    assert fake.total == 0


def test_environment_variable_selects_a_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = Fake("slow", priority=-10)
    monkeypatch.setenv(ENV_VAR, "slow")
    hk.patchify(imgs(), P_SIZE)
    assert fake.calls == {"patchify": 1}
    monkeypatch.setenv(ENV_VAR, "reference")
    fast = Fake("fast", priority=10)
    hk.patchify(imgs(), P_SIZE)
    assert fast.total == 0 and fake.calls == {"patchify": 1}
    monkeypatch.setenv(ENV_VAR, "")  # empty means unset: auto
    hk.patchify(imgs(), P_SIZE)
    assert fast.calls == {"patchify": 1}


def test_unknown_backend_in_environment_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, "nope")
    with pytest.raises(ValueError, match=f"`{ENV_VAR}`"):
        hk.patchify(imgs(), P_SIZE)


def test_per_call_beats_context_beats_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    env, ctx, call = Fake("env", -1), Fake("ctx", -2), Fake("call", -3)
    monkeypatch.setenv(ENV_VAR, "env")
    with hk.backend("ctx"):
        hk.patchify(imgs(), P_SIZE, backend="call")
        assert (env.total, ctx.total, call.total) == (0, 0, 1)
        hk.patchify(imgs(), P_SIZE)
        assert (env.total, ctx.total, call.total) == (0, 1, 1)
    hk.patchify(imgs(), P_SIZE)
    assert (env.total, ctx.total, call.total) == (1, 1, 1)
    hk.patchify(imgs(), P_SIZE, backend="call")
    assert (env.total, ctx.total, call.total) == (1, 1, 2)


# ---------------------------------------------------------------------------- unavailable / refusing


def test_unavailable_backend_is_listed_skipped_and_refused() -> None:
    gpu = Fake("gpu", priority=100, unavailable_reason=lambda: "needs a GPU")
    row = {r.name: r for r in hk.available_backends()}["gpu"]
    assert row.available is False
    assert row.reason == "needs a GPU"

    x = imgs()
    torch.testing.assert_close(hk.patchify(x, P_SIZE), reference_patchify(x), rtol=0, atol=0)
    assert gpu.total == 0

    with pytest.raises(BackendUnavailableError, match="needs a GPU") as info:
        hk.patchify(x, P_SIZE, backend="gpu")
    assert "'gpu'" in str(info.value)
    with pytest.raises(BackendUnavailableError, match="needs a GPU"), hk.backend("gpu"):
        hk.gather_tokens(torch.randn(2, 4, 5), torch.randint(0, 4, (2, 3)))
    assert gpu.total == 0


def _call_patchify(dtype: torch.dtype, h: int) -> Callable[[str | None], torch.Tensor]:
    x = imgs(dtype, h=h, w=8)
    return lambda name: hk.patchify(x, P_SIZE, backend=name)


# (fake backend limits, input that is refused, input that is accepted, words of the refusal)
REFUSALS = [
    pytest.param({"devices": frozenset({"cuda"})}, (torch.float32, 8), None, "runs on ['cuda'] tensors, got cpu", id="device"),
    pytest.param(
        {"dtypes": frozenset({torch.float32})},
        (torch.float64, 8),
        (torch.float32, 8),
        "does not support dtype torch.float64",
        id="dtype",
    ),
    pytest.param({"max_row": 4}, (torch.float32, 16), (torch.float32, 8), "supports rows up to 4 elements, got 8", id="max-row"),
]


@pytest.mark.parametrize(("limits", "refused", "accepted", "why"), REFUSALS)
def test_backend_refuses_inputs_it_does_not_support(limits: dict, refused: tuple, accepted: tuple | None, why: str) -> None:
    limited = Fake("limited", priority=10, **limits)
    call = _call_patchify(*refused)

    with pytest.raises(BackendUnavailableError) as info:
        call("limited")
    assert "'limited' cannot run patchify" in str(info.value)
    assert why in str(info.value)
    assert limited.total == 0

    # auto falls back to the reference, which gives the same answer
    torch.testing.assert_close(call(None), call("reference"), rtol=0, atol=0)
    assert limited.total == 0

    if accepted is not None:  # and the limit is specific: inputs within it do run on the fake
        call = _call_patchify(*accepted)
        torch.testing.assert_close(call(None), call("reference"), rtol=0, atol=0)
        assert limited.calls == {"patchify": 1}


def test_backend_without_a_kernel_for_the_op_is_skipped() -> None:
    partial = Fake("partial", priority=10, ops=lambda op: op.startswith("patchify"))
    hk.gather_tokens(torch.randn(2, 4, 5), torch.randint(0, 4, (2, 3)))
    assert partial.total == 0
    with pytest.raises(BackendUnavailableError, match="has no kernel for 'gather_tokens'"):
        hk.gather_tokens(torch.randn(2, 4, 5), torch.randint(0, 4, (2, 3)), backend="partial")
    hk.patchify(imgs(), P_SIZE)
    assert partial.calls == {"patchify": 1}


def test_auto_lists_every_reason_when_no_backend_can_run(registry: dict[str, Backend]) -> None:
    for name in ("reference", "cpu", "cuda"):  # the real backends that can run on CPU tensors
        backends.unregister_backend(name)
    Fake("cuda_only", priority=5, devices=frozenset({"cuda"}))
    Fake("gpu", priority=1, unavailable_reason=lambda: "needs a GPU")
    Fake("tiny", priority=0, max_row=2)
    with pytest.raises(BackendUnavailableError) as info:
        hk.patchify(imgs(), P_SIZE)
    message = str(info.value)
    assert "no backend can run patchify" in message
    assert "cuda_only: runs on ['cuda'] tensors, got cpu" in message
    assert "gpu: needs a GPU" in message
    assert "tiny: supports rows up to 2 elements, got 4" in message
    assert "reference" not in message and "cpu:" not in message


def test_registry_fixture_restored_reference() -> None:
    # runs after the test above in file order; the fixture must have put "reference" back
    assert "reference" in {row.name for row in hk.available_backends()}
    hk.patchify(imgs(), P_SIZE)


# ---------------------------------------------------------------------------- backward


def _patchify_loss(x: torch.Tensor, backend: str | None) -> torch.Tensor:
    ids = torch.randint(0, 4, (2, 3))
    return hk.patchify(x, P_SIZE, ids, backend=backend).square().sum()


def _unpatchify_loss(x: torch.Tensor, backend: str | None) -> torch.Tensor:
    return hk.unpatchify(x, P_SIZE, 8, 8, backend=backend).square().sum()


def _gather_loss(x: torch.Tensor, backend: str | None) -> torch.Tensor:
    return hk.gather_tokens(x, torch.randint(0, 4, (2, 3)), backend=backend).square().sum()


def _mse_loss(x: torch.Tensor, backend: str | None) -> torch.Tensor:
    return hk.patch_mse_loss(x, imgs(), P_SIZE, torch.randint(0, 4, (2, 3)), backend=backend)[0]


def _rank_loss(x: torch.Tensor, backend: str | None) -> torch.Tensor:
    return hk.pairwise_ranking_loss(x, torch.randn(2, 6), backend=backend)


# (loss of a leaf x, shape of x, kernel run forward, kernel run backward)
BACKWARDS = [
    pytest.param(_patchify_loss, (2, 3, 8, 8), "patchify", "patchify_backward", id="patchify"),
    pytest.param(_unpatchify_loss, (2, 4, 48), "unpatchify", "patchify", id="unpatchify"),
    pytest.param(_gather_loss, (2, 4, 5), "gather_tokens", "gather_tokens_backward", id="gather_tokens"),
    pytest.param(_mse_loss, (2, 3, 48), "patch_mse_loss", "patch_mse_loss_backward", id="patch_mse_loss"),
    pytest.param(_rank_loss, (2, 6), "pairwise_ranking_loss", "pairwise_ranking_loss_backward", id="ranking_loss"),
]


@pytest.mark.parametrize(("loss_fn", "shape", "fwd", "bwd"), BACKWARDS)
def test_backward_runs_on_the_forward_backend(loss_fn: Callable, shape: tuple, fwd: str, bwd: str) -> None:
    fast = Fake("fast", priority=10)
    slow = Fake("slow", priority=-10)

    # auto picks "fast" for the forward; the backward follows it
    x = torch.randn(shape, requires_grad=True)
    loss_fn(x, None).backward()
    assert fast.calls == {fwd: 1, bwd: 1}
    assert x.grad is not None

    # chosen in a context manager, backward outside the block still runs on "slow"
    x = torch.randn(shape, requires_grad=True)
    with hk.backend("slow"):
        loss = loss_fn(x, None)
    loss.backward()
    assert slow.calls == {fwd: 1, bwd: 1}

    # chosen per call: "reference"; neither fake runs the backward, even though auto would pick "fast"
    x = torch.randn(shape, requires_grad=True)
    loss_fn(x, "reference").backward()
    assert fast.calls == {fwd: 1, bwd: 1}
    assert slow.calls == {fwd: 1, bwd: 1}


def test_patchify_backward_count_matches_backward_calls() -> None:
    fast = Fake("fast", priority=10)
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    out = hk.patchify(x, P_SIZE)
    out.sum().backward(retain_graph=True)
    out.square().sum().backward()
    assert fast.calls == {"patchify": 1, "patchify_backward": 2}
    # gradient of sum + sum of squares through a permutation of the pixels
    torch.testing.assert_close(x.grad, 1 + 2 * x.detach())


# ---------------------------------------------------------------------------- direct torch.ops calls


def test_direct_torch_ops_call_with_auto() -> None:
    x = imgs()
    out = torch.ops.hpm.patchify(x, P_SIZE, None, "auto")
    torch.testing.assert_close(out, reference_patchify(x), rtol=0, atol=0)
    assert out.shape == (2, 4, 48)
    ids = torch.randint(0, 4, (2, 3))
    torch.testing.assert_close(
        torch.ops.hpm.patchify(x, P_SIZE, ids, "auto"), hk.patchify(x, P_SIZE, ids, backend="reference"), rtol=0, atol=0
    )


def test_direct_torch_ops_call_resolves_auto_in_the_op() -> None:
    fast = Fake("fast", priority=10)
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    torch.ops.hpm.patchify(x, P_SIZE, None, "auto").sum().backward()
    assert fast.calls == {"patchify": 1, "patchify_backward": 1}
    torch.ops.hpm.patchify(x.detach(), P_SIZE, None, "reference")
    assert fast.calls == {"patchify": 1, "patchify_backward": 1}
    Fake("gpu", priority=100, unavailable_reason=lambda: "needs a GPU")
    with pytest.raises(BackendUnavailableError, match="needs a GPU"):
        torch.ops.hpm.patchify(x.detach(), P_SIZE, None, "gpu")
