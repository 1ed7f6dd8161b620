// The kernel network's CUDA kernels. Each one means exactly what the same-named method of
// `host.rs` computes; the host version is what the network's wiring is tested with.
// Compiled at run time by NVRTC, without any header. The code is also valid C: the tests
// compile it with the host's C compiler, a loop standing in for the threads (every kernel is a
// grid-stride loop whose iterations write disjoint outputs), and run the whole parity check
// with it.

#ifndef KERNEL
#define KERNEL extern "C" __global__
#endif

typedef struct {
    int n, h, w, c, kh, kw, sh, sw, dh, dw, pt, pl, ho, wo, groups;
} Geom;

typedef struct {
    float rows;
    float eps;
    float momentum;
    // bit 0: training (batch statistics), bit 1: gamma, bit 2: beta.
    int flags;
} BnScalars;

typedef struct {
    float lr, b1, b2, eps, wd, momentum, bc1, bc2;
    // 0: Adam, 1: SGD with classic momentum.
    int kind;
} UpdateCfg;

// Indices are 32-bit: the backend refuses buffers of 2^31 elements or more, and the grid has at
// most 2^28 threads, so `i` never wraps. 64-bit division costs several times more.
#define LOOP(i, total) \
    for (unsigned int i##_u = blockIdx.x * blockDim.x + threadIdx.x; i##_u < (unsigned int)(total); \
         i##_u += blockDim.x * gridDim.x) \
        for (int i = (int)i##_u, i##_once = 1; i##_once; i##_once = 0)

KERNEL void im2col(const float* x, float* out, Geom g, float fill, int total) {
    const int cg = g.c / g.groups;
    const int kcols = (int)g.kh * g.kw * g.c;
    LOOP(i, total) {
        int row = i / kcols;
        int col = (int)(i % kcols);
        int ci = col % cg;
        int t = col / cg;
        int kx = t % g.kw;
        t /= g.kw;
        int ky = t % g.kh;
        int grp = t / g.kh;
        int ox = (int)(row % g.wo);
        int r2 = row / g.wo;
        int oy = (int)(r2 % g.ho);
        int n = r2 / g.ho;
        int iy = oy * g.sh + ky * g.dh - g.pt;
        int ix = ox * g.sw + kx * g.dw - g.pl;
        int inside = iy >= 0 && ix >= 0 && iy < g.h && ix < g.w;
        out[i] = inside ? x[((n * g.h + iy) * g.w + ix) * g.c + grp * cg + ci] : fill;
    }
}

// One thread per input element sums the im2col entries that read it: no atomics.
KERNEL void col2im(const float* dcols, float* dx, Geom g, int acc, int total) {
    const int cg = g.c / g.groups;
    const int kcols = (int)g.kh * g.kw * g.c;
    LOOP(i, total) {
        int c = (int)(i % g.c);
        int r = i / g.c;
        int ix = (int)(r % g.w);
        r /= g.w;
        int iy = (int)(r % g.h);
        int n = r / g.h;
        int grp = c / cg;
        int ci = c % cg;
        float s = 0.0f;
        for (int ky = 0; ky < g.kh; ky++) {
            int ty = iy + g.pt - ky * g.dh;
            if (ty < 0 || ty % g.sh != 0) continue;
            int oy = ty / g.sh;
            if (oy >= g.ho) continue;
            for (int kx = 0; kx < g.kw; kx++) {
                int tx = ix + g.pl - kx * g.dw;
                if (tx < 0 || tx % g.sw != 0) continue;
                int ox = tx / g.sw;
                if (ox >= g.wo) continue;
                int row = (n * g.ho + oy) * g.wo + ox;
                s += dcols[row * kcols + ((grp * g.kh + ky) * g.kw + kx) * cg + ci];
            }
        }
        dx[i] = acc ? dx[i] + s : s;
    }
}

__device__ int taps_inside(const Geom* g, int row) {
    int ox = (int)(row % g->wo);
    int oy = (int)((row / g->wo) % g->ho);
    int k = 0;
    for (int ky = 0; ky < g->kh; ky++) {
        int iy = oy * g->sh + ky * g->dh - g->pt;
        for (int kx = 0; kx < g->kw; kx++) {
            int ix = ox * g->sw + kx * g->dw - g->pl;
            k += (iy >= 0 && ix >= 0 && iy < g->h && ix < g->w) ? 1 : 0;
        }
    }
    return k > 0 ? k : 1;
}

KERNEL void taps_reduce(const float* cols, float* y, float* arg, Geom g, int is_max, int total) {
    const int kk = g.kh * g.kw;
    LOOP(i, total) {
        int row = i / g.c;
        int j = (int)(i % g.c);
        const float* base = cols + row * kk * g.c + j;
        if (is_max) {
            float best = base[0];
            int at = 0;
            for (int t = 1; t < kk; t++) {
                float v = base[(int)t * g.c];
                if (v > best) {
                    best = v;
                    at = t;
                }
            }
            y[i] = best;
            arg[i] = (float)at;
        } else {
            float s = 0.0f;
            for (int t = 0; t < kk; t++) s += base[(int)t * g.c];
            y[i] = s / (float)taps_inside(&g, row);
        }
    }
}

KERNEL void taps_expand(const float* dy, const float* arg, float* dcols, Geom g, int is_max, int total) {
    const int kk = g.kh * g.kw;
    LOOP(i, total) {
        int j = (int)(i % g.c);
        int rt = i / g.c;
        int t = (int)(rt % kk);
        int row = rt / kk;
        int o = row * g.c + j;
        if (is_max) {
            dcols[i] = ((int)arg[o] == t) ? dy[o] : 0.0f;
        } else {
            dcols[i] = dy[o] / (float)taps_inside(&g, row);
        }
    }
}

__device__ float act_grad_out(int f, float y);

// Column sums in passes: each thread sums `chunk_rows` rows of one column (consecutive threads
// read consecutive columns), writing one partial sum per chunk; no atomics. Mode 0 sums a,
// mode 1 sums a·b, mode 2 writes both (one read of a and b for BatchNorm's two statistics).
// With an activation f (not ACT_LINEAR), a is first multiplied by f's derivative read off its
// output y (act_grad_out): BatchNorm's backward through its fused activation.
KERNEL void col_partial(const float* a, const float* b, const float* y, int f, int mode, int rows,
                        int c, int chunks, int chunk_rows, float* part, float* part2, int total) {
    LOOP(i, total) {
        int j = i % c;
        int q = (i / c) % chunks;
        int gi = i / (c * chunks);
        int r0 = q * chunk_rows;
        int r1 = r0 + chunk_rows < rows ? r0 + chunk_rows : rows;
        float s = 0.0f, s2 = 0.0f;
        for (int r = r0; r < r1; r++) {
            int k = (gi * rows + r) * c + j;
            float ak = f == ACT_LINEAR ? a[k] : a[k] * act_grad_out(f, y[k]);
            if (mode == 0) {
                s += ak;
            } else if (mode == 1) {
                s += ak * b[k];
            } else {
                s += ak;
                s2 += ak * b[k];
            }
        }
        part[i] = s;
        if (mode == 2) part2[i] = s2;
    }
}

KERNEL void col_finish(const float* part, int chunks, int c, float scale, float* out, int total) {
    LOOP(i, total) {
        int j = (int)(i % c);
        int gi = i / c;
        float s = 0.0f;
        for (int q = 0; q < chunks; q++) s += part[(gi * chunks + q) * c + j];
        out[i] = s * scale;
    }
}


KERNEL void bn_coeffs(const float* s1, const float* s2, const float* gamma, const float* beta,
                                     float* mm, float* mv, float* mean_o, float* istd_o, float* scale_o,
                                     float* shift_o, BnScalars p, int c) {
    LOOP(j, c) {
        float mean, var;
        if (p.flags & 1) {
            float r = p.rows;
            mean = s1[j] / r;
            var = fmaxf(s2[j] / r - mean * mean, 0.0f);
            float unbias = r > 1.0f ? r / (r - 1.0f) : 1.0f;
            mm[j] = p.momentum * mm[j] + (1.0f - p.momentum) * mean;
            mv[j] = p.momentum * mv[j] + (1.0f - p.momentum) * unbias * var;
        } else {
            mean = mm[j];
            var = mv[j];
        }
        float istd = 1.0f / sqrtf(var + p.eps);
        float scale = ((p.flags & 2) ? gamma[j] : 1.0f) * istd;
        mean_o[j] = mean;
        istd_o[j] = istd;
        scale_o[j] = scale;
        shift_o[j] = ((p.flags & 4) ? beta[j] : 0.0f) - mean * scale;
    }
}

// A convolution's bias b that the BatchNorm after it takes in, the convolution having left it
// out (after bn_coeffs ran on the input without b). In training the batch's variance is the
// same and its mean moves by b, which the output does not see: only the moving mean takes b in.
// Otherwise the moving mean is that of the input with b, so the shift takes b in.
KERNEL void bn_conv_bias(const float* b, float* mm, const float* scale, float* shift, BnScalars p,
                                        int c) {
    LOOP(j, c) {
        if (p.flags & 1) {
            mm[j] += (1.0f - p.momentum) * b[j];
        } else {
            shift[j] += scale[j] * b[j];
        }
    }
}

KERNEL void bn_back_coeffs(const float* sdy, const float* sdyx, const float* mean,
                                          const float* istd, const float* gamma, float* dgamma, float* dbeta,
                                          float* s_o, float* t_o, float* d_o, BnScalars p, int c) {
    LOOP(j, c) {
        float is = istd[j];
        float sxh = is * (sdyx[j] - mean[j] * sdy[j]);
        if (p.flags & 2) dgamma[j] += sxh;
        if (p.flags & 4) dbeta[j] += sdy[j];
        float gm = (p.flags & 2) ? gamma[j] : 1.0f;
        float t = -gm * is * is * sxh / p.rows;
        s_o[j] = gm * is;
        t_o[j] = t;
        d_o[j] = -gm * is * sdy[j] / p.rows - t * mean[j];
    }
}

__device__ float sigmoidf(float v) { return 1.0f / (1.0f + expf(-v)); }

// ln(1 + e^v) without overflow.
__device__ float softplusf(float v) { return fmaxf(v, 0.0f) + log1pf(expf(-fabsf(v))); }

// `f` is an activation's code: the ACT_<NAME> constants are generated from the IR's list of
// activations and put in front of this file when it is compiled (backend.rs, kernel_defines).
// Softmax is not elementwise (softmax_rows). No default case: a code without a case gives
// NOT_A_CASE (NaN), which parity and the loss check report.
__device__ float act_value(int f, float v) {
    switch (f) {
        case ACT_LINEAR: return v;
        case ACT_RELU: return fmaxf(v, 0.0f);
        case ACT_RELU6: return fminf(fmaxf(v, 0.0f), 6.0f);
        case ACT_SIGMOID: return sigmoidf(v);
        case ACT_HARD_SIGMOID: return fminf(fmaxf(0.2f * v + 0.5f, 0.0f), 1.0f);
        case ACT_TANH: return tanhf(v);
        case ACT_SWISH: return v * sigmoidf(v);
        case ACT_GELU: return 0.5f * v * (1.0f + tanhf(0.7978846f * (v + 0.044715f * v * v * v)));
        case ACT_ELU: return v > 0.0f ? v : expf(v) - 1.0f;
        case ACT_MISH: return v * tanhf(softplusf(v));
    }
    return NOT_A_CASE;
}

__device__ float act_grad(int f, float x, float y) {
    switch (f) {
        case ACT_LINEAR: return 1.0f;
        case ACT_RELU: return x > 0.0f ? 1.0f : 0.0f;
        case ACT_RELU6: return (x > 0.0f && x < 6.0f) ? 1.0f : 0.0f;
        case ACT_SIGMOID: return y * (1.0f - y);
        case ACT_HARD_SIGMOID: return (x > -2.5f && x < 2.5f) ? 0.2f : 0.0f;
        case ACT_TANH: return 1.0f - y * y;
        case ACT_SWISH: {
            float s = sigmoidf(x);
            return s + x * s * (1.0f - s);
        }
        case ACT_GELU: {
            const float k = 0.7978846f;
            float u = k * (x + 0.044715f * x * x * x);
            float t = tanhf(u);
            return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * k * (1.0f + 3.0f * 0.044715f * x * x);
        }
        case ACT_ELU: return x > 0.0f ? 1.0f : y + 1.0f;
        case ACT_MISH: {
            float t = tanhf(softplusf(x));
            return t + x * (1.0f - t * t) * sigmoidf(x);
        }
    }
    return NOT_A_CASE;
}

// out = f(s·u + d), per channel: BatchNorm's forward with its fused activation `f` (ACT_LINEAR
// for none). Its backward is bn_back_apply.
KERNEL void chan_affine(const float* u, const float* s, const float* d, int c, float* out, int f,
                                       int total) {
    LOOP(i, total) out[i] = act_value(f, s[i % c] * u[i] + d[i % c]);
}

// The derivative of f at the input that gave output y, for the activations whose derivative
// can be read off the output (ActFn::grad_from_output: their act_grad reads x only through its
// sign or its range, which the output has too).
__device__ float act_grad_out(int f, float y) { return act_grad(f, y, y); }

// BatchNorm's backward: dx (+)= s·g + t·x + d with g = dy, or dy times the derivative of its
// fused activation f read off its output y (ACT_LINEAR for none).
KERNEL void bn_back_apply(const float* dy, const float* y, int f, const float* s, const float* x,
                                         const float* t, const float* d, int c, float* dx, int acc, int total) {
    LOOP(i, total) {
        int j = (int)(i % c);
        float g = f == ACT_LINEAR ? dy[i] : dy[i] * act_grad_out(f, y[i]);
        float v = s[j] * g + t[j] * x[i] + d[j];
        dx[i] = acc ? dx[i] + v : v;
    }
}

KERNEL void act_fwd(const float* x, float* y, int f, int total) {
    LOOP(i, total) y[i] = act_value(f, x[i]);
}

KERNEL void act_back(const float* x, const float* y, const float* dy, float* dx, int f, int acc, int total) {
    LOOP(i, total) {
        float v = dy[i] * act_grad(f, x[i], y[i]);
        dx[i] = acc ? dx[i] + v : v;
    }
}

KERNEL void softmax_rows(const float* x, float* y, int c, int rows) {
    LOOP(r, rows) {
        const float* xr = x + r * c;
        float* yr = y + r * c;
        float m = xr[0];
        for (int j = 1; j < c; j++) m = fmaxf(m, xr[j]);
        float z = 0.0f;
        for (int j = 0; j < c; j++) {
            yr[j] = expf(xr[j] - m);
            z += yr[j];
        }
        for (int j = 0; j < c; j++) yr[j] /= z;
    }
}

KERNEL void softmax_back(const float* y, const float* dy, float* dx, int c, int acc, int rows) {
    LOOP(r, rows) {
        int o = r * c;
        float dot = 0.0f;
        for (int j = 0; j < c; j++) dot += y[o + j] * dy[o + j];
        for (int j = 0; j < c; j++) {
            float v = y[o + j] * (dy[o + j] - dot);
            dx[o + j] = acc ? dx[o + j] + v : v;
        }
    }
}

// Where element i of an (N, per / C, C) tensor finds its image's and channel's value in an
// (N, C) gate (host.rs has the same).
__device__ int gate_at(int i, int per, int c) { return (i / per) * c + i % c; }

KERNEL void gate_mul(const float* x, const float* g, float* out, int per, int c, int acc, int total) {
    LOOP(i, total) {
        float v = x[i] * g[gate_at(i, per, c)];
        out[i] = acc ? out[i] + v : v;
    }
}

// out = f(x · gate + r): an SE tail (Layer::GatedAdd) of one residual, in one pass; the gate is
// (N, C), x and r are (N, per / C, C).
KERNEL void gated_add(const float* x, const float* g, const float* r, float* out, int per, int c,
                                     int f, int total) {
    LOOP(i, total) out[i] = act_value(f, x[i] * g[gate_at(i, per, c)] + r[i]);
}

KERNEL void bcast_rows(const float* g, float* out, int per, int c, float scale, int acc, int total) {
    LOOP(i, total) {
        float v = scale * g[gate_at(i, per, c)];
        out[i] = acc ? out[i] + v : v;
    }
}

KERNEL void mul(const float* a, const float* b, float* out, int acc, int total) {
    LOOP(i, total) out[i] = acc ? out[i] + a[i] * b[i] : a[i] * b[i];
}

// out = f(out + alpha·x): an Add's last operand with the Add's fused activation `f`
// (ACT_LINEAR for none).
KERNEL void axpy(const float* x, float alpha, float* out, int f, int total) {
    LOOP(i, total) out[i] = act_value(f, out[i] + alpha * x[i]);
}

// y = f(y + b), per channel: a convolution's bias with its fused activation.
KERNEL void add_bias(float* y, const float* b, int c, int f, int total) {
    LOOP(i, total) y[i] = act_value(f, y[i] + b[i % c]);
}

KERNEL void col_copy(const float* src, int src_c, int src_off, float* dst, int dst_c, int dst_off,
                                    int width, int acc, int total) {
    LOOP(i, total) {
        int r = i / width;
        int j = (int)(i % width);
        float v = src[r * src_c + src_off + j];
        float* o = dst + r * dst_c + dst_off + j;
        *o = acc ? *o + v : v;
    }
}

// out[c][r] (+)= a[r][c] for a of (rows, cols): one thread per output, reading a column.
KERNEL void transpose(const float* a, float* out, int rows, int cols, int acc, int total) {
    LOOP(i, total) {
        int c = i / rows;
        int r = (int)(i % rows);
        float v = a[r * cols + c];
        out[i] = acc ? out[i] + v : v;
    }
}

// dfdx's Adam (L2 weight decay added to the gradient) and SGD with classic momentum; bc1
// and bc2 are Adam's bias corrections 1 - beta^step, computed on the host.
KERNEL void update(float* p, const float* g, float* m, float* v, UpdateCfg u, int total) {
    LOOP(i, total) {
        float gi = g[i] + u.wd * p[i];
        if (u.kind == 0) {
            m[i] = m[i] * u.b1 + gi * (1.0f - u.b1);
            v[i] = v[i] * u.b2 + gi * gi * (1.0f - u.b2);
            float mh = m[i] / u.bc1;
            float vh = v[i] / u.bc2;
            p[i] -= u.lr * mh / (sqrtf(vh) + u.eps);
        } else {
            m[i] = gi + u.momentum * m[i];
            p[i] -= u.lr * m[i];
        }
    }
}
