/*
 * projector.h - keeps the read models up to date from the event store, on
 * its own threads, never on the request path: a batch thread at the lowest
 * priority, which takes the CPU the request path leaves, and a catch-up
 * thread at normal priority for readers waiting on a position and for a
 * backlog older than half a second (projector.c).
 *
 * It reads events after its checkpoint in batches (up to 8,192), applies
 * them to every projection in one read-model transaction that also writes
 * the new checkpoint, so a crash never counts an event twice or skips one.
 * It wakes when the bus announces a new head, and polls every 100 ms in
 * case another process appended.
 *
 * Waiters (read-your-writes: ?min_position=N) are woken when the position
 * reaches their minimum or their deadline passes; wake() runs on a
 * projector thread and must not block.
 * Thread-safety: all functions may be called from any thread.
 */
#ifndef RASTRO_PROJ_PROJECTOR_H
#define RASTRO_PROJ_PROJECTOR_H

#include <stdbool.h>
#include <stdint.h>

#include "bus/bus.h"
#include "core/err.h"
#include "read/readmodel.h"
#include "store/evstore.h"

struct projector_stats {
    int64_t position;
    int64_t applied;
    int64_t skipped;
    int64_t invalid;
    int64_t batches;
    int64_t errors;             /* failed batches, all reasons */
    int64_t errors_gap;         /* ... of which the log had a gap (a store fault) */
    int64_t read_memory;        /* live batches' events handed over by projector_feed */
    int64_t read_store;         /* ... and read back from the store */
};

struct proj_waiter {
    int64_t min_position;
    int64_t deadline_us;        /* time_mono_us() clock */
    void (*wake)(struct proj_waiter *w);
    struct proj_waiter *next;   /* projector's */
};

struct projector;

enum {
    PROJ_BULK = 1 << 0,     /* rebuild into a fresh file: big batches, indexes and
                             * statistics written once at the end */
};

/* Opens its own read-only store connection (store_spec, data_dir) and the
 * read-model writer at rm_path. Does not start the thread. */
int projector_new(const char *store_spec, const char *data_dir, const char *rm_path,
                  struct bus *bus, int flags, struct projector **out, struct err *e) WARN_UNUSED;
/* The same over a store the caller opened (e.g. the bus's, on a query
 * node); the projector takes it over. */
int projector_new_from(struct evstore *store, const char *rm_path, struct bus *bus, int flags,
                       struct projector **out, struct err *e) WARN_UNUSED;
int projector_start(struct projector *p, struct err *e) WARN_UNUSED;
/* Catches up with everything committed so far, then stops the thread and
 * wakes remaining waiters (later ones are woken at once). Idempotent. */
void projector_stop(struct projector *p);
/* Stops if needed and frees. NULL is a no-op. */
void projector_free(struct projector *p);

int64_t projector_position(struct projector *p);
/* How far behind in time, given the store's head: 0 when caught up, else
 * the time since the projector last had applied everything it could see
 * (an upper bound on the age of the oldest event not yet applied). */
int64_t projector_lag_us(struct projector *p, int64_t head);
/* Cached statistics answers the projector invalidates as it commits
 * (rmcache.h); set before projector_start. */
struct rmcache;
void projector_set_cache(struct projector *p, struct rmcache *cache);

/* The read-model index the projector writes, for query connections. */
struct rm_index *projector_rm_index(struct projector *p);
void projector_get_stats(struct projector *p, struct projector_stats *out);

/* Applies everything up to the store's head on the calling thread (used by
 * `rastro rebuild`); returns ERR_OK once caught up. */
int projector_run_to_head(struct projector *p, struct err *e) WARN_UNUSED;
/* The same, stopping at position upto (`rastro verify`). */
int projector_run_to(struct projector *p, int64_t upto, struct err *e) WARN_UNUSED;

/* Registers w; if the position already reached w->min_position, calls
 * w->wake(w) at once (on the caller's thread) instead. */
void projector_add_waiter(struct projector *p, struct proj_waiter *w);

/* position (recorded at recorded_at_us) holds t: this process's committer
 * made it durable just now. From the committer's thread, in position order;
 * the projector may use it instead of reading the store. */
void projector_feed(struct projector *p, int64_t position, int64_t recorded_at_us,
                    const struct tracking *t);

#endif
