"""End to end: one optimizer step of the reference trainer per (config, variant).

    pytest benchmarks/test_bench_trainer.py --benchmark-only --benchmark-json=benchmarks/results/trainer.json

CPU: ViT-Tiny 224 px batch 16 and ViT-Tiny 32 px (p = 4) batch 64; GPU: ViT-B/16 224 px batch
128 under bf16 autocast. Variants: HPM and MAE with ``--ops fused`` and ``--ops reference``,
and the official-structure HPM step (benchmarks/official_step.py). pytest-benchmark pedantic:
``trainer_rounds`` timed steps after ``trainer_warmup`` warm-up steps; median reported.

Breakdown per part (trainer_parts.PARTS) in extra_info: on CPU the timed steps themselves are the
marked ones (a mark is one perf_counter call, no synchronisation), so the parts add up to the
timed step; on a GPU, where a mark must synchronise, the timed steps are unmarked and
``breakdown_steps`` extra marked steps give the parts.
"""

from __future__ import annotations

import gc

import bench_common as bc
import pytest
import torch
import trainer_parts as tp

S = bc.settings()
CONFIGS = {c.name: c for c in tp.configs(S.is_cuda, S.quick)}


@pytest.fixture(autouse=True)
def _free_models():
    yield
    gc.collect()
    if S.is_cuda:
        torch.cuda.empty_cache()


@pytest.mark.parametrize("variant", tp.VARIANTS)
@pytest.mark.parametrize("config", list(CONFIGS))
def test_trainer_step(benchmark, config, variant):
    cfg = CONFIGS[config]
    bench = tp.TrainerBench(cfg, variant, S.device)
    bench.check_parts_match_trainer()
    rec = tp.Recorder(S.device)
    if S.is_cuda:
        benchmark._timer = bc.cuda_timer  # a round ends when the GPU is done

        def target():
            bench.step()
    else:

        def target():
            bench.step_parts(rec)

    benchmark.group = f"trainer step: {cfg.label}"
    benchmark.pedantic(target, rounds=S.trainer_rounds, warmup_rounds=S.trainer_warmup, iterations=1)
    if S.is_cuda:
        for _ in range(S.breakdown_steps):
            bench.step_parts(rec)
        parts, source = rec.medians_ms(), f"{S.breakdown_steps} extra steps, torch.cuda.synchronize() at each part boundary"
    else:
        parts, source = rec.medians_ms(last=S.trainer_rounds), "the timed steps (perf_counter marks, no synchronisation)"
    method, ops = variant.split("/")
    benchmark.extra_info.update(
        kind="trainer",
        config=config,
        label=cfg.label,
        preset=cfg.preset,
        img=cfg.img,
        patch=cfg.patch,
        batch=cfg.batch,
        L=bench.L,
        variant=variant,
        method=method,
        ops=ops,
        hard_ratio=bench.hard,
        mask_ratio=bench.pcfg.mask_ratio,
        norm_pix=bench.pcfg.norm_pix,
        autocast=bench.autocast_dtype,
        rounds=S.trainer_rounds,
        warmup_rounds=S.trainer_warmup,
        breakdown_ms=parts,
        breakdown_source=source,
        parts_sum_ms=sum(parts.values()),
        device=S.device.type,
        device_name=bc.device_name(S.device),
    )
