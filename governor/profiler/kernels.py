"""OpenCL kernels for the layers of configs/models/*.yaml, and numpy references for each.

Straightforward kernels (one work-item per output element), fp32, with real shapes. Every kernel
takes two knobs that emulate slower clocks on a device whose clocks may not be touched (the lent
GPU), each leaving the other side of the roofline alone:

* ``extra``: additional dependent arithmetic per work-item (applied once per work-item, to one of
  its outputs), which the caller makes proportional to the item's own work; memory traffic is
  unchanged. A GPU at f/k does k times the arithmetic time for the same bytes.
* ``mem_total``: additional bytes read (in 16-byte float4s), spread over the work-items and coalesced across them, from
  ``sink``, a buffer larger than the device's caches, starting at ``mem_off`` (the caller rotates it
  so that no launch finds the previous one's lines in cache); arithmetic is unchanged. A memory at
  f/k moves the kernel's bytes k times slower, which costs what moving k times the bytes does.

``extra = 0`` and ``mem_total = 0`` is the plain kernel.
"""

from __future__ import annotations

import numpy as np

SOURCE = r"""
// Dependent arithmetic that the compiler cannot drop; returns `v` unchanged.
inline float burn(float v, int extra) {
    float b = v;
    for (int r = 0; r < extra; r++) b = fma(b, 0.99999994f, 1e-30f);
    return (extra > 0 && b == 3.0e38f) ? b : v;
}

// Extra memory traffic that the compiler cannot drop: `mem_total` float4s (16 bytes each) of
// `sink` (mask + 1 of them, a power of two) read from `mem_off` on, exactly: item i of n takes
// i, i + n, i + 2n, ... below mem_total, so that neighbours read neighbouring bytes as real kernels
// do (a GPU coalesces them); returns `v` unchanged.
inline float traffic(float v, __global const float4* sink, uint mask, uint mem_total, uint mem_off) {
    if (mem_total == 0) return v;
    uint n = (uint)(get_global_size(0) * get_global_size(1) * get_global_size(2));
    uint lin = (uint)(get_global_id(0)
                      + get_global_size(0) * (get_global_id(1) + get_global_size(1) * get_global_id(2)));
    float4 s = (float4)(0.0f);
    for (uint i = lin; i < mem_total; i += n) s += sink[(mem_off + i) & mask];
    float t = s.x + s.y + s.z + s.w;
    return (t == 3.0e38f) ? t : v;
}

#define EMU_ARGS int extra, __global const float4* sink, uint mask, uint mem_total, uint mem_off
#define FINISH(v) traffic(burn((v), extra), sink, mask, mem_total, mem_off)

__kernel void conv(__global const float* x, __global const float* wt, __global float* y,
                   int cin, int hin, int win, int cout, int h, int w, int k, int stride, EMU_ARGS) {
    int ox = get_global_id(0), oy = get_global_id(1), oc = get_global_id(2);
    if (ox >= w || oy >= h || oc >= cout) return;
    int pad = k / 2;
    float acc = 0.0f;
    for (int c = 0; c < cin; c++)
        for (int ky = 0; ky < k; ky++) {
            int iy = oy * stride + ky - pad;
            if (iy < 0 || iy >= hin) continue;
            for (int kx = 0; kx < k; kx++) {
                int ix = ox * stride + kx - pad;
                if (ix < 0 || ix >= win) continue;
                acc += x[(c * hin + iy) * win + ix] * wt[((oc * cin + c) * k + ky) * k + kx];
            }
        }
    y[(oc * h + oy) * w + ox] = FINISH(acc);
}

__kernel void dwconv(__global const float* x, __global const float* wt, __global float* y,
                     int c_, int hin, int win, int h, int w, int k, int stride, EMU_ARGS) {
    int ox = get_global_id(0), oy = get_global_id(1), c = get_global_id(2);
    if (ox >= w || oy >= h || c >= c_) return;
    int pad = k / 2;
    float acc = 0.0f;
    for (int ky = 0; ky < k; ky++) {
        int iy = oy * stride + ky - pad;
        if (iy < 0 || iy >= hin) continue;
        for (int kx = 0; kx < k; kx++) {
            int ix = ox * stride + kx - pad;
            if (ix < 0 || ix >= win) continue;
            acc += x[(c * hin + iy) * win + ix] * wt[(c * k + ky) * k + kx];
        }
    }
    y[(c * h + oy) * w + ox] = FINISH(acc);
}

__kernel void gemm(__global const float* a, __global const float* b, __global float* y,
                   int m, int n, int kk, EMU_ARGS) {
    int col = get_global_id(0), row = get_global_id(1);
    if (col >= n || row >= m) return;
    float acc = 0.0f;
    for (int i = 0; i < kk; i++) acc += a[row * kk + i] * b[i * n + col];
    y[row * n + col] = FINISH(acc);
}

__kernel void add2(__global const float* a, __global const float* b, __global float* y, int n, EMU_ARGS) {
    int i = get_global_id(0);
    if (i < n) y[i] = FINISH(a[i] + b[i]);
}

__kernel void silu(__global const float* a, __global float* y, int n, EMU_ARGS) {
    int i = get_global_id(0);
    if (i < n) { float v = a[i]; y[i] = FINISH(v / (1.0f + exp(-v))); }
}

__kernel void maxpool(__global const float* x, __global float* y, int c_, int hin, int win,
                      int h, int w, int k, int stride, EMU_ARGS) {
    int ox = get_global_id(0), oy = get_global_id(1), c = get_global_id(2);
    if (ox >= w || oy >= h || c >= c_) return;
    float m = -INFINITY;
    for (int ky = 0; ky < k; ky++)
        for (int kx = 0; kx < k; kx++) {
            int iy = oy * stride + ky, ix = ox * stride + kx;
            if (iy < hin && ix < win) m = fmax(m, x[(c * hin + iy) * win + ix]);
        }
    y[(c * h + oy) * w + ox] = FINISH(m);
}

__kernel void softmax_rows(__global const float* x, __global float* y, int rows, int cols, EMU_ARGS) {
    int r = get_global_id(0);
    if (r >= rows) return;
    float m = -INFINITY, s = 0.0f;
    for (int i = 0; i < cols; i++) m = fmax(m, x[r * cols + i]);
    for (int i = 0; i < cols; i++) s += exp(x[r * cols + i] - m);
    for (int i = 0; i < cols; i++) y[r * cols + i] = exp(x[r * cols + i] - m) / s;
    y[r * cols] = FINISH(y[r * cols]);
}

__kernel void rmsnorm(__global const float* x, __global const float* g, __global float* y,
                      int rows, int n, EMU_ARGS) {
    int r = get_global_id(0);
    if (r >= rows) return;
    float ss = 0.0f;
    for (int i = 0; i < n; i++) ss += x[r * n + i] * x[r * n + i];
    float inv = rsqrt(ss / n + 1e-6f);
    for (int i = 0; i < n; i++) y[r * n + i] = x[r * n + i] * inv * g[i];
    y[r * n] = FINISH(y[r * n]);
}

// One decode step of attention for one head: q (heads x d), caches (ctx_max x kv_heads x d).
__kernel void attention(__global const float* q, __global const float* kc, __global const float* vc,
                        __global float* y, int heads, int kv_heads, int d, int ctx, EMU_ARGS) {
    int hh = get_global_id(0);
    if (hh >= heads) return;
    int kvh = hh / (heads / kv_heads);
    float scale = rsqrt((float)d);
    float m = -INFINITY;
    for (int t = 0; t < ctx; t++) {
        float s = 0.0f;
        for (int i = 0; i < d; i++) s += q[hh * d + i] * kc[(t * kv_heads + kvh) * d + i];
        m = fmax(m, s * scale);
    }
    float den = 0.0f;
    for (int i = 0; i < d; i++) y[hh * d + i] = 0.0f;
    for (int t = 0; t < ctx; t++) {
        float s = 0.0f;
        for (int i = 0; i < d; i++) s += q[hh * d + i] * kc[(t * kv_heads + kvh) * d + i];
        float p = exp(s * scale - m);
        den += p;
        for (int i = 0; i < d; i++) y[hh * d + i] += p * vc[(t * kv_heads + kvh) * d + i];
    }
    for (int i = 0; i < d; i++) y[hh * d + i] = y[hh * d + i] / den;
    y[hh * d] = FINISH(y[hh * d]);
}
"""


