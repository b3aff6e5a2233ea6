/*
 * statsdelta.h - statistics added by committed batches but not yet folded
 * into the stats table (readmodel.c).
 *
 * Writing a batch's statistics into the stats table rewrote a page for
 * nearly every key it touched: with the benchmark's 110,000 keys, ~1,100
 * random 4 KiB pages every 50 ms batch, and a third of the projector's
 * time. Instead each batch appends its deltas as one record list (one
 * blob, sequential pages) to stats_pending in its own transaction, and the
 * writer folds everything pending into stats about once a second. Queries
 * add the pending delta of their key from this map, a copy in memory of
 * what stats_pending holds.
 *
 * Records: the serialized form of one delta, as stats_pending stores it:
 *   scope (1 byte) | key length (2, LE) | key | impressions (8, LE) |
 *   conversions (8, LE) | last (8, LE) | valores length (4, LE) | valores
 * with valores in money.h's list form.
 *
 * Not thread-safe: readmodel.c guards the map with a lock.
 */
#ifndef RASTRO_READ_STATSDELTA_H
#define RASTRO_READ_STATSDELTA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/buf.h"
#include "core/err.h"

struct sdelta_rec {
    int scope;
    const char *key;        /* not NUL-terminated: klen bytes */
    size_t klen;
    int64_t imp, conv, last;
    const char *valores;
    size_t vlen;
};

/* Appends one record to b. */
int sdelta_rec_put(struct buf *b, const struct sdelta_rec *r) WARN_UNUSED;
/* Calls fn for each record of the list p[0..n); ERR_IO if it is corrupt,
 * else fn's first non-zero return or ERR_OK. */
int sdelta_rec_each(const char *p, size_t n, int (*fn)(void *arg, const struct sdelta_rec *r),
                    void *arg) WARN_UNUSED;

struct sdelta;

struct sdelta *sdelta_new(void);
void sdelta_free(struct sdelta *d);        /* NULL is a no-op */
void sdelta_clear(struct sdelta *d);
size_t sdelta_count(const struct sdelta *d);   /* keys */
/* Adds r to its key's delta (counters summed, last the later, valores
 * merged exactly). ERR_TOOBIG if a sum overflows, ERR_IO if r's valores
 * do not parse. */
int sdelta_add(struct sdelta *d, const struct sdelta_rec *r) WARN_UNUSED;
/* The pending delta of (scope, key), or NULL; valid until the map changes. */
const struct sdelta_rec *sdelta_get(const struct sdelta *d, int scope, const char *key);
/* Every key's delta in (scope, key) order, the stats table's (a fold
 * visits each page once): a malloc'd array of *n pointers into the map,
 * valid until it changes (sdelta_retire excepted). */
const struct sdelta_rec **sdelta_sorted(const struct sdelta *d, size_t *n);
/* r (from sdelta_get or sdelta_sorted) has been folded: sdelta_get no
 * longer returns it. */
void sdelta_retire(struct sdelta *d, const struct sdelta_rec *r);
/* Orders (scope, key) as the stats table's primary key does (BINARY). */
int sdelta_key_cmp(int sa, const char *ka, size_t la, int sb, const char *kb, size_t lb);

/* The scope and a key's first SDELTA_PREFIX_BYTES bytes as two big-endian
 * integers, zero-padded. Where two prefixes differ they order as
 * sdelta_key_cmp does (a missing byte counts as 0, below or equal to any
 * byte); equal prefixes need the full comparison. Sorts of many keys
 * compare these and so seldom touch the keys themselves. */
#define SDELTA_PREFIX_BYTES 15
struct sdelta_prefix {
    uint64_t p0, p1;
};
struct sdelta_prefix sdelta_key_prefix(int scope, const char *key, size_t klen);
/* -1, 0 or 1. */
int sdelta_prefix_cmp(const struct sdelta_prefix *a, const struct sdelta_prefix *b);

#endif
