/*
 * readmodel.h - the read models: SQLite tables in their own file
 * (data/readmodels.db), apart from the event store, written only by the
 * projector and read by the query API.
 *
 *   impresiones, conversiones   one row per event, keyed by position
 *                               (appends only touch the right edge)
 *   stats                       per campaign and per influencer: counters and
 *                               exact per-currency money totals in one row
 *   stats_pending               statistics deltas of batches committed since
 *                               the last fold (one record list a batch): the
 *                               writer folds them into stats about once a
 *                               second, in key-ordered slices, and queries
 *                               add them from copies in memory (statsdelta.h),
 *                               so a batch no longer rewrites a stats page
 *                               for each key it touched
 *   stats_fold                  a fold under way: how far it has got
 *   checkpoints                 last applied position, per projection
 *   skipped                     events a projection did not know, by type
 *
 * Finding rows by id, and a campaign's or an influencer's rows newest
 * first, goes through two lsmidx files beside it (rm-<generation>.ids and
 * .lists): random-key B-tree indexes would dirty a page per event and fall
 * behind ingest long before 10 million events. Index entries are added
 * after the batch that holds their rows commits; the projector publishes
 * its position after that, so a reader waiting for a position sees both.
 * The generation (a UUID in the file's meta table) ties the index files to
 * this read-model file, so `rastro rebuild` swaps all of them at once by
 * renaming the one file.
 *
 * A connection is either the writer (one, the projector's) or a reader
 * (any number; the HTTP threads take them from a pool). WAL mode lets
 * readers see the last committed batch while the next one is written.
 * synchronous=NORMAL: a power cut may lose the last batches, never
 * consistency, and the projector re-applies from the checkpoint that
 * survived (the checkpoint lives in the same transaction as the rows).
 * Thread-safety: one struct readmodel per thread.
 */
#ifndef RASTRO_READ_READMODEL_H
#define RASTRO_READ_READMODEL_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "core/buf.h"
#include "core/err.h"
#include "domain/tracking.h"

enum rm_scope { SCOPE_CAMPANA = 0, SCOPE_INFLUENCER = 1 };

/* The tables' layout (PRAGMA user_version). 4: a key's per-currency totals
 * moved from their own table (stats_valor) into its stats row. 5:
 * stats_pending and stats_fold, statistics deltas not yet folded into stats. */
#define RM_SCHEMA_VERSION 5

/* RM_BULK: a fresh file for `rastro rebuild`: no journal and no fsync
 * until rm_bulk_finish(). */
enum { RM_WRITER = 1, RM_READER = 2, RM_BULK = 3 };

struct readmodel;
struct rm_index;        /* the lsmidx pair, shared by the writer and readers */

/* Writer and bulk: ix is NULL and the connection opens (and owns) the
 * index files, re-adding the rows they have not flushed. Readers: ix is
 * the writer's, from readmodel_index(); it must outlive them. */
int readmodel_open(const char *path, int mode, struct rm_index *ix, struct readmodel **out,
                   struct err *e) WARN_UNUSED;
void readmodel_close(struct readmodel *rm);     /* NULL is a no-op */
/* The generation (it names the index files) of the read models at path. */
int rm_file_generation(const char *path, char *out, size_t max, struct err *e) WARN_UNUSED;
/* The schema version of the read models at path; 0 when there are none. */
int rm_schema_version(const char *path, int *version, struct err *e) WARN_UNUSED;
struct rm_index *readmodel_index(struct readmodel *writer);
/* Removes index files of generations other than path's (after a rebuild
 * swapped path in; only while no server uses the folder). */
int rm_remove_stale_indexes(const char *path, struct err *e) WARN_UNUSED;
/* Waits until the index files hold everything added (rebuild, tests). */
void readmodel_index_quiesce(struct readmodel *writer);

/* ---- writer (projector) ---- */
int rm_bulk_finish(struct readmodel *rm, struct err *e) WARN_UNUSED;
int rm_begin(struct readmodel *rm, struct err *e) WARN_UNUSED;
int rm_commit(struct readmodel *rm, struct err *e) WARN_UNUSED;
void rm_rollback(struct readmodel *rm);
int rm_get_checkpoint(struct readmodel *rm, const char *projection, int64_t *pos,
                      struct err *e) WARN_UNUSED;