# ---- numpy references (used by the tests to check every kernel's result) --------------------
def ref_conv(x: np.ndarray, wt: np.ndarray, h: int, w: int, k: int, stride: int) -> np.ndarray:
    cin, hin, win = x.shape
    pad = k // 2
    xp = np.zeros((cin, hin + 2 * pad + stride * k, win + 2 * pad + stride * k), np.float32)
    xp[:, pad:pad + hin, pad:pad + win] = x
    cout = wt.shape[0]
    y = np.zeros((cout, h, w), np.float64)
    for ky in range(k):
        for kx in range(k):
            patch = xp[:, ky: ky + stride * h: stride, kx: kx + stride * w: stride][:, :h, :w]
            y += np.einsum("chw,oc->ohw", patch, wt[:, :, ky, kx])
    return y.astype(np.float32)


def ref_dwconv(x: np.ndarray, wt: np.ndarray, h: int, w: int, k: int, stride: int) -> np.ndarray:
    c, hin, win = x.shape
    pad = k // 2
    xp = np.zeros((c, hin + 2 * pad + stride * k, win + 2 * pad + stride * k), np.float32)
    xp[:, pad:pad + hin, pad:pad + win] = x
    y = np.zeros((c, h, w), np.float64)
    for ky in range(k):
        for kx in range(k):
            window = xp[:, ky: ky + stride * h: stride, kx: kx + stride * w: stride][:, :h, :w]
            y += window * wt[:, ky, kx][:, None, None]
    return y.astype(np.float32)


