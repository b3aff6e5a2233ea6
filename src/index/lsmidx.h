/*
 * lsmidx.h - a log-structured multimap from a 64-bit key hash to event
 * positions, kept in its own SQLite file. It replaces random-key B-tree
 * indexes, whose every insert dirties a page (ingest falls to ~20k rows/s
 * past a million rows), wherever rastro must find an event by a random id:
 * the store's idempotency check and the read models' by-id lookups.
 *
 *   adds      go to an in-memory table (the memtable, open addressing);
 *   flush     when it holds memtable_max entries it is frozen and a
 *             background thread writes it, sorted, as a new run: a row per
 *             block of up to 240 entries, appended at the B-trees' edge;
 *   merge     when a level holds FANOUT runs they are merged (in C, block
 *             by block) into one run of the next level, so a lookup touches
 *             a handful of runs;
 *   lookups   check the memtables and every run's bloom filter (about 10
 *             bits an entry, kept in memory and in the file); only when a
 *             filter lets the key through, one read transaction (one
 *             snapshot, so a concurrent merge can never hide an entry)
 *             reads the blocks that may hold it. A key that is nowhere
 *             costs no SQL.
 *
 * Like every read model it is derived from the log: lsmidx_flushed() says
 * up to which position the file is complete, and the owner re-adds the
 * entries after it when it opens (at most two memtables' worth). Collisions
 * are possible but not computable from outside (keys are hashed with a
 * secret per-file key, lsmidx_hash): callers confirm each position against
 * the real key, and must handle any number of candidates.
 *
 * Threads: one writer thread calls add/remove/commit; find may be called
 * from any thread, each with its own struct lsmidx_reader.
 */
#ifndef RASTRO_INDEX_LSMIDX_H
#define RASTRO_INDEX_LSMIDX_H

#include <stddef.h>
#include <stdint.h>

#include "core/err.h"

struct lsmidx;
struct lsmidx_reader;

struct lsmidx_stats {
    int64_t flushed;        /* position up to which the file is complete */
    size_t memtable;        /* entries in memory (active + frozen) */
    size_t runs;
    int64_t disk_entries;
    size_t bloom_bytes;
    int64_t flushes, merges;
    int64_t file_finds;     /* lsmidx_find calls that had to read the file */
};

enum {
    LSMIDX_NO_BLOOM = 1 << 0,   /* only range reads: keep no bloom filters */
    LSMIDX_BULK = 1 << 1,       /* a rebuild into a new file: nobody waits on
                                 * lookups, so the background thread keeps
                                 * normal priority; no journal (a failed write
                                 * fails the build), lsmidx_finish() at the end */
};

/* memtable_max: entries per flush (0 = default 262144). */
int lsmidx_open(const char *path, size_t memtable_max, int flags, struct lsmidx **out,
                struct err *e) WARN_UNUSED;
/* Flushes nothing (the log has it all), stops the thread, frees. NULL ok. */
void lsmidx_close(struct lsmidx *ix);

int64_t lsmidx_flushed(struct lsmidx *ix);
/* The index's keyed hash (SipHash-2-4 with a random key kept in the file)
 * of a key: the h every other call takes. Thread-safe. */
uint64_t lsmidx_hash(const struct lsmidx *ix, const void *key, size_t n);
/* Forgets everything (the file and memory): for an index found ahead of
 * the log it is derived from. */
int lsmidx_reset(struct lsmidx *ix, struct err *e) WARN_UNUSED;

/* Writer thread only. Positions must not decrease. */
void lsmidx_add(struct lsmidx *ix, uint64_t h, int64_t pos);
struct lsmidx_entry {
    uint64_t h;
    int64_t pos;
};
/* The same for n entries, taking the lock once. */
void lsmidx_add_many(struct lsmidx *ix, const struct lsmidx_entry *v, size_t n);
/* Undoes an add that was never committed by the owner. */
void lsmidx_remove(struct lsmidx *ix, uint64_t h, int64_t pos);
/* The owner committed everything added so far, which covers every position
 * up to upto: the memtable may now be frozen and flushed in the background,
 * and upto becomes the flushed mark once it is on disk. */
void lsmidx_commit(struct lsmidx *ix, int64_t upto);

/* A per-thread lookup handle (its own SQLite connection). */
int lsmidx_reader_open(struct lsmidx *ix, struct lsmidx_reader **out, struct err *e) WARN_UNUSED;
void lsmidx_reader_close(struct lsmidx_reader *r);

/* Positions stored under h, up to max of them, in *n (which may exceed max
 * when there are more). Each stored pair comes back once. */
int lsmidx_find(struct lsmidx *ix, struct lsmidx_reader *r, uint64_t h, int64_t *out,
                size_t max, size_t *n, struct err *e) WARN_UNUSED;

/* Every position stored under h, however many (a small inline buffer,
 * the heap past it). lsmidx_hits_fini() after. */
struct lsmidx_hits {
    int64_t *v;
    size_t n;
    int64_t small[16];
};
int lsmidx_find_all(struct lsmidx *ix, struct lsmidx_reader *r, uint64_t h,
                    struct lsmidx_hits *hits, struct err *e) WARN_UNUSED;
void lsmidx_hits_fini(struct lsmidx_hits *hits);

/* A key's positions newest first, as list queries want them: skips offset,
 * writes up to limit into out and their number into *n. */
int lsmidx_range_desc(struct lsmidx *ix, struct lsmidx_reader *r, uint64_t h, int64_t offset,
                      size_t limit, int64_t *out, size_t *n, struct err *e) WARN_UNUSED;

void lsmidx_get_stats(struct lsmidx *ix, struct lsmidx_stats *out);
/* Waits until no flush or merge is pending (tests, shutdown). */
void lsmidx_quiesce(struct lsmidx *ix);
/* The end of a bulk build (LSMIDX_BULK files have no journal): waits for
 * the flusher, fails if any write failed, and syncs the file. Without
 * LSMIDX_BULK it only waits and reports nothing. */
int lsmidx_finish(struct lsmidx *ix, struct err *e) WARN_UNUSED;

#endif
