/* One decode step of grouped-query attention on the CPU, for src/modeling/host_attention.py.
 *
 * For each row b and key/value head g: write the step's new key and value at position `pos` of
 * that row's cache, then attend with the group's query heads over positions left[b] .. pos (its
 * own tokens: no left padding, no unwritten positions). The (row, kv head) pairs are split
 * between `threads` threads. Layouts (float32, C order):
 *   q (B, Hq, D); k_new, v_new (B, Hkv, D); k_cache, v_cache (B, Hkv, C, D); out (B, Hq, D).
 * Query head h belongs to kv head h / (Hq / Hkv), as in mlx-lm and Hugging Face.
 */
#include <math.h>
#include <pthread.h>
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
