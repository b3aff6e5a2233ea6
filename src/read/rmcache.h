/*
 * rmcache.h - query answers kept in memory, so a hot campaign's or
 * influencer's GET …/estadisticas, or a GET of a record by id, does not
 * open a SQLite read transaction every time.
 *
 * Entries are named by a namespace and a key: RMC_STATS + scope for the
 * statistics (which change, see below), RMC_BYID + kind for records by id
 * (which never change once written: an id is one event, appended once;
 * "not found" is never cached, since it may be found later).
 *
 * The projector invalidates a key after it commits a batch that touched
 * it and before it publishes its new position, so a cached answer is
 * always the read models' answer at the current position (X-Rastro-Position
 * and min_position stay exact). A reader that renders from SQLite may only
 * store its answer if nothing in its shard was invalidated since it took
 * the shard's generation, which it does before its snapshot: an answer
 * computed from a snapshot older than an invalidation is never stored.
 *
 * Bounded: at most max_entries answers (a shard that is full drops an
 * entry to make room). Keys are hashed with SipHash under a random key
 * (campaign names come from clients). Thread-safety: all functions may be
 * called from any thread (64 shards, a mutex each).
 */
#ifndef RASTRO_READ_RMCACHE_H
#define RASTRO_READ_RMCACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/buf.h"
#include "read/readmodel.h"

/* Namespaces: statistics by scope, records by kind. */
#define RMC_STATS(scope) ((int)(scope))
#define RMC_BYID(kind) (2 + (int)(kind))

struct rmcache;

struct rmcache *rmcache_new(size_t max_entries);
void rmcache_free(struct rmcache *c);      /* NULL is a no-op */

/* Appends the cached answer to out; false when there is none. */
bool rmcache_get(struct rmcache *c, int ns, const char *key, struct buf *out);
/* The generation to pass to rmcache_put: take it before the snapshot. */
uint64_t rmcache_generation(struct rmcache *c, int ns, const char *key);
/* Stores an answer unless the key's shard was invalidated since gen. */
void rmcache_put(struct rmcache *c, int ns, const char *key, const char *json,
                 size_t len, uint64_t gen);
/* The key's answer is stale: drop it, and refuse puts from older snapshots. */
void rmcache_invalidate(struct rmcache *c, int ns, const char *key);

struct rmcache_stats {
    uint64_t hits, misses, entries;
};
void rmcache_get_stats(struct rmcache *c, struct rmcache_stats *out);

#endif
