"""Naive loops written straight from SPEC.md's formulas, in float64 Python/NumPy.

Slow on purpose: one element, one patch, one pair at a time, so they share no code (and no
bug) with the vectorised reference in hpm_kernels.reference.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def patchify(imgs: torch.Tensor, p: int, ids: torch.Tensor | None = None) -> np.ndarray:
    x = imgs.detach().double().cpu().numpy()
    N, C, H, W = x.shape
    w = W // p
    L = (H // p) * w
    rows = [list(range(L))] * N if ids is None else ids.tolist()
    out = np.zeros((N, len(rows[0]) if N else 0, p * p * C))
    for n in range(N):
        for k, l in enumerate(rows[n]):
            r, c = divmod(l, w)
            for i in range(p):
                for j in range(p):
                    for ch in range(C):
                        out[n, k, (i * p + j) * C + ch] = x[n, ch, r * p + i, c * p + j]
    return out


def unpatchify(patches: torch.Tensor, p: int, H: int, W: int) -> np.ndarray:
    x = patches.detach().double().cpu().numpy()
    N, L, P = x.shape
    C = P // (p * p)
    w = W // p
    out = np.zeros((N, C, H, W))
    for n in range(N):
        for l in range(L):
            r, c = divmod(l, w)
            for i in range(p):
                for j in range(p):
                    for ch in range(C):
                        out[n, ch, r * p + i, c * p + j] = x[n, l, (i * p + j) * C + ch]
    return out


def patch_mse_loss(pred, imgs, p, ids, norm_pix=True, eps=1e-6) -> tuple[float, np.ndarray]:
    target = patchify(imgs, p, ids)
    y = pred.detach().double().cpu().numpy()
    N, K, P = y.shape
    per_patch = np.zeros((N, K))
    for n in range(N):
        for k in range(K):
            t = target[n, k]
            if norm_pix:
                mean = sum(t) / P
                var = sum((v - mean) ** 2 for v in t) / (P - 1)
                t = [(v - mean) / math.sqrt(var + eps) for v in t]
            per_patch[n, k] = sum((y[n, k, e] - t[e]) ** 2 for e in range(P)) / P
    loss = per_patch.sum() / per_patch.size if per_patch.size else 0.0
    return float(loss), per_patch


def select_patches(scores, noise, mask_ratio, hard_ratio):
    """Per sample, as SPEC step 2 describes it. Returns lists (ids_keep, ids_mask, ids_restore, mask)."""
    s = scores.detach().double().cpu().tolist()
    z = noise.detach().double().cpu().tolist()
    N = len(s)
    L = len(s[0]) if N else 0
    len_keep = int(L * (1 - mask_ratio))
    num_hard = int((L - len_keep) * hard_ratio)
    out = ([], [], [], [])
    for n in range(N):
        key = [(-math.inf if math.isnan(v) else v) for v in s[n]]
        by_score = sorted(range(L), key=lambda l: (-key[l], l))
        hard = set(by_score[:num_hard])
        rest = [l for l in range(L) if l not in hard]
        nz = [(math.inf if math.isnan(v) else v) for v in z[n]]
        rest.sort(key=lambda l: (nz[l], l))
        keep = sorted(rest[:len_keep])
        masked = sorted(set(range(L)) - set(keep))
        shuffle = keep + masked
        restore = [0] * L
        for pos, l in enumerate(shuffle):
            restore[l] = pos
        out[0].append(keep)
        out[1].append(masked)
        out[2].append(restore)
        out[3].append([l not in keep for l in range(L)])
    return out


def gather_tokens(x, ids) -> np.ndarray:
    a = x.detach().double().cpu().numpy()
    N, K = ids.shape
    out = np.zeros((N, K, a.shape[2]))
    for n in range(N):
        for k in range(K):
            out[n, k] = a[0 if a.shape[0] == 1 else n, int(ids[n, k])]
    return out


def pairwise_ranking_loss(pred, target, eps=1e-6) -> float:
    s = pred.detach().double().cpu().tolist()
    l = target.detach().double().cpu().tolist()
    total, pairs = 0.0, 0
    for n in range(len(s)):
        M = len(s[n])
        for i in range(M):
            for j in range(M):
                sig = 1.0 / (1.0 + math.exp(-(s[n][j] - s[n][i])))
                if l[n][j] > l[n][i]:
                    total += -math.log(sig + eps)
                    pairs += 1
                elif l[n][j] < l[n][i]:
                    total += -math.log(1.0 - sig + eps)
                    pairs += 1
    return total / pairs if pairs else 0.0
