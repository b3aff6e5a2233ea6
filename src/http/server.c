/*
 * server.c - see server.h. libmicrohttpd 0.9.75 notes that shaped this:
 *  - rastro runs libmicrohttpd's event loops itself (one daemon per
 *    --threads, all accepting on one listening socket): MHD's own thread
 *    calls epoll_wait again with its full timeout whenever one call returned
 *    exactly 128 events (MAX_EVENTS), so 128 or 256 clients sending at once
 *    could stall every one of them until the idle timeout (60 s). MHD_run()
 *    never blocks; the loop here waits on MHD's epoll fd with poll() and the
 *    timeout MHD_get_timeout() gives.
 *  - No response is queued on the first call of the access handler (before
 *    the per-request context exists); doing so makes MHD answer
 *    "Connection: close" to everything and throughput falls sevenfold.
 *  - Our own router decodes the path segment by segment (an id may hold
 *    %2F), so MHD's unescaping is replaced by a no-op and query-string
 *    values are decoded by router.c too.
 *  - MHD zeroes a connection's whole memory pool after every request, and
 *    the pool is what bounds a request's line and headers (431 beyond it;
 *    a Cookie header takes twice its size, MHD keeps a parsed copy), so it
 *    is --max-header-kib, 16 KiB unless set: at MHD's 32 KiB default the
 *    memset was 7 % of the HTTP thread's samples and durable POSTs ran 7-14 %
 *    slower than at 8 KiB (three same-minute triples; 16 KiB 0-5 % below 8).
 *    Request bodies are buffered by rastro, not in the pool.
 *  - A command waiting for its commit is parked, not suspended: the access
 *    handler returns without an answer and libmicrohttpd calls it again on
 *    every pass of the loop (the connection stays on its ready list, and a
 *    connection timeout of 0 puts it on the list it visits every pass)
 *    until the commit's completion has set ST_READY and woken the loop.
 *    Suspending cost two epoll_ctl calls a request (MHD removes the socket
 *    from its epoll set and adds it back); parked, impression POSTs went
 *    +8 % on average (+1 to +16 % in eight pairs). The loop sleeps while only parked commands are waiting (a
 *    pass that did nothing we can see), so parking never spins.
 *  - MHD_stop_daemon() must not run while connections are suspended (only
 *    queries waiting for a position still are): the service drains
 *    (http_drain: nothing new is suspended), then stops the committer and
 *    the projector, which resumes every suspended connection and completes
 *    every parked command.
 *  - MHD_quiesce_daemon() is not used: the loops stop first, then each
 *    daemon is stopped and closes its own copy (dup) of the listening socket.
 */
#include "http/server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/jsonw.h"
#include "core/log.h"
#include "core/timeutil.h"
#include "core/xmalloc.h"
#include "http/auth.h"
#include "http/http_internal.h"

static enum route_label route_label(const struct req *r)
{
    if (r->route_rc != ERR_OK && r->route_rc != ROUTE_BAD_METHOD) {
        return RL_OTHER;
    }
    switch (r->route.id) {
    case R_CMD: return r->route.kind == KIND_IMPRESION ? RL_CMD_IMP : RL_CMD_CONV;
    case R_HEALTH:
    case R_LIVE:
    case R_READY:
    case R_Q_ESTADO: return RL_HEALTH;
    case R_Q_HEALTH: return RL_Q_HEALTH;
    case R_Q_BYID: return RL_BYID;
    case R_Q_LIST: return RL_LIST;
    case R_Q_STATS: return RL_STATS;
    case R_METRICS: return RL_METRICS;
    default: return RL_OTHER;
    }
}

static enum status_label status_label(unsigned status)
{
    switch (status) {
    case 200: return SL_200;
    case 202: return SL_202;
    case 400: return SL_400;
    case 404: return SL_404;
    case 405: return SL_405;
    case 409: return SL_409;
    case 413: return SL_413;
    case 500: return SL_500;
    case 503: return SL_503;
    default: return SL_OTHER;
    }
}

