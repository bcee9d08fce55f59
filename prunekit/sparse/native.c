/* prunekit's CSR kernels for SparseLinear (format "native"); built on first use by native.py.
 *
 * y^T = W x^T + b with W in CSR (int64 row offsets, int32 column indices, float32 values), x^T row-major
 * [in, B], y^T row-major [rows, B]. Each output row keeps its B accumulators (four independent sets, so consecutive non-zeros do
 * not wait on each other's multiply-add) in registers while it walks its non-zeros: one broadcast value
 * times one contiguous row of x^T per non-zero, which the compiler vectorises over B in fixed-width chunks (16 columns, then 8, then the rest one by one). B == 1 is a gather dot product (vectorised
 * with -fopenmp-simd: gathers, lane-wise partial sums).
 * Rows are split between threads (POSIX threads) in ranges of about equal non-zeros, one thread per million
 * multiply-adds at most (a batch-1 product stays on the calling thread).
 * Plain C99, no dependencies; every index is trusted (SparseLinear.check_structure validates loaded buffers).
 */
#include <pthread.h>
#include <stdint.h>
#include <string.h>

/* Four independent accumulator sets, so consecutive non-zeros do not wait on one another's multiply-add. */
#define PK_CHUNK(W)                                                                                     \
    static void chunk_##W(int64_t r0, int64_t r1, const int64_t *crow, const int32_t *col,              \
                          const float *val, const float *bias, const float *xt, int64_t B,              \
                          int64_t c0, float *out) {                                                     \
        for (int64_t r = r0; r < r1; r++) {                                                             \
            float a0[W], a1[W], a2[W], a3[W];                                                           \
            const float b0 = bias ? bias[r] : 0.0f;                                                     \
            for (int j = 0; j < W; j++) { a0[j] = b0; a1[j] = 0.0f; a2[j] = 0.0f; a3[j] = 0.0f; }       \
            int64_t k = crow[r];                                                                        \
            const int64_t end = crow[r + 1];                                                            \
            for (; k + 4 <= end; k += 4) {                                                              \
                const float v0 = val[k], v1 = val[k + 1], v2 = val[k + 2], v3 = val[k + 3];             \
                const float *x0 = xt + (int64_t)col[k] * B + c0, *x1 = xt + (int64_t)col[k + 1] * B + c0;\
                const float *x2 = xt + (int64_t)col[k + 2] * B + c0, *x3 = xt + (int64_t)col[k + 3] * B + c0;\
                for (int j = 0; j < W; j++) {                                                           \
                    a0[j] += v0 * x0[j];                                                                \
                    a1[j] += v1 * x1[j];                                                                \
                    a2[j] += v2 * x2[j];                                                                \
                    a3[j] += v3 * x3[j];                                                                \
                }                                                                                       \
            }                                                                                           \
            for (; k < end; k++) {                                                                      \
                const float v = val[k];                                                                 \
                const float *x = xt + (int64_t)col[k] * B + c0;                                         \
                for (int j = 0; j < W; j++) a0[j] += v * x[j];                                          \
            }                                                                                           \
            for (int j = 0; j < W; j++) a0[j] = (a0[j] + a1[j]) + (a2[j] + a3[j]);                      \
            memcpy(out + r * B + c0, a0, sizeof(a0));                                                   \
        }                                                                                               \
    }
PK_CHUNK(16)
PK_CHUNK(8)

static void rest(int64_t r0, int64_t r1, const int64_t *crow, const int32_t *col, const float *val,
                 const float *bias, const float *xt, int64_t B, int64_t c0, float *out) {
    for (int64_t r = r0; r < r1; r++) {
        const float b0 = bias ? bias[r] : 0.0f;
        for (int64_t c = c0; c < B; c++) {
            float acc = b0;
            for (int64_t k = crow[r]; k < crow[r + 1]; k++) acc += val[k] * xt[(int64_t)col[k] * B + c];
            out[r * B + c] = acc;
        }
    }
}

