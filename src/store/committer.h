/*
 * committer.h - group commit in front of an event store.
 *
 * Request threads submit appends and return at once (the HTTP layer
 * suspends its connection); one committer thread takes everything queued,
 * appends it in one evstore transaction (one fsync), and then calls each
 * request's done() on the committer thread. While a commit is in flight new
 * requests queue up, so the batch grows with load and throughput grows with
 * concurrency, while an idle server commits a lone request at once.
 *
 * After each commit the on_commit listener (if set) learns the new head;
 * the projector uses it to wake up.
 *
 * Thread-safety: committer_submit() may be called from any thread.
 */
#ifndef RASTRO_STORE_COMMITTER_H
#define RASTRO_STORE_COMMITTER_H

#include <stdint.h>

#include "core/metrics.h"
#include "store/evstore.h"

/* What the committer counts (read with relaxed loads, from any thread). */
struct committer_metrics {
    _Atomic uint64_t appended;      /* events written */
    _Atomic uint64_t conflicts;     /* appends refused: the stream existed */
    _Atomic uint64_t failed;        /* requests failed by an I/O error */
    _Atomic uint64_t batches;
    struct histogram batch_size;    /* requests per transaction */
    struct histogram commit_seconds;    /* append + COMMIT (fsync) */
};

struct commit_req {
    struct event_in ev;         /* borrowed until done() is called */
    /* results, valid in done(): */
    int status;                 /* ERR_OK, ERR_CONFLICT, ERR_IO, ERR_STATE (shutting down) */
    struct append_out out;
    char *existing_data;        /* CONFLICT: the stream's last event's data; see _fini */
    char errmsg[256];           /* IO/STATE: why */
    void (*done)(struct commit_req *r);
    void *arg;                  /* the submitter's */
    struct commit_req *next;    /* committer's */
};

struct committer;

/* Takes ownership of s (closed by committer_free). Starts the thread. */
struct committer *committer_new(struct evstore *s, size_t max_batch);
/* Stops taking requests (later ones complete at once with ERR_STATE),
 * commits what is queued and joins the thread. Idempotent. */
void committer_stop(struct committer *c);
/* Stops if needed, closes the store, frees. NULL is a no-op. */
void committer_free(struct committer *c);

void committer_submit(struct committer *c, struct commit_req *r);
/* Submits a list linked through ->next (NULL-terminated) under one lock
 * and one wake-up: an HTTP loop hands over a pass's commands at once. */
void committer_submit_list(struct committer *c, struct commit_req *head);
void committer_set_listener(struct committer *c, void (*on_commit)(void *arg, int64_t head),
                            void *arg);
int64_t committer_head(struct committer *c);
/* Requests submitted but not yet completed. */
int64_t committer_pending(struct committer *c);

const struct committer_metrics *committer_get_metrics(struct committer *c);
/* Bytes the store takes on disk, as measured after a commit at most once
 * a second (thread-safe). */
int64_t committer_store_bytes(struct committer *c);

/* Frees what the committer attached to r (existing_data). */
void commit_req_fini(struct commit_req *r);

#endif
