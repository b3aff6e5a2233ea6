/*
 * server.h - the HTTP front: libmicrohttpd daemons on epoll, each run by an
 * event-loop thread of ours (--threads). Command requests are parked while
 * the committer makes them durable and answered when its thread says so;
 * queries that wait for a position are suspended until the projector
 * reaches it. No thread ever blocks on a commit or a wait.
 */
#ifndef RASTRO_HTTP_SERVER_H
#define RASTRO_HTTP_SERVER_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "core/buf.h"
#include "core/err.h"
#include "proj/projector.h"
#include "store/committer.h"

/* Results of the periodic self-check (`rastro verify` inside the server),
 * kept by the app layer and rendered on /metrics. */
struct verify_stats {
    _Atomic uint64_t runs;
    _Atomic uint64_t failures;          /* runs that could not check */
    _Atomic int64_t differences;        /* of the last completed run */
    _Atomic int64_t last_run_unix;      /* seconds; 0 = never */
    _Atomic int64_t last_duration_us;
};

struct http_deps {
    /* Where commands go: committer_submit (a store) or publisher_submit_cmd
     * (a bus), as submit(submit_arg, req, ts_defaulted). NULL: this node
     * takes no commands (404). */
    void (*submit)(void *arg, struct commit_req *r, bool ts_defaulted);
    /* Optional, with the same submit_arg: a list of commands linked through
     * ->next, submitted together (each loop gathers a pass's commands).
     * Only for a submitter that ignores ts_defaulted (a store: it has the
     * first event to compare a retry with). */
    void (*submit_list)(void *arg, struct commit_req *head);
    void *submit_arg;
    struct committer *committer;    /* store metrics; NULL without a local committer */
    struct projector *projector;    /* NULL: this node serves no queries (404) */
    struct rmcache *cache;          /* statistics answers in memory; NULL: none */
    /* The event store's head (lag, readiness); NULL: the committer's. */
    int64_t (*head)(void *arg);
    void *head_arg;
    /* /health/ready also needs this (e.g. the bus connected); NULL: no. */
    bool (*ready)(void *arg);
    void *ready_arg;
    /* More /metrics text (the bus roles'); NULL: none. */
    int (*more_metrics)(struct buf *b, void *arg);
    void *more_metrics_arg;
    const char *roles;              /* for "not on this node" answers */
    const char *rm_path;            /* read-model file the query threads open */
    unsigned threads;               /* 0 = number of CPUs */
    int64_t ready_max_lag;          /* /health/ready: at most this many events behind */
    const struct verify_stats *verify;  /* NULL when the self-check is off */
    unsigned max_connections;       /* 0 = 10000 */
    const struct auth *auth;        /* API keys; NULL = no authentication */
    unsigned idle_timeout_s;        /* idle or slow connections are closed; 0 = 60 */
    unsigned max_header_kib;        /* request line + headers, KiB (larger: 431); 0 = 16 */
};

struct http_server;
struct auth;

/* listen: "ADDR:PORT" (IPv4 or [IPv6]:PORT). */
int http_start(const char *listen, const struct http_deps *deps, struct http_server **out,
               struct err *e) WARN_UNUSED;
/* From now on every request but GET /health/live is answered 503 "shutting
 * down; retry" (Retry-After: 1, Connection: close) without touching the
 * store or the read models; requests already submitted go on. Used at
 * SIGTERM instead of closing the listening socket: libmicrohttpd 0.9.75's
 * MHD_quiesce_daemon() races its own epoll loop for the listen socket and
 * the loser aborts the process (seen in CI; an open upstream defect). */
void http_drain(struct http_server *s);
/* Requests still waiting for a commit (parked) or a position (suspended). */
int http_suspended(struct http_server *s);
/* Closes everything and frees. NULL is a no-op. */
void http_stop(struct http_server *s);

#endif
