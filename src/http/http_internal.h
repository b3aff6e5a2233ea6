/*
 * http_internal.h - what the HTTP handler files share: the per-request
 * context and the response helpers. Not a public interface.
 */
#ifndef RASTRO_HTTP_INTERNAL_H
#define RASTRO_HTTP_INTERNAL_H

#include <microhttpd.h>
#include <stdatomic.h>
#include <stdbool.h>

#include "core/buf.h"
#include "domain/tracking.h"
#include "http/router.h"
#include "http/server.h"
#include "proj/projector.h"
#include "read/readmodel.h"
#include "store/committer.h"

#define BODY_MAX (64 * 1024)

enum req_state { ST_NEW = 0, ST_BODY, ST_WAITING, ST_READY };

struct http_server {
    struct MHD_Daemon *d;
    struct http_deps deps;
    pthread_mutex_t pool_mu;
    struct readmodel **pool;
    size_t pool_n, pool_cap;
    atomic_int suspended;
    int64_t started_us;
};

struct req {
    struct http_server *srv;
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
};

/* Queues a JSON response; takes the contents of body. */
enum MHD_Result http_reply(struct req *r, unsigned status, struct buf *body);
/* {"error": msg, "field": field (omitted when NULL)} */
enum MHD_Result http_reply_error(struct req *r, unsigned status, const char *msg,
                                 const char *field);
/* Suspends the connection (no worker thread waits) and counts it. */
void http_suspend(struct req *r);
/* Resumes it; from any thread. */
void http_resume(struct req *r);

enum MHD_Result h_command(struct req *r, const char *upload, size_t *upload_size);
enum MHD_Result h_query(struct req *r);
enum MHD_Result h_health(struct req *r);

/* Read-model connection pool for the query threads. */
struct readmodel *http_rm_get(struct http_server *s, struct err *e);
void http_rm_put(struct http_server *s, struct readmodel *rm);

#endif
