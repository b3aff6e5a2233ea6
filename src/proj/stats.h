/*
 * stats.h - campaign and influencer statistics, kept incrementally.
 *
 * A batch of events is folded into an in-memory accumulator (O(1) per
 * event: a hash lookup and a few additions), then flushed as one delta
 * per campaign and influencer touched (rm_stats_add), inside the
 * projector's transaction: a live writer keeps the batch's deltas pending
 * and folds them into the stats table about once a second, a rebuild
 * upserts them at the end (readmodel.h). Nothing is ever recomputed by
 * rescanning. Money is summed
 * per currency in 128-bit ten-thousandths, never across currencies and
 * never in floating point. Not thread-safe.
 */
#ifndef RASTRO_PROJ_STATS_H
#define RASTRO_PROJ_STATS_H

#include <stdbool.h>
#include <stdint.h>

#include "domain/tracking.h"
#include "read/readmodel.h"

struct stats_acc;

struct stats_acc *stats_acc_new(void);
void stats_acc_free(struct stats_acc *a);      /* NULL is a no-op */

/* Folds one impression or conversion into both scopes (campaign, and
 * influencer when the event names one). recorded_at_us is the event's
 * store time, which becomes ultima_actualizacion. */
void stats_acc_apply(struct stats_acc *a, const struct tracking *t, int64_t recorded_at_us);

/*
 * The same in parts, for a rebuild, which holds every campaign and
 * influencer at once (half a million entries: each lookup was two cache
 * misses and a seventh of the rebuild's CPU). The names' hashes are
 * computed where the event is decoded (thread-safe), and the applier
 * prefetches, a few events ahead, first the slots (stage 1) and then,
 * once those are in cache, the entries they point at (stage 2).
 */
struct stats_hint {
    uint64_t campana, influencer;
};
void stats_acc_hint(const struct stats_acc *a, const struct tracking *t, struct stats_hint *h);
void stats_acc_prefetch(const struct stats_acc *a, const struct tracking *t,
                        const struct stats_hint *h, int stage);
void stats_acc_apply_hinted(struct stats_acc *a, const struct tracking *t, int64_t recorded_at_us,
                            const struct stats_hint *h);

/* Calls fn for each (scope, key) with a delta (a key may come more than
 * once: one entry per currency). */
void stats_acc_each_key(const struct stats_acc *a,
                        void (*fn)(void *arg, enum rm_scope scope, const char *key), void *arg);

/* Writes every delta to the read models and empties the accumulator. */
int stats_acc_flush(struct stats_acc *a, struct readmodel *rm, struct err *e) WARN_UNUSED;
void stats_acc_clear(struct stats_acc *a);

/* For tests: the accumulated delta (false if nothing for that key). */
bool stats_acc_get(const struct stats_acc *a, enum rm_scope scope, const char *key,
                   int64_t *imp, int64_t *conv, int64_t *last_us);
bool stats_acc_get_valor(const struct stats_acc *a, enum rm_scope scope, const char *key,
                         const char *moneda, __int128 *ticks);

#endif