static const char *const route_names[RL__COUNT] = {
    [RL_CMD_IMP] = "POST /tracking/impresiones",
    [RL_CMD_CONV] = "POST /tracking/conversiones",
    [RL_HEALTH] = "/tracking/health",
    [RL_Q_HEALTH] = "/tracking/queries/health",
    [RL_BYID] = "/tracking/queries/{kind}/{id}",
    [RL_LIST] = "/tracking/queries/{owner}/{id}/{kind}",
    [RL_STATS] = "/tracking/queries/{owner}/{id}/estadisticas",
    [RL_METRICS] = "/metrics",
    [RL_OTHER] = "other",
};

const char *http_route_name(enum route_label l)
{
    return (unsigned)l < RL__COUNT ? route_names[l] : "other";
}

/* A client-sent id header fit for logs, or NULL. */
static const char *id_header(struct MHD_Connection *conn, const char *name)
{
    const char *v = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, name);
    if (v == NULL || v[0] == '\0' || strlen(v) > ID_MAX || !text_is_clean(v, strlen(v))) {
        return NULL;
    }
    for (const char *c = v; *c != '\0'; c++) {
        if (*c == '"' || *c == '\\' || *c == ' ') {
            return NULL;        /* keep log lines parseable */
        }
    }
    return v;
}

/* One logfmt line per request at debug level; server errors at warn, with
 * the request and correlation ids the client sent (X-Request-Id,
 * X-Correlation-Id) so a line can be matched to a client's call. */
static void log_request(struct req *r, unsigned status)
{
    enum log_level lvl = status >= 500 ? LOG_WARN : LOG_DEBUG;
    if (!log_enabled(lvl)) {
        return;
    }
    const char *rid = id_header(r->conn, "X-Request-Id");
    const char *cid = id_header(r->conn, "X-Correlation-Id");
    log_write(lvl, status >= 500 ? "request failed" : "request",
              "route=\"%s\" status=%u request_id=%s correlation_id=%s",
              http_route_name(route_label(r)), status,
              rid ? rid : "-", cid ? cid : "-");
}

enum MHD_Result http_reply(struct req *r, unsigned status, struct buf *body)
{
    return http_reply_typed(r, status, body, "application/json; charset=utf-8");
}

enum MHD_Result http_reply_typed(struct req *r, unsigned status, struct buf *body,
                                 const char *content_type)
{
    counter_add(&r->srv->m.requests[route_label(r)][status_label(status)], 1);
    r->loop->progress++;
    log_request(r, status);
    size_t len = body->len;
    char *p = buf_take(body);
    struct MHD_Response *resp = MHD_create_response_from_buffer(len, p, MHD_RESPMEM_MUST_FREE);
    if (resp == NULL) {
        free(p);
        return MHD_NO;
    }
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, content_type);
    if (r->pos_header >= 0) {
        char v[32];
        snprintf(v, sizeof(v), "%lld", (long long)r->pos_header);
        MHD_add_response_header(resp, "X-Rastro-Position", v);
    }
    if (r->retry_after > 0) {
        char v[16];
        snprintf(v, sizeof(v), "%d", r->retry_after);
        MHD_add_response_header(resp, MHD_HTTP_HEADER_RETRY_AFTER, v);
    }
    const char *rid = id_header(r->conn, "X-Request-Id");
    if (rid != NULL) {
        MHD_add_response_header(resp, "X-Request-Id", rid);     /* echoed for tracing */
    }
    if (r->close_conn) {
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONNECTION, "close");
    }
    if (r->www_authenticate) {
        MHD_add_response_header(resp, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer realm=\"rastro\"");
    }
    if (status == MHD_HTTP_METHOD_NOT_ALLOWED && r->route.allow != NULL) {
        MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, r->route.allow);
    }
    enum MHD_Result ret = MHD_queue_response(r->conn, status, resp);
    MHD_destroy_response(resp);
    return ret;
}

