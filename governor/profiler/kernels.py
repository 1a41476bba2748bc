"""OpenCL kernels for the layers of configs/models/*.yaml, and numpy references for each.

Straightforward kernels (one work-item per output element), fp32, with real shapes. Every kernel
takes ``extra``: additional dependent arithmetic per work-item (applied once per work-item, to one
of its outputs), which the caller makes proportional to the item's own work; memory traffic is
unchanged. ``extra = 0`` is the plain kernel; the validation on a GPU whose
clocks may not be touched uses ``extra`` to emulate a slower GPU clock (a GPU at f/k does k times
the arithmetic time for the same bytes).
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

__kernel void conv(__global const float* x, __global const float* wt, __global float* y,
                   int cin, int hin, int win, int cout, int h, int w, int k, int stride, int extra) {
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
    y[(oc * h + oy) * w + ox] = burn(acc, extra);
}

__kernel void dwconv(__global const float* x, __global const float* wt, __global float* y,
                     int c_, int hin, int win, int h, int w, int k, int stride, int extra) {
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
    y[(c * h + oy) * w + ox] = burn(acc, extra);
}

__kernel void gemm(__global const float* a, __global const float* b, __global float* y,
                   int m, int n, int kk, int extra) {
    int col = get_global_id(0), row = get_global_id(1);
    if (col >= n || row >= m) return;
    float acc = 0.0f;
    for (int i = 0; i < kk; i++) acc += a[row * kk + i] * b[i * n + col];
    y[row * n + col] = burn(acc, extra);
}

__kernel void add2(__global const float* a, __global const float* b, __global float* y, int n, int extra) {
    int i = get_global_id(0);
    if (i < n) y[i] = burn(a[i] + b[i], extra);
}

__kernel void silu(__global const float* a, __global float* y, int n, int extra) {
    int i = get_global_id(0);
    if (i < n) { float v = a[i]; y[i] = burn(v / (1.0f + exp(-v)), extra); }
}

__kernel void maxpool(__global const float* x, __global float* y, int c_, int hin, int win,
                      int h, int w, int k, int stride, int extra) {
    int ox = get_global_id(0), oy = get_global_id(1), c = get_global_id(2);
    if (ox >= w || oy >= h || c >= c_) return;
    float m = -INFINITY;
    for (int ky = 0; ky < k; ky++)
        for (int kx = 0; kx < k; kx++) {
            int iy = oy * stride + ky, ix = ox * stride + kx;
            if (iy < hin && ix < win) m = fmax(m, x[(c * hin + iy) * win + ix]);
        }
    y[(c * h + oy) * w + ox] = burn(m, extra);
}

__kernel void softmax_rows(__global const float* x, __global float* y, int rows, int cols, int extra) {
    int r = get_global_id(0);
    if (r >= rows) return;
    float m = -INFINITY, s = 0.0f;
    for (int i = 0; i < cols; i++) m = fmax(m, x[r * cols + i]);
    for (int i = 0; i < cols; i++) s += exp(x[r * cols + i] - m);
    for (int i = 0; i < cols; i++) y[r * cols + i] = exp(x[r * cols + i] - m) / s;
    y[r * cols] = burn(y[r * cols], extra);
}

__kernel void rmsnorm(__global const float* x, __global const float* g, __global float* y,
                      int rows, int n, int extra) {
    int r = get_global_id(0);
    if (r >= rows) return;
    float ss = 0.0f;
    for (int i = 0; i < n; i++) ss += x[r * n + i] * x[r * n + i];
    float inv = rsqrt(ss / n + 1e-6f);
    for (int i = 0; i < n; i++) y[r * n + i] = x[r * n + i] * inv * g[i];
    y[r * n] = burn(y[r * n], extra);
}

// One decode step of attention for one head: q (heads x d), caches (ctx_max x kv_heads x d).
__kernel void attention(__global const float* q, __global const float* kc, __global const float* vc,
                        __global float* y, int heads, int kv_heads, int d, int ctx, int extra) {
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
    y[hh * d] = burn(y[hh * d], extra);
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
