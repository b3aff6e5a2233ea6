/*
 * idindex.h - an in-memory multimap from a 64-bit key hash to positions:
 * the memtable of lsmidx.
 *
 * Chained: a bucket array points into an entry array; each entry links to
 * the previous entry of its bucket. Adding is O(1) even when one key holds
 * thousands of positions (a busy campaign), and a key's positions come back
 * newest first (insertion order reversed), which is the order list queries
 * want. Several keys may share a hash: callers confirm each position
 * against the real key. Not thread-safe.
 */
#ifndef RASTRO_INDEX_IDINDEX_H
#define RASTRO_INDEX_IDINDEX_H

#include <stddef.h>
#include <stdint.h>

struct idindex;

/* expected: entries to size the bucket array for (it does not grow). */
struct idindex *idindex_new(size_t expected);
void idindex_free(struct idindex *ix);              /* NULL is a no-op */
void idindex_add(struct idindex *ix, uint64_t h, int64_t pos);
/* Removes one (h, pos) pair if present (it stays allocated, unlinked). */
void idindex_remove(struct idindex *ix, uint64_t h, int64_t pos);
/* Writes up to max positions stored under h into out, newest first;
 * returns how many there are in all (may exceed max). */
size_t idindex_find(const struct idindex *ix, uint64_t h, int64_t *out, size_t max);
/* The same, skipping the first `skip` of them. */
size_t idindex_find_from(const struct idindex *ix, uint64_t h, size_t skip, int64_t *out,
                         size_t max);
size_t idindex_count(const struct idindex *ix);
size_t idindex_bytes(const struct idindex *ix);
/* Calls cb for every live entry. */
void idindex_each(const struct idindex *ix, void (*cb)(uint64_t h, int64_t pos, void *arg),
                  void *arg);

#endif
