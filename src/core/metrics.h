/*
 * metrics.h - counters, gauges and histograms for the Prometheus text
 * exposition format, lock-free (relaxed atomics) so the hot path pays a
 * few atomic adds. Metrics are plain structs owned by the layer that
 * updates them; the HTTP layer renders them on GET /metrics.
 *
 * Histograms have fixed bucket bounds given at definition; the sum is kept
 * in integer micro-units (microseconds, or units * 1e6 for sizes) so it
 * can be added atomically.
 */
#ifndef RASTRO_CORE_METRICS_H
#define RASTRO_CORE_METRICS_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "core/buf.h"

#define HIST_MAX_BUCKETS 16

struct histogram {
    const double *bounds;           /* ascending upper bounds, without +Inf */
    size_t nbounds;
    _Atomic uint64_t bucket[HIST_MAX_BUCKETS + 1];   /* non-cumulative; last = +Inf */
    _Atomic uint64_t count;
    _Atomic uint64_t sum_micro;     /* sum of observations * 1e6 */
};

void histogram_init(struct histogram *h, const double *bounds, size_t n);
void histogram_observe(struct histogram *h, double v);

static inline void counter_add(_Atomic uint64_t *c, uint64_t n)
{
    atomic_fetch_add_explicit(c, n, memory_order_relaxed);
}

/* Exposition helpers: HELP and TYPE lines, then samples. labels may be
 * NULL or "k=\"v\",k2=\"v2\"" (already escaped). */
int metrics_header(struct buf *b, const char *name, const char *type, const char *help) WARN_UNUSED;
int metrics_sample(struct buf *b, const char *name, const char *labels, double v) WARN_UNUSED;
int metrics_sample_u64(struct buf *b, const char *name, const char *labels, uint64_t v) WARN_UNUSED;
/* A counter family with one label: the header, then name{key="label"} v
 * for each of the n values. */
struct metric_u64 {
    const char *label;
    uint64_t v;
};
int metrics_counters(struct buf *b, const char *name, const char *help, const char *key,
                     const struct metric_u64 *vals, size_t n) WARN_UNUSED;
/* Buckets, sum and count of one histogram series (header written by caller). */
int metrics_histogram(struct buf *b, const char *name, const char *labels,
                      const struct histogram *h) WARN_UNUSED;

#endif