static int required_scope(const struct route *rt)
{
    switch (rt->id) {
    case R_CMD: return SCOPE_INGEST;
    case R_Q_BYID:
    case R_Q_LIST:
    case R_Q_STATS:
    case R_Q_ESTADO: return SCOPE_READ;
    case R_METRICS: return SCOPE_ADMIN;
    default: return 0;      /* health probes need no key */
    }
}

int http_authorize(struct req *r, enum MHD_Result *ret)
{
    const struct auth *a = r->srv->deps.auth;
    int need = required_scope(&r->route);
    if (a == NULL || need == 0) {
        return ERR_OK;
    }
    const char *hdr = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND,
                                                  MHD_HTTP_HEADER_AUTHORIZATION);
    int have = auth_scopes(a, hdr);
    if (have & need) {
        return ERR_OK;
    }
    if (have == 0) {
        r->www_authenticate = true;
        *ret = http_reply_error(r, MHD_HTTP_UNAUTHORIZED,
                                "missing or unknown API key (Authorization: Bearer KEY)", NULL);
    } else {
        *ret = http_reply_error(r, MHD_HTTP_FORBIDDEN, "this API key lacks the scope "
                                "this route needs", NULL);
    }
    return ERR_STATE;
}

enum MHD_Result http_reply_error(struct req *r, unsigned status, const char *msg,
                                 const char *field)
{
    struct buf b;
    struct jsonw w;
    buf_init(&b, 0);
    jsonw_init(&w, &b);
    jsonw_obj_open(&w);
    jsonw_kstr(&w, "error", msg);
    if (field != NULL && field[0] != '\0') {
        jsonw_kstr(&w, "field", field);
    }
    jsonw_obj_close(&w);
    enum MHD_Result ret = http_reply(r, status, &b);
    buf_fini(&b);
    return ret;
}

void http_suspend(struct req *r)
{
    atomic_fetch_add(&r->srv->suspended, 1);
    MHD_suspend_connection(r->conn);
}

/* Makes the loop run MHD again soon: one eventfd write until it has. */
static void wake_loop(struct http_loop *l)
{
    if (!atomic_exchange(&l->wake_pending, true)) {
        uint64_t one = 1;
        ssize_t n = write(l->wake_fd, &one, sizeof(one));
        (void)n;        /* fails only if the counter would overflow: it is awake */
    }
}

void http_resume(struct req *r)
{
    struct http_server *s = r->srv;
    struct http_loop *l = r->loop;
    /* In external-loop mode libmicrohttpd signals nothing on resume (it
     * drops MHD_USE_ITC): the loop is woken here, once for a whole batch
     * of resumes. */
    MHD_resume_connection(r->conn);
    atomic_fetch_sub(&s->suspended, 1);
    wake_loop(l);
}

/* The connection's memory pool (MHD_OPTION_CONNECTION_MEMORY_LIMIT). */
static size_t header_bytes(const struct http_server *s)
{
    return (size_t)(s->deps.max_header_kib ? s->deps.max_header_kib : 16u) * 1024u;
}

/* The idle timeout every connection has (MHD_OPTION_CONNECTION_TIMEOUT). */
static unsigned idle_timeout_s(const struct http_server *s)
{
    return s->deps.idle_timeout_s ? s->deps.idle_timeout_s : 60u;
}

void http_park(struct req *r)
{
    atomic_fetch_add(&r->srv->suspended, 1);
    r->parked = true;
    r->loop->parked++;
    /* waiting for the store is not the client idling: no idle timeout
     * meanwhile (a suspended connection had none either) */
    MHD_set_connection_option(r->conn, MHD_CONNECTION_OPTION_TIMEOUT, 0u);
}

static void req_free(struct req *r);

