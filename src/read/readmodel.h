/*
 * readmodel.h - the read models: SQLite tables in their own file
 * (data/readmodels.db), apart from the event store, written only by the
 * projector and read by the query API.
 *
 *   impresiones, conversiones   one row per event, keyed by position, with
 *                               indexes for by-id and per campaign /
 *                               influencer listing (newest first)
 *   stats, stats_valor          per campaign and per influencer counters and
 *                               exact per-currency money totals
 *   checkpoints                 last applied position, per projection
 *   skipped                     events a projection did not know, by type
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

#include <stdint.h>

#include "core/buf.h"
#include "core/err.h"
#include "domain/tracking.h"

enum rm_scope { SCOPE_CAMPANA = 0, SCOPE_INFLUENCER = 1 };

/* RM_BULK: a fresh file for `rastro rebuild`: no journal, no fsync, no
 * secondary indexes until rm_bulk_finish() builds them in one sort each. */
enum { RM_WRITER = 1, RM_READER = 2, RM_BULK = 3 };

struct readmodel;

int readmodel_open(const char *path, int mode, struct readmodel **out, struct err *e) WARN_UNUSED;
void readmodel_close(struct readmodel *rm);     /* NULL is a no-op */

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

/* Adds to a campaign's or influencer's counters; last_us only moves forward. */
int rm_stats_add(struct readmodel *rm, enum rm_scope scope, const char *key, int64_t d_imp,
                 int64_t d_conv, int64_t last_us, struct err *e) WARN_UNUSED;
/* Adds ticks (ten-thousandths) to a per-currency total, exactly (128-bit). */
int rm_stats_add_valor(struct readmodel *rm, enum rm_scope scope, const char *key,
                       const char *moneda, __int128 ticks, int64_t d_conv,
                       struct err *e) WARN_UNUSED;
int rm_count_skipped(struct readmodel *rm, const char *type, int64_t n, struct err *e) WARN_UNUSED;

/* ---- readers (query API); each writes a JSON document into out ---- */
/* ERR_NOTFOUND when no such id. */
int rm_query_by_id(struct readmodel *rm, enum tracking_kind kind, const char *id,
                   struct buf *out, struct err *e) WARN_UNUSED;
int rm_query_list(struct readmodel *rm, enum rm_scope scope, const char *key,
                  enum tracking_kind kind, int64_t limit, int64_t offset, struct buf *out,
                  struct err *e) WARN_UNUSED;
int rm_query_stats(struct readmodel *rm, enum rm_scope scope, const char *key,
                   struct buf *out, struct err *e) WARN_UNUSED;
/* The position the read models reflect (the projector's checkpoint). */
int rm_query_position(struct readmodel *rm, int64_t *pos, struct err *e) WARN_UNUSED;

/* Exact 128-bit money text helpers (ten-thousandths). */
void money_format(__int128 ticks, char *out, size_t max);      /* "12.5" */
int money_parse_ticks(const char *s, __int128 *out);           /* "125000" -> 125000 */
void money_ticks_text(__int128 ticks, char *out, size_t max);  /* 125000 -> "125000" */

#endif