int rm_set_checkpoint(struct readmodel *rm, const char *projection, int64_t pos,
                      struct err *e) WARN_UNUSED;
int rm_insert_tracking(struct readmodel *rm, const struct tracking *t, int64_t position,
                       int64_t recorded_at_us, struct err *e) WARN_UNUSED;

/* Adds to a campaign's or influencer's counters (last_us only moves
 * forward) and its per-currency totals: valores is a list of deltas in
 * money.h's form, sorted by currency ("" for none), summed exactly. The
 * live writer records the delta in the open batch (stats_pending at
 * rm_commit; folded into stats about once a second, and when it closes);
 * RM_BULK upserts the stats row at once. */
int rm_stats_add(struct readmodel *rm, enum rm_scope scope, const char *key, int64_t d_imp,
                 int64_t d_conv, int64_t last_us, const char *valores, size_t valores_len,
                 struct err *e) WARN_UNUSED;
/* Whether the live writer's pending statistics should be folded into
 * stats now: 0 no, 1 yes (a fold is under way, a second has passed, or
 * many keys are pending), 2 urgently (memory: 65,536 keys pending). */
int rm_fold_due(struct readmodel *rm);
/* One slice of a fold (started if none is under way), in a transaction of
 * its own, not inside an open batch; *more when the fold has slices left.
 * Batches may run between slices. */
int rm_fold_step(struct readmodel *rm, bool *more, struct err *e) WARN_UNUSED;
/* Folds everything pending (the writer does when it closes). */
int rm_fold(struct readmodel *rm, struct err *e) WARN_UNUSED;
int rm_count_skipped(struct readmodel *rm, const char *type, int64_t n, struct err *e) WARN_UNUSED;

/* ---- readers (query API); each writes a JSON document into out ---- */
/* One read transaction around the queries of a request: one snapshot (a
 * list's total and its page agree) and one WAL read lock instead of one per
 * statement. rm_read_end() after. */
int rm_read_begin(struct readmodel *rm, struct err *e) WARN_UNUSED;
void rm_read_end(struct readmodel *rm);
/* ERR_NOTFOUND when no such id. */
int rm_query_by_id(struct readmodel *rm, enum tracking_kind kind, const char *id,
                   struct buf *out, struct err *e) WARN_UNUSED;
int rm_query_list(struct readmodel *rm, enum rm_scope scope, const char *key,
                  enum tracking_kind kind, int64_t limit, int64_t offset, struct buf *out,
                  struct err *e) WARN_UNUSED;
int rm_query_stats(struct readmodel *rm, enum rm_scope scope, const char *key,
                   struct buf *out, struct err *e) WARN_UNUSED;
/* Rows in impresiones and conversiones (kept per batch) and statistics
 * rows (as of the last fold: new keys count up to a second late). */
int rm_query_rows(struct readmodel *rm, int64_t *imp, int64_t *conv, int64_t *stats,
                  struct err *e) WARN_UNUSED;
/* The index files' paths (for sizes). */
void rm_index_paths(const struct rm_index *ix, const char **ids, const char **lists);

/* The position the read models reflect (the projector's checkpoint). */
int rm_query_position(struct readmodel *rm, int64_t *pos, struct err *e) WARN_UNUSED;

/*
 * Checks the read models at live_path against the log: holds one snapshot,
 * calls build(upto) to rebuild fresh read models up to that snapshot's
 * checkpoint (writing their path into fresh_path), compares every table
 * row by row, writes each difference and a per-table count and checksum to
 * out, and sets *diffs. Memory stays flat. Defined in rm_verify.c.
 */
int rm_verify(const char *live_path,
              int (*build)(int64_t upto, char *fresh_path, size_t max, void *arg, struct err *e),
              void *arg, FILE *out, int64_t *diffs, struct err *e) WARN_UNUSED;

/* For rm_verify: when the live read models (connection live, inside its
 * snapshot) hold pending statistics, writes their stats plus what is
 * pending into a temporary table live_stats of dst, the table a rebuild's
 * stats must equal; *pending says how many batches were pending (0: none,
 * nothing written). */
struct sqlite3;
int rm_stats_with_pending(struct sqlite3 *live, struct sqlite3 *dst, int64_t *pending,
                          struct err *e) WARN_UNUSED;

#endif