void http_parked_ready(struct req *r)
{
    struct http_server *s = r->srv;
    struct http_loop *l = r->loop;
    /* after this exchange the loop may answer and reuse r at any moment */
    if (atomic_exchange(&r->state, ST_READY) == ST_ABANDONED) {
        commit_req_fini(&r->creq);      /* nobody else holds it any more */
        req_free(r);
        return;
    }
    wake_loop(l);
    atomic_fetch_sub(&s->suspended, 1);
}

void http_unpark(struct req *r)
{
    if (r->parked) {
        r->parked = false;
        r->loop->parked--;
        MHD_set_connection_option(r->conn, MHD_CONNECTION_OPTION_TIMEOUT, idle_timeout_s(r->srv));
    }
}

void http_plug(struct http_loop *l, struct commit_req *cr)
{
    cr->next = NULL;
    if (l->plug_tail != NULL) {
        l->plug_tail->next = cr;
    } else {
        l->plug_head = cr;
    }
    l->plug_tail = cr;
}

/* Submits what this pass parked: one lock and one wake-up of the
 * committer instead of one a command. */
static void unplug(struct http_loop *l)
{
    struct commit_req *head = l->plug_head;
    if (head != NULL) {
        l->plug_head = l->plug_tail = NULL;
        l->srv->deps.submit_list(l->srv->deps.submit_arg, head);
    }
}

int http_suspended(struct http_server *s)
{
    return atomic_load(&s->suspended);
}

struct readmodel *http_rm_get(struct http_server *s, struct err *e)
{
    struct readmodel *rm = NULL;
    pthread_mutex_lock(&s->pool_mu);
    if (s->pool_n > 0) {
        rm = s->pool[--s->pool_n];
    }
    pthread_mutex_unlock(&s->pool_mu);
    if (rm == NULL && readmodel_open(s->deps.rm_path, RM_READER, projector_rm_index(s->deps.projector), &rm, e) != ERR_OK) {
        return NULL;
    }
    return rm;
}

void http_rm_put(struct http_server *s, struct readmodel *rm)
{
    pthread_mutex_lock(&s->pool_mu);
    if (s->pool_n == s->pool_cap) {
        s->pool_cap = s->pool_cap ? s->pool_cap * 2 : 8;
        s->pool = xrealloc(s->pool, s->pool_cap * sizeof(*s->pool));
    }
    s->pool[s->pool_n++] = rm;
    pthread_mutex_unlock(&s->pool_mu);
}

int64_t http_store_head(struct http_server *s)
{
    if (s->deps.head != NULL) {
        return s->deps.head(s->deps.head_arg);
    }
    return s->deps.committer != NULL ? committer_head(s->deps.committer) : 0;
}

/* Routes this node's roles do not serve. */
static bool served_here(const struct http_server *s, enum route_id id)
{
    switch (id) {
    case R_CMD: return s->deps.submit != NULL;
    case R_Q_HEALTH:
    case R_Q_BYID:
    case R_Q_LIST:
    case R_Q_STATS:
    case R_Q_ESTADO: return s->deps.projector != NULL;
    default: return true;
    }
}

enum MHD_Result http_not_here(struct req *r)
{
    char msg[200];
    snprintf(msg, sizeof(msg), "this node does not serve %s (its roles: %s)",
             r->route.id == R_CMD ? "commands" : "queries",
             r->srv->deps.roles != NULL ? r->srv->deps.roles : "?");
    return http_reply_error(r, MHD_HTTP_NOT_FOUND, msg, NULL);
}

/* A request's context, from the loop's spares when it has one: a POST
 * otherwise cost a dozen allocations (the context, its three buffers
 * growing, the 3.7 KiB command), ~9 % of the HTTP thread in malloc and free. */