static void spmv(int64_t r0, int64_t r1, const int64_t *crow, const int32_t *col, const float *val,
                 const float *bias, const float *x, float *out) {
    for (int64_t r = r0; r < r1; r++) {
        float acc = 0.0f;
        const int64_t end = crow[r + 1];
#pragma omp simd reduction(+ : acc)
        for (int64_t k = crow[r]; k < end; k++) acc += val[k] * x[col[k]];
        out[r] = (bias ? bias[r] : 0.0f) + acc;
    }
}

static void rows(int64_t r0, int64_t r1, const int64_t *crow, const int32_t *col, const float *val,
                 const float *bias, const float *xt, int64_t B, float *out) {
    if (B == 1) {
        spmv(r0, r1, crow, col, val, bias, xt, out);
        return;
    }
    int64_t c0 = 0;
    for (; c0 + 16 <= B; c0 += 16) chunk_16(r0, r1, crow, col, val, bias, xt, B, c0, out);
    if (c0 + 8 <= B) { chunk_8(r0, r1, crow, col, val, bias, xt, B, c0, out); c0 += 8; }
    if (c0 < B) rest(r0, r1, crow, col, val, bias, xt, B, c0, out);
}

typedef struct {
    int64_t r0, r1, B;
    const int64_t *crow;
    const int32_t *col;
    const float *val, *bias, *xt;
    float *out;
} job_t;

static void *run_job(void *p) {
    job_t *j = (job_t *)p;
    rows(j->r0, j->r1, j->crow, j->col, j->val, j->bias, j->xt, j->B, j->out);
    return NULL;
}

/* The first row whose non-zeros start at or after `target` (crow is non-decreasing). */
static int64_t split_row(const int64_t *crow, int64_t n, int64_t target) {
    int64_t lo = 0, hi = n;
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        if (crow[mid] < target) lo = mid + 1; else hi = mid;
    }
    return lo;
}

#define PK_MAX_THREADS 64
#define PK_MIN_WORK_PER_THREAD 1000000 /* multiply-adds; about 0.2-0.5 ms of one core */

/* Returns 0, or the number of threads that could not be started (their rows then ran on the caller). */
int pk_csr_mm_f32(int64_t n, const int64_t *crow, const int32_t *col, const float *val, const float *bias,
                  const float *xt, int64_t B, float *out, int threads) {
    if (threads > PK_MAX_THREADS) threads = PK_MAX_THREADS;
    if (threads > n) threads = (int)n;
    /* a thread is started per call: only where each gets enough multiply-adds to pay for its start */
    const int64_t work = (crow[n] - crow[0]) * B;
    if (threads > 1 && work / PK_MIN_WORK_PER_THREAD < threads)
        threads = (int)(work / PK_MIN_WORK_PER_THREAD) > 1 ? (int)(work / PK_MIN_WORK_PER_THREAD) : 1;
    if (threads <= 1) {
        rows(0, n, crow, col, val, bias, xt, B, out);
        return 0;
    }
    job_t jobs[PK_MAX_THREADS];
    pthread_t tid[PK_MAX_THREADS];
    int started[PK_MAX_THREADS];
    const int64_t nnz = crow[n] - crow[0];
    int64_t start = 0;
    for (int t = 0; t < threads; t++) {
        int64_t end = t == threads - 1 ? n : split_row(crow, n, crow[0] + nnz * (t + 1) / threads);
        if (end < start) end = start;
        jobs[t] = (job_t){start, end, B, crow, col, val, bias, xt, out};
        start = end;
    }
    int failed = 0;
    for (int t = 1; t < threads; t++) {
        started[t] = pthread_create(&tid[t], NULL, run_job, &jobs[t]) == 0;
        if (!started[t]) failed++;
    }
    run_job(&jobs[0]);
    for (int t = 1; t < threads; t++) {
        if (started[t]) pthread_join(tid[t], NULL);
        else run_job(&jobs[t]);
    }
    return failed;
}

int pk_abi_version(void) { return 2; }
