/*
 * metrics.c - see metrics.h.
 */
#include "core/metrics.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void histogram_init(struct histogram *h, const double *bounds, size_t n)
{
    memset(h, 0, sizeof(*h));
    h->bounds = bounds;
    h->nbounds = n < HIST_MAX_BUCKETS ? n : HIST_MAX_BUCKETS;
}

void histogram_observe(struct histogram *h, double v)
{
    size_t i = 0;
    while (i < h->nbounds && v > h->bounds[i]) {
        i++;
    }
    atomic_fetch_add_explicit(&h->bucket[i], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&h->count, 1, memory_order_relaxed);
    double micro = v * 1e6;
    if (micro > 0 && micro < 1.8e19) {
        atomic_fetch_add_explicit(&h->sum_micro, (uint64_t)llround(micro), memory_order_relaxed);
    }
}

int metrics_header(struct buf *b, const char *name, const char *type, const char *help)
{
    return buf_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* The shortest text that reads back as the same double. */
static void fmt_double(double v, char *out, size_t max)
{
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(out, max, "%.*g", prec, v);
        if (strtod(out, NULL) == v) {
            return;
        }
    }
}

int metrics_sample(struct buf *b, const char *name, const char *labels, double v)
{
    char num[40];
    fmt_double(v, num, sizeof(num));
    if (labels != NULL && labels[0] != '\0') {
        return buf_printf(b, "%s{%s} %s\n", name, labels, num);
    }
    return buf_printf(b, "%s %s\n", name, num);
}

int metrics_counters(struct buf *b, const char *name, const char *help, const char *key,
                     const struct metric_u64 *vals, size_t n)
{
    int rc = metrics_header(b, name, "counter", help);
    for (size_t i = 0; i < n && rc == ERR_OK; i++) {
        char lb[128];
        snprintf(lb, sizeof(lb), "%s=\"%s\"", key, vals[i].label);
        rc = metrics_sample_u64(b, name, lb, vals[i].v);
    }
    return rc;
}

int metrics_sample_u64(struct buf *b, const char *name, const char *labels, uint64_t v)
{
    if (labels != NULL && labels[0] != '\0') {
        return buf_printf(b, "%s{%s} %" PRIu64 "\n", name, labels, v);
    }
    return buf_printf(b, "%s %" PRIu64 "\n", name, v);
}

int metrics_histogram(struct buf *b, const char *name, const char *labels,
                      const struct histogram *h)
{
    const char *sep = labels != NULL && labels[0] != '\0' ? "," : "";
    const char *lb = labels != NULL ? labels : "";
    uint64_t cum = 0;
    int rc = ERR_OK;
    for (size_t i = 0; i <= h->nbounds && rc == ERR_OK; i++) {
        cum += atomic_load_explicit(&h->bucket[i], memory_order_relaxed);
        if (i < h->nbounds) {
            char le[40];
            fmt_double(h->bounds[i], le, sizeof(le));
            rc = buf_printf(b, "%s_bucket{%s%sle=\"%s\"} %" PRIu64 "\n", name, lb, sep, le, cum);
        } else {
            rc = buf_printf(b, "%s_bucket{%s%sle=\"+Inf\"} %" PRIu64 "\n", name, lb, sep, cum);
        }
    }
    char sum[40];
    fmt_double((double)atomic_load_explicit(&h->sum_micro, memory_order_relaxed) / 1e6, sum,
               sizeof(sum));
    if (rc == ERR_OK) {
        rc = labels != NULL && labels[0] != '\0'
                 ? buf_printf(b, "%s_sum{%s} %s\n%s_count{%s} %" PRIu64 "\n", name, labels,
                              sum, name, labels, cum)
                 : buf_printf(b, "%s_sum %s\n%s_count %" PRIu64 "\n", name, sum, name, cum);
    }
    return rc;
}