static struct req *req_new(struct http_loop *l)
{
    struct req *r;
    if (l->n_spare > 0) {
        r = l->spare[--l->n_spare];
        struct buf body = r->body, data = r->data, meta = r->meta;
        struct tracking *cmd = r->cmd;
        memset(r, 0, sizeof(*r));
        r->body = body;
        r->data = data;
        r->meta = meta;
        r->cmd = cmd;
        buf_reset(&r->body);
        buf_reset(&r->data);
        buf_reset(&r->meta);
    } else {
        r = xcalloc(1, sizeof(*r));
        buf_init(&r->body, BODY_MAX);
        buf_init(&r->data, 0);
        buf_init(&r->meta, 0);
    }
    r->loop = l;
    r->srv = l->srv;
    r->pos_header = -1;
    return r;
}

/* Largest buffer a spare keeps: bigger ones (a 64 KiB body) are let go. */
#define SPARE_BUF_MAX 4096

static void req_free(struct req *r)
{
    free(r->cmd);
    buf_fini(&r->body);
    buf_fini(&r->data);
    buf_fini(&r->meta);
    free(r);
}

/* The request is over: its context goes back to the loop's spares (or is
 * freed when they are full, or it holds big buffers). */
static void req_done(struct req *r)
{
    commit_req_fini(&r->creq);
    struct http_loop *l = r->loop;
    if (l->n_spare == ARRAY_LEN(l->spare) || r->body.alloc > SPARE_BUF_MAX ||
        r->data.alloc > SPARE_BUF_MAX || r->meta.alloc > SPARE_BUF_MAX) {
        req_free(r);
        return;
    }
    l->spare[l->n_spare++] = r;
}

static enum MHD_Result on_access(void *cls, struct MHD_Connection *conn, const char *url,
                                 const char *method, const char *version,
                                 const char *upload, size_t *upload_size, void **con_cls)
{
    (void)version;
    struct req *r = *con_cls;
    if (r == NULL) {
        r = req_new(cls);
        r->conn = conn;
        r->loop->progress++;
        r->route_rc = route_match(method, url, &r->route);
        atomic_fetch_add_explicit(&r->srv->m.in_flight, 1, memory_order_relaxed);
        *con_cls = r;
        return MHD_YES;
    }
    if (r->route_rc == ERR_OK && r->route.id == R_CMD) {
        return h_command(r, upload, upload_size);
    }
    if (*upload_size > 0) {
        *upload_size = 0;           /* a body where none belongs: read and drop it */
        return MHD_YES;
    }
    switch (r->route_rc) {
    case ERR_OK:
        break;
    case ROUTE_BAD_METHOD:
        return http_reply_error(r, MHD_HTTP_METHOD_NOT_ALLOWED, "method not allowed on this path",
                                NULL);
    case ROUTE_BAD_PATH:
        return http_reply_error(r, MHD_HTTP_BAD_REQUEST, "malformed percent-escape in path",
                                "path");
    default:
        return http_reply_error(r, MHD_HTTP_NOT_FOUND, "not found", NULL);
    }
    enum MHD_Result denied;
    if (http_refuse_draining(r, &denied)) {
        return denied;
    }
    if (http_authorize(r, &denied) != ERR_OK) {
        return denied;
    }
    if (!served_here(r->srv, r->route.id)) {
        return http_not_here(r);
    }
    if (r->route.id == R_HEALTH || r->route.id == R_Q_HEALTH || r->route.id == R_LIVE ||
        r->route.id == R_READY || r->route.id == R_Q_ESTADO) {
        return h_health(r);
    }
    if (r->route.id == R_METRICS) {
        return h_metrics(r);
    }
    return h_query(r);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    (void)cls;
    (void)conn;
    (void)toe;
    struct req *r = *con_cls;
    if (r == NULL) {
        return;
    }
    *con_cls = NULL;
    struct http_server *s = r->srv;
    struct http_loop *l = r->loop;
    l->progress++;
    atomic_fetch_sub_explicit(&s->m.in_flight, 1, memory_order_relaxed);
    if (r->parked) {
        /* ended (reset, or the server stopping) before its commit was answered */
        r->parked = false;
        l->parked--;
        int expect = ST_WAITING;
        if (atomic_compare_exchange_strong(&r->state, &expect, ST_ABANDONED)) {
            /* r is the completion's now, which frees it: not touched again */
            atomic_fetch_sub(&s->suspended, 1);
            counter_add(&s->m.unanswered, 1);
            return;
        }
    }
    req_done(r);
}

