/*
 * idindex.h - an in-memory multimap from a 64-bit key hash to positions.
 *
 * The SQLite event store uses it to find a stream's events without a
 * random-key B-tree in the commit path (such a B-tree dirties one page per
 * row and falls to ~20k rows/s past a million rows). It is derived from the
 * log and rebuilt when the store opens. Several positions may share a hash:
 * callers confirm each candidate against the real key. Open addressing with
 * linear probing; 16 bytes a slot, grown at 70% load. Not thread-safe.
 */
#ifndef RASTRO_INDEX_IDINDEX_H
#define RASTRO_INDEX_IDINDEX_H

#include <stddef.h>
#include <stdint.h>

struct idindex;

struct idindex *idindex_new(size_t expected);
void idindex_free(struct idindex *ix);              /* NULL is a no-op */
void idindex_add(struct idindex *ix, uint64_t h, int64_t pos);
/* Removes one (h, pos) pair if present. */
void idindex_remove(struct idindex *ix, uint64_t h, int64_t pos);
/* Writes up to max positions stored under h into out; returns how many
 * there are in all (may exceed max). */
size_t idindex_find(const struct idindex *ix, uint64_t h, int64_t *out, size_t max);
size_t idindex_count(const struct idindex *ix);
/* Calls cb for every entry (h as stored: a hash of 0 reads back as 1). */
void idindex_each(const struct idindex *ix, void (*cb)(uint64_t h, int64_t pos, void *arg),
                  void *arg);
size_t idindex_bytes(const struct idindex *ix);

#endif
