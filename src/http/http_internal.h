/*
 * http_internal.h - what the HTTP handler files share: the per-request
 * context and the response helpers. Not a public interface.
 */
#ifndef RASTRO_HTTP_INTERNAL_H
#define RASTRO_HTTP_INTERNAL_H

#include <microhttpd.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>

#include "core/buf.h"
#include "core/metrics.h"
#include "domain/tracking.h"
#include "http/router.h"
#include "http/server.h"
#include "proj/projector.h"
#include "read/readmodel.h"
#include "store/committer.h"

#define BODY_MAX (64 * 1024)

/* ST_ABANDONED: the connection ended while its command was being
 * committed; the commit's completion frees the context (http_parked_ready). */
enum req_state { ST_NEW = 0, ST_BODY, ST_WAITING, ST_READY, ST_ABANDONED };

/* Label values of rastro_http_requests_total. */
enum route_label {
    RL_CMD_IMP, RL_CMD_CONV, RL_HEALTH, RL_Q_HEALTH, RL_BYID, RL_LIST, RL_STATS, RL_METRICS,
    RL_OTHER, RL__COUNT
};
enum status_label {
    SL_200, SL_202, SL_400, SL_404, SL_405, SL_409, SL_413, SL_500, SL_503, SL_OTHER, SL__COUNT
};
enum reject_reason { REJ_DUPLICATE, REJ_CONFLICT, REJ_INVALID, REJ__COUNT };
enum query_label { QL_BYID, QL_LIST, QL_STATS, QL__COUNT };

/* The route label as metrics and logs spell it. */
const char *http_route_name(enum route_label l);

struct http_metrics {
    _Atomic uint64_t requests[RL__COUNT][SL__COUNT];
    _Atomic int64_t in_flight;
    _Atomic uint64_t unanswered;            /* parked commands whose connection ended */
    _Atomic uint64_t stored[2];             /* by tracking_kind, answered 202 as new */
    _Atomic uint64_t rejected[REJ__COUNT];
    struct histogram query_seconds[QL__COUNT];
};

/* One event loop: a libmicrohttpd daemon run by a thread of ours. */
struct http_loop {
    struct http_server *srv;
    struct MHD_Daemon *d;
    int epoll_fd;                   /* the daemon's (MHD_DAEMON_INFO_EPOLL_FD) */
    int wake_fd;                    /* eventfd: resumes and http_stop() wake the loop */
    atomic_bool wake_pending;       /* wake_fd was written since the loop last looked */
    pthread_t thread;
    bool running;                   /* the thread was started */
    /* finished requests kept for the next ones, with their buffers and
     * command struct (only this loop's thread touches them) */
    struct req *spare[64];
    unsigned n_spare;
    unsigned parked;                /* commands waiting for their commit (http_park) */
    unsigned progress;              /* requests begun, answered or ended: a pass did work */
    /* commands parked during this pass, submitted together after it
     * (deps.submit_list) */
    struct commit_req *plug_head, *plug_tail;
};

struct http_server {
    struct http_loop *loops;
    unsigned n_loops;
    atomic_bool stopping;           /* the loops end */
    atomic_bool draining;           /* http_drain() was called */
    struct http_deps deps;
    pthread_mutex_t pool_mu;
    struct readmodel **pool;
    size_t pool_n, pool_cap;
    atomic_int suspended;
    int64_t started_us;
    struct http_metrics m;
};

struct req {
    struct http_server *srv;
    struct http_loop *loop;         /* the event loop serving this connection */
    struct MHD_Connection *conn;
    struct route route;
    _Atomic int state;
    /* commands */
    struct buf body;
    bool too_big;
    struct tracking *cmd;           /* the parsed command (owned) */
    struct buf data;
    struct buf meta;
    char stream_id[STREAM_ID_MAX];
    struct commit_req creq;
    /* queries */
    int64_t min_position;
    int64_t wait_ms;
    struct proj_waiter waiter;
    /* response extras */
    int64_t pos_header;             /* X-Rastro-Position, when >= 0 */
    int retry_after;                /* Retry-After seconds, when > 0 */
    int route_rc;                   /* route_match's answer */
    bool www_authenticate;          /* a 401: say how to authenticate */
    bool close_conn;                /* answer with Connection: close */
    bool parked;                    /* http_park()ed and not yet answered */
};

/* With API keys configured: ERR_OK if the request may proceed, else the
 * 401/403 answer has been queued and *ret holds MHD's result. */
int http_authorize(struct req *r, enum MHD_Result *ret);

/* Queues a JSON response; takes the contents of body. */
enum MHD_Result http_reply(struct req *r, unsigned status, struct buf *body);
/* The same with another content type. */
enum MHD_Result http_reply_typed(struct req *r, unsigned status, struct buf *body,
                                 const char *content_type);
/* {"error": msg, "field": field (omitted when NULL)} */
enum MHD_Result http_reply_error(struct req *r, unsigned status, const char *msg,
                                 const char *field);
/* Suspends the connection (no worker thread waits) and counts it. */
void http_suspend(struct req *r);
/* Resumes it; from any thread. */
void http_resume(struct req *r);
/* Parks a command while the committer makes it durable: the handler
 * returns without an answer and is called again each time the loop runs
 * until http_parked_ready() (state ST_READY); then it answers and calls
 * http_unpark(). Unlike suspending, this costs libmicrohttpd no epoll_ctl
 * pair (see server.c). Loop thread only. */
void http_park(struct req *r);
/* The commit's completion, from any thread: sets ST_READY and wakes the
 * loop, or frees the context if its connection has ended meanwhile. */
void http_parked_ready(struct req *r);
/* The parked command is being answered (loop thread). */
void http_unpark(struct req *r);
/* Holds a parked command's commit request until the loop's pass ends. */
void http_plug(struct http_loop *l, struct commit_req *cr);

/* While draining: the 503 every request gets (true), or false to go on. */
bool http_refuse_draining(struct req *r, enum MHD_Result *ret);

enum MHD_Result h_command(struct req *r, const char *upload, size_t *upload_size);
enum MHD_Result h_query(struct req *r);
enum MHD_Result h_health(struct req *r);
enum MHD_Result h_metrics(struct req *r);

/* Read-model connection pool for the query threads. */
struct readmodel *http_rm_get(struct http_server *s, struct err *e);
/* The event store's head as this node knows it (deps.head, else the
 * committer's, else 0). */
int64_t http_store_head(struct http_server *s);
/* 404 for a route this node's roles do not serve. */
enum MHD_Result http_not_here(struct req *r);
void http_rm_put(struct http_server *s, struct readmodel *rm);

#endif