/* MHD decodes %XX before we see the URL unless told not to. */
static size_t no_unescape(void *cls, struct MHD_Connection *c, char *s)
{
    (void)cls;
    (void)c;
    return strlen(s);
}

static int parse_listen(const char *listen, struct sockaddr_storage *ss, bool *v6,
                        struct err *e)
{
    char host[256];
    const char *colon = strrchr(listen, ':');
    if (colon == NULL || colon[1] == '\0') {
        return err_set(e, ERR_INVALID, "--listen wants ADDR:PORT, got '%s'", listen);
    }
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (*end != '\0' || port < 0 || port > 65535) {
        return err_set(e, ERR_INVALID, "bad port in --listen '%s'", listen);
    }
    size_t hl = (size_t)(colon - listen);
    if (hl >= sizeof(host)) {
        return err_set(e, ERR_INVALID, "--listen address too long");
    }
    memcpy(host, listen, hl);
    host[hl] = '\0';
    memset(ss, 0, sizeof(*ss));
    if (host[0] == '[' && hl > 2 && host[hl - 1] == ']') {
        host[hl - 1] = '\0';
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)ss;
        a->sin6_family = AF_INET6;
        a->sin6_port = htons((uint16_t)port);
        if (inet_pton(AF_INET6, host + 1, &a->sin6_addr) != 1) {
            return err_set(e, ERR_INVALID, "bad IPv6 address in --listen '%s'", listen);
        }
        *v6 = true;
        return ERR_OK;
    }
    struct sockaddr_in *a = (struct sockaddr_in *)ss;
    a->sin_family = AF_INET;
    a->sin_port = htons((uint16_t)port);
    if (hl == 0) {
        a->sin_addr.s_addr = htonl(INADDR_ANY);
    } else if (inet_pton(AF_INET, strcmp(host, "localhost") == 0 ? "127.0.0.1" : host,
                         &a->sin_addr) != 1) {
        return err_set(e, ERR_INVALID, "bad IPv4 address in --listen '%s'", listen);
    }
    *v6 = false;
    return ERR_OK;
}

static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    (void)cls;
    char msg[512];
    vsnprintf(msg, sizeof(msg), fmt, ap);
    size_t n = strlen(msg);
    while (n > 0 && msg[n - 1] == '\n') {
        msg[--n] = '\0';
    }
    log_warn("libmicrohttpd", "detail=\"%s\"", msg);
}

/* The longest a loop sleeps without being told to wake: a bound on any
 * wake-up missed, not a tick anything waits for. */
#define LOOP_MAX_WAIT_MS 1000
#define PARKED_WAIT_MS 2
/* How long stopping waits for answers in the making. */
#define STOP_GRACE_MS 1000

static void *loop_main(void *arg)
{
    struct http_loop *l = arg;
    pthread_setname_np(pthread_self(), "rastro-http");
    struct pollfd pf[2] = {
        { .fd = l->epoll_fd, .events = POLLIN },
        { .fd = l->wake_fd, .events = POLLIN },
    };
    while (!atomic_load_explicit(&l->srv->stopping, memory_order_acquire)) {
        /* cleared before MHD_run, so a resume after this point wakes us
         * again and one before it is seen by this MHD_run */
        if (atomic_exchange(&l->wake_pending, false)) {
            uint64_t v;
            ssize_t n = read(l->wake_fd, &v, sizeof(v));
            (void)n;        /* nonblocking: empty is fine */
        }
        unsigned progress = l->progress;
        MHD_run(l->d);      /* epoll_wait with timeout 0: never blocks */
        unplug(l);
        MHD_UNSIGNED_LONG_LONG to = 0;
        int ms = LOOP_MAX_WAIT_MS;
        if (MHD_get_timeout(l->d, &to) == MHD_YES && to < (MHD_UNSIGNED_LONG_LONG)ms) {
            ms = (int)to;
        }
        if (ms == 0) {
            /* MHD says "run again now" while anything is parked (a parked
             * connection stays on its ready list); once a pass has done
             * nothing we can see, wait for the wake-up the commit sends */
            if (l->parked == 0 || l->progress != progress) {
                continue;
            }
            ms = PARKED_WAIT_MS;
        }
        if (poll(pf, 2, ms) < 0 && errno != EINTR) {
            log_error("HTTP event loop: poll failed", "err=\"%s\"", strerror(errno));
            usleep(10000);
        }
    }
    return NULL;
}

