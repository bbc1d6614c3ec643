/* Decoding on the CPU, for src/modeling/host_attention.py: one step of grouped-query attention
 * (decode_attention), and one whole step of a Llama-family model (decode_step).
 *
 * decode_attention: for each row b and key/value head g: write the step's new key and value at position `pos` of
 * that row's cache, then attend with the group's query heads over positions left[b] .. pos (its
 * own tokens: no left padding, no unwritten positions). The (row, kv head) pairs are split
 * between `threads` threads. Layouts (float32, C order):
 *   q (B, Hq, D); k_new, v_new (B, Hkv, D); k_cache, v_cache (B, Hkv, C, D); out (B, Hq, D).
 * Query head h belongs to kv head h / (Hq / Hkv), as in mlx-lm and Hugging Face.
 */
#include <math.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
  const float *q, *k_new, *v_new;
  float *k_cache, *v_cache, *out;
  const int32_t *left;
  int pos, hq, hkv, cap, dim, lo, hi;
  float scale;
  int failed;
} job_t;

static float dot(const float *a, const float *b, int n) {
  /* eight independent partial sums: vectorized without reassociating a single sum */
  float acc[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
  int d = 0;
  for (; d + 8 <= n; d += 8)
    for (int l = 0; l < 8; l++) acc[l] += a[d + l] * b[d + l];
  for (; d < n; d++) acc[d & 7] += a[d] * b[d];
  return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

static void *work(void *arg) {
  job_t *j = (job_t *)arg;
  const int rep = j->hq / j->hkv, cap = j->cap, dim = j->dim;
  float *scores = malloc(sizeof(float) * (size_t)cap);
  if (!scores) {
    j->failed = 1;
    return NULL;
  }
  for (int t = j->lo; t < j->hi; t++) { /* t = b * hkv + g */
    const int b = t / j->hkv;
    float *k = j->k_cache + (size_t)t * cap * dim, *v = j->v_cache + (size_t)t * cap * dim;
    memcpy(k + (size_t)j->pos * dim, j->k_new + (size_t)t * dim, sizeof(float) * dim);
    memcpy(v + (size_t)j->pos * dim, j->v_new + (size_t)t * dim, sizeof(float) * dim);
    const int first = j->left[b], n = j->pos + 1 - first;
    for (int r = 0; r < rep; r++) {
      const float *q = j->q + ((size_t)t * rep + r) * dim;
      float top = -INFINITY, sum = 0.f;
      for (int c = 0; c < n; c++) {
        scores[c] = dot(q, k + (size_t)(first + c) * dim, dim) * j->scale;
        top = scores[c] > top ? scores[c] : top;
      }
      for (int c = 0; c < n; c++) {
        scores[c] = expf(scores[c] - top);
        sum += scores[c];
      }
      float *o = j->out + ((size_t)t * rep + r) * dim;
      memset(o, 0, sizeof(float) * dim);
      for (int c = 0; c < n; c++) {
        const float p = scores[c] / sum, *vc = v + (size_t)(first + c) * dim;
        for (int d = 0; d < dim; d++) o[d] += p * vc[d];
      }
    }
  }
  free(scores);
  return NULL;
}

/* Returns 0, or -1 where a thread or its scratch memory could not be had (nothing computed
 * by that part: the caller raises). */
int decode_attention(const float *q, const float *k_new, const float *v_new, float *k_cache,
                     float *v_cache, const int32_t *left, int pos, float *out, int rows, int hq,
                     int hkv, int cap, int dim, float scale, int threads) {
  enum { MAX_THREADS = 64 };
  pthread_t th[MAX_THREADS];
  job_t jobs[MAX_THREADS];
  int started[MAX_THREADS] = {0};
  const int pairs = rows * hkv;
  if (threads > MAX_THREADS) threads = MAX_THREADS;
  if (threads > pairs) threads = pairs;
  if (threads < 1) threads = 1;
  for (int i = 0; i < threads; i++) {
    jobs[i] = (job_t){q,   k_new,       v_new, k_cache,  v_cache, out, left, pos, hq,
                      hkv, cap,         dim,   (int)((long)pairs * i / threads),
                      (int)((long)pairs * (i + 1) / threads), scale, 0};
    if (i) started[i] = pthread_create(&th[i], NULL, work, &jobs[i]) == 0;
  }
  work(&jobs[0]);
  int failed = jobs[0].failed;
  for (int i = 1; i < threads; i++) {
    if (started[i]) {
      pthread_join(th[i], NULL);
      failed |= jobs[i].failed;
    } else {
      work(&jobs[i]); /* no thread: this part on the caller's */
      failed |= jobs[i].failed;
    }
  }
  return failed ? -1 : 0;
}

/* ---- decode_step: one decode step of a Llama-family model (pre-norm RMSNorm, rotary
 * embeddings in the half-split layout, grouped-query attention, SwiGLU MLP, no biases), every
 * layer in one call. The matmuls are the process's CBLAS sgemm (MKL where src/modeling/blas.py
 * preloaded it: the one MLX's CPU backend calls), handed in as a pointer; the element-wise parts
 * are plain loops the compiler vectorizes; attention is decode_attention's.
 *
 * Weights (float32, C order, as mlx-lm holds them: a Linear's weight is (out, in)), 9 pointers
 * per layer: attention norm (H), q (Hq D, H), k, v (Hkv D, H), o (H, Hq D), MLP norm (H),
 * gate, up (I, H), down (H, I). */

typedef void (*sgemm_t)(int order, int transa, int transb, int m, int n, int k, float alpha,
                        const float *a, int lda, const float *b, int ldb, float beta, float *c,
                        int ldc);
enum { ROW_MAJOR = 101, NO_TRANS = 111, TRANS = 112 };

/* x @ w^T (+ c where beta is 1): x (m, k), w (n, k), c (m, n) */
static void linear(sgemm_t sgemm, const float *x, const float *w, float *c, int m, int n, int k,
                   float beta) {
  sgemm(ROW_MAJOR, NO_TRANS, TRANS, m, n, k, 1.f, x, k, w, k, beta, c, n);
}

static void rms_norm(const float *x, const float *w, float *out, int rows, int n, float eps) {
  for (int b = 0; b < rows; b++) {
    const float *xb = x + (size_t)b * n;
    float *ob = out + (size_t)b * n;
    float ss = 0.f;
    for (int i = 0; i < n; i++) ss += xb[i] * xb[i];
    const float r = 1.f / sqrtf(ss / n + eps);
    for (int i = 0; i < n; i++) ob[i] = w[i] * (xb[i] * r);
  }
}

/* silu(g) * u, with src/modeling/kernels.py's sigmoid: 0.5 + 0.5 tanh(x / 2), tanh Eigen's
 * float32 rational approximation (arithmetic only, so the loop vectorizes) */
static void swiglu(const float *gate, const float *up, float *out, int n) {
  static const float p[7] = {4.89352455891786e-03f,  6.37261928875436e-04f,
                             1.48572235717979e-05f,  5.12229709037114e-08f,
                             -8.60467152213735e-11f, 2.00018790482477e-13f,
                             -2.76076847742355e-16f};
  static const float q[4] = {4.89352518554385e-03f, 2.26843463243900e-03f, 1.18534705686654e-04f,
                             1.19825839466702e-06f};
  const float clamp = 7.90531110763549805f;
  for (int i = 0; i < n; i++) {
    float t = 0.5f * gate[i];
    t = t < -clamp ? -clamp : (t > clamp ? clamp : t);
    const float t2 = t * t;
    float num = p[6], den = q[3];
    for (int j = 5; j >= 0; j--) num = num * t2 + p[j];
    for (int j = 2; j >= 0; j--) den = den * t2 + q[j];
    out[i] = gate[i] * (0.5f + 0.5f * (t * num / den)) * up[i];
  }
}

/* rotate the first `heads` heads of each row's (heads, dim) block, half-split layout */
static void rope(float *x, int rows, int stride, int heads, int dim, const float *cs) {
  const int half = dim / 2;
  for (int b = 0; b < rows; b++) {
    const float *c = cs + (size_t)b * dim, *s = c + half;
    for (int h = 0; h < heads; h++) {
      float *v = x + (size_t)b * stride + (size_t)h * dim;
      for (int i = 0; i < half; i++) {
        const float x1 = v[i], x2 = v[i + half];
        v[i] = x1 * c[i] - x2 * s[i];
        v[i + half] = x1 * s[i] + x2 * c[i];
      }
    }
  }
}

/* Returns 0, or -1 where memory or a thread could not be had. tokens (rows); k_cache[l],
 * v_cache[l] (rows, Hkv, cap, D) per layer; left (rows); logits (rows, vocab). */
int decode_step(const float *const *weights, const float *final_norm, const float *embed,
                const float *head, int layers, int hidden, int inter, int hq, int hkv, int dim,
                int vocab, float eps, float theta, float scale, void *sgemm_ptr,
                const int32_t *tokens, int rows, float *const *k_cache, float *const *v_cache,
                int cap, const int32_t *left, int pos, float *logits, int threads) {
  sgemm_t sgemm = (sgemm_t)sgemm_ptr;
  const size_t attn = (size_t)hq * dim, inner = (size_t)inter > attn ? (size_t)inter : attn;
  float *x = malloc(sizeof(float) * rows * hidden), *h = malloc(sizeof(float) * rows * hidden);
  float *q = malloc(sizeof(float) * rows * attn), *out = malloc(sizeof(float) * rows * inner);
  float *k = malloc(sizeof(float) * rows * hkv * dim), *v = malloc(sizeof(float) * rows * hkv * dim);
  float *gate = malloc(sizeof(float) * rows * inter), *up = malloc(sizeof(float) * rows * inter);
  float *cs = malloc(sizeof(float) * rows * dim);
  int failed = !(x && h && q && out && k && v && gate && up && cs);
  if (!failed) {
    for (int b = 0; b < rows; b++) {
      memcpy(x + (size_t)b * hidden, embed + (size_t)tokens[b] * hidden, sizeof(float) * hidden);
      const float position = (float)(pos - left[b]); /* RoPE offset: the row's own tokens */
      for (int i = 0; i < dim / 2; i++) {
        const float angle = position * powf(theta, -2.f * i / dim);
        cs[(size_t)b * dim + i] = cosf(angle);
        cs[(size_t)b * dim + dim / 2 + i] = sinf(angle);
      }
    }
  }
  for (int l = 0; l < layers && !failed; l++) {
    const float *const *w = weights + 9 * l;
    rms_norm(x, w[0], h, rows, hidden, eps);
    linear(sgemm, h, w[1], q, rows, hq * dim, hidden, 0.f);
    linear(sgemm, h, w[2], k, rows, hkv * dim, hidden, 0.f);
    linear(sgemm, h, w[3], v, rows, hkv * dim, hidden, 0.f);
    rope(q, rows, hq * dim, hq, dim, cs);
    rope(k, rows, hkv * dim, hkv, dim, cs);
    failed = decode_attention(q, k, v, k_cache[l], v_cache[l], left, pos, out, rows, hq, hkv, cap,
                              dim, scale, threads);
    linear(sgemm, out, w[4], x, rows, hidden, hq * dim, 1.f);
    rms_norm(x, w[5], h, rows, hidden, eps);
    linear(sgemm, h, w[6], gate, rows, inter, hidden, 0.f);
    linear(sgemm, h, w[7], up, rows, inter, hidden, 0.f);
    swiglu(gate, up, out, rows * inter);
    linear(sgemm, out, w[8], x, rows, hidden, inter, 1.f);
  }
  if (!failed) {
    rms_norm(x, final_norm, h, rows, hidden, eps);
    linear(sgemm, h, head, logits, rows, vocab, hidden, 0.f);
  }
  free(x), free(h), free(q), free(out), free(k), free(v), free(gate), free(up), free(cs);
  return failed ? -1 : 0;
}