def ref_maxpool(x: np.ndarray, h: int, w: int, k: int, stride: int) -> np.ndarray:
    c, hin, win = x.shape
    y = np.full((c, h, w), -np.inf, np.float32)
    for ky in range(k):
        for kx in range(k):
            iy = np.arange(h) * stride + ky
            ix = np.arange(w) * stride + kx
            valid_y, valid_x = iy < hin, ix < win
            sub = np.full((c, h, w), -np.inf, np.float32)
            sub[:, valid_y[:, None] & valid_x[None, :]] = x[:, iy[valid_y]][:, :, ix[valid_x]].reshape(c, -1)
            y = np.maximum(y, sub)
    return y


def ref_softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def ref_rmsnorm(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    return x / np.sqrt((x * x).mean(axis=1, keepdims=True) + 1e-6) * g


def ref_attention(q: np.ndarray, kc: np.ndarray, vc: np.ndarray, ctx: int) -> np.ndarray:
    heads, d = q.shape
    kv_heads = kc.shape[1]
    group = heads // kv_heads
    out = np.zeros_like(q)
    for h in range(heads):
        k = kc[:ctx, h // group]
        s = k @ q[h] / np.sqrt(d)
        p = np.exp(s - s.max())
        out[h] = (p[:, None] * vc[:ctx, h // group]).sum(axis=0) / p.sum()
    return out


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float = 0.45) -> np.ndarray:
    """Greedy non-maximum suppression (the host fallback of detectors); boxes are x1,y1,x2,y2."""
    order = np.argsort(-scores)
    keep = []
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        xx1 = np.maximum(boxes[i, 0], boxes[rest, 0])
        yy1 = np.maximum(boxes[i, 1], boxes[rest, 1])
        xx2 = np.minimum(boxes[i, 2], boxes[rest, 2])
        yy2 = np.minimum(boxes[i, 3], boxes[rest, 3])
        inter = np.clip(xx2 - xx1, 0, None) * np.clip(yy2 - yy1, 0, None)
        order = rest[inter / (area[i] + area[rest] - inter + 1e-9) <= iou]
    return np.array(keep, dtype=np.int64)