/* One daemon in external-loop mode; listen_fd < 0: it binds ss itself. */
static struct MHD_Daemon *start_daemon(struct http_loop *l, const struct sockaddr_storage *ss,
                                       bool v6, int listen_fd, unsigned conn_limit)
{
    struct http_server *s = l->srv;
    unsigned flags = MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG |
                     (v6 ? MHD_USE_IPv6 : 0);
    struct MHD_OptionItem where[2] = {
        listen_fd < 0 ? (struct MHD_OptionItem){ MHD_OPTION_SOCK_ADDR, 0, (void *)ss }
                      : (struct MHD_OptionItem){ MHD_OPTION_LISTEN_SOCKET, listen_fd, NULL },
        { MHD_OPTION_END, 0, NULL },
    };
    /* the logger first: options before it would log through MHD's own */
    return MHD_start_daemon(flags, 0, NULL, NULL, on_access, l,
                            MHD_OPTION_EXTERNAL_LOGGER, mhd_log, NULL,
                            MHD_OPTION_ARRAY, where,
                            MHD_OPTION_NOTIFY_COMPLETED, on_completed, s,
                            MHD_OPTION_UNESCAPE_CALLBACK, no_unescape, NULL,
                            MHD_OPTION_CONNECTION_TIMEOUT, idle_timeout_s(s),
                            MHD_OPTION_CONNECTION_LIMIT, conn_limit,
                            MHD_OPTION_CONNECTION_MEMORY_LIMIT, header_bytes(s),
                            MHD_OPTION_LISTEN_BACKLOG_SIZE, (unsigned)1024,
                            MHD_OPTION_END);
}

/* Stops the loops' threads, then their daemons (each closes its copy of
 * the listening socket). */
static void stop_loops(struct http_server *s)
{
    /* answers in the making (a commit just completed, a response still
     * being sent) go out before the loops stop; a client trickling its
     * request holds this up for at most STOP_GRACE_MS */
    for (int i = 0; i < STOP_GRACE_MS && (atomic_load(&s->suspended) > 0 ||
                                          atomic_load(&s->m.in_flight) > 0); i++) {
        usleep(1000);
    }
    atomic_store_explicit(&s->stopping, true, memory_order_release);
    for (unsigned i = 0; i < s->n_loops; i++) {
        struct http_loop *l = &s->loops[i];
        if (l->running) {
            wake_loop(l);
            pthread_join(l->thread, NULL);
            l->running = false;
        }
    }
    for (unsigned i = 0; i < s->n_loops; i++) {
        struct http_loop *l = &s->loops[i];
        if (l->d != NULL) {
            MHD_stop_daemon(l->d);
            l->d = NULL;
        }
        while (l->n_spare > 0) {
            req_free(l->spare[--l->n_spare]);
        }
        if (l->wake_fd >= 0) {
            close(l->wake_fd);
            l->wake_fd = -1;
        }
    }
}

static void free_server(struct http_server *s)
{
    for (size_t i = 0; i < s->pool_n; i++) {
        readmodel_close(s->pool[i]);
    }
    free(s->pool);
    free(s->loops);
    pthread_mutex_destroy(&s->pool_mu);
    free(s);
}

int http_start(const char *listen, const struct http_deps *deps, struct http_server **out,
               struct err *e)
{
    struct sockaddr_storage ss;
    bool v6 = false;
    int rc = parse_listen(listen, &ss, &v6, e);
    if (rc != ERR_OK) {
        return rc;
    }
    struct http_server *s = xcalloc(1, sizeof(*s));
    s->deps = *deps;
    s->started_us = time_mono_us();
    pthread_mutex_init(&s->pool_mu, NULL);
    static const double query_bounds[] = { 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025,
                                           0.005, 0.01, 0.025, 0.1, 0.5 };
    for (int i = 0; i < QL__COUNT; i++) {
        histogram_init(&s->m.query_seconds[i], query_bounds, ARRAY_LEN(query_bounds));
    }
    unsigned threads = deps->threads;
    if (threads == 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        threads = n > 0 ? (unsigned)n : 2;
    }
    /* Each loop takes its share of the connection limit (as libmicrohttpd's
     * own thread pool did). */
    unsigned limit = deps->max_connections ? deps->max_connections : 10000u;
    unsigned share = (limit + threads - 1) / threads;
    s->loops = xcalloc(threads, sizeof(*s->loops));
    s->n_loops = threads;
    for (unsigned i = 0; i < threads; i++) {
        s->loops[i].srv = s;
        s->loops[i].wake_fd = -1;       /* what stop_loops may close */
    }
    int listen_fd = -1;
    for (unsigned i = 0; i < threads; i++) {
        struct http_loop *l = &s->loops[i];
        int fd = -1;
        if (i > 0 && (fd = fcntl(listen_fd, F_DUPFD_CLOEXEC, 0)) < 0) {
            err_set(e, ERR_IO, "cannot share the listening socket: %s", strerror(errno));
            goto fail;
        }
        l->d = start_daemon(l, &ss, v6, fd, share);
        if (l->d == NULL) {
            if (fd >= 0) {
                close(fd);
            }
            if (i == 0) {
                err_set(e, ERR_IO, "cannot listen on %s (address in use or not available?)",
                        listen);
            } else {
                err_set(e, ERR_IO, "cannot start HTTP event loop %u", i + 1);
            }
            goto fail;
        }
        const union MHD_DaemonInfo *di = MHD_get_daemon_info(l->d, MHD_DAEMON_INFO_EPOLL_FD);
        l->epoll_fd = di != NULL ? di->epoll_fd : -1;
        if (i == 0) {
            di = MHD_get_daemon_info(l->d, MHD_DAEMON_INFO_LISTEN_FD);
            listen_fd = di != NULL ? di->listen_fd : -1;
        }
        l->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (l->epoll_fd < 0 || listen_fd < 0 || l->wake_fd < 0) {
            err_set(e, ERR_IO, "cannot set up HTTP event loop %u", i + 1);
            goto fail;
        }
    }
    for (unsigned i = 0; i < threads; i++) {
        struct http_loop *l = &s->loops[i];
        if (pthread_create(&l->thread, NULL, loop_main, l) != 0) {
            err_set(e, ERR_IO, "cannot start HTTP thread %u", i + 1);
            goto fail;
        }
        l->running = true;
    }
    *out = s;
    return ERR_OK;
fail:
    stop_loops(s);
    free_server(s);
    return e->code;
}

void http_drain(struct http_server *s)
{
    if (s != NULL) {
        atomic_store(&s->draining, true);
    }
}

bool http_refuse_draining(struct req *r, enum MHD_Result *ret)
{
    if (!atomic_load(&r->srv->draining) ||
        (r->route_rc == ERR_OK && r->route.id == R_LIVE)) {
        return false;
    }
    r->retry_after = 1;
    r->close_conn = true;
    *ret = http_reply_error(r, MHD_HTTP_SERVICE_UNAVAILABLE, "shutting down; retry", NULL);
    return true;
}

void http_stop(struct http_server *s)
{
    if (s == NULL) {
        return;
    }
    stop_loops(s);
    free_server(s);
}
