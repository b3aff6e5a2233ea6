/*
 * h_queries.c - GET /tracking/queries/... and the health endpoints.
 *
 * Every query answer carries X-Rastro-Position: the position the read
 * models reflected before the query ran (the projector publishes its
 * position only after committing, so the data seen is at least that new).
 * ?min_position=N suspends the connection until the projector reaches N or
 * wait_ms passes (then 503 + Retry-After); no worker thread waits.
 */
#include <stddef.h>
#include <string.h>

#include "core/jsonw.h"
#include "core/log.h"
#include "core/timeutil.h"
#include "http/http_internal.h"
#include "proj/projections.h"
#include "read/rmcache.h"

#define LIMIT_DEFAULT 100
#define LIMIT_MAX 1000
#define WAIT_DEFAULT_MS 2000
#define WAIT_MAX_MS 60000

static const char *arg(struct req *r, const char *name)
{
    return MHD_lookup_connection_value(r->conn, MHD_GET_ARGUMENT_KIND, name);
}

static void on_position(struct proj_waiter *w)
{
    struct req *r = (struct req *)((char *)w - offsetof(struct req, waiter));
    atomic_store(&r->state, ST_READY);
    http_resume(r);
}

static enum MHD_Result run_query(struct req *r)
{
    struct http_server *s = r->srv;
    int64_t limit = 0, offset = 0;
    if (r->route.id == R_Q_LIST) {
        if (query_int(arg(r, "limit"), LIMIT_DEFAULT, 1, LIMIT_MAX, &limit) != ERR_OK) {
            return http_reply_error(r, MHD_HTTP_BAD_REQUEST,
                                    "limit must be an integer from 1 to 1000", "limit");
        }
        if (query_int(arg(r, "offset"), 0, 0, INT64_MAX / 2, &offset) != ERR_OK) {
            return http_reply_error(r, MHD_HTTP_BAD_REQUEST,
                                    "offset must be an integer >= 0", "offset");
        }
    }
    r->pos_header = projector_position(s->deps.projector);
    /* statistics and records by id may come from memory (rmcache.h): a
     * cached answer is the read models' answer at this position or later */
    struct rmcache *cache = r->route.id != R_Q_LIST ? s->deps.cache : NULL;
    int ns = r->route.id == R_Q_STATS ? RMC_STATS(r->route.scope) : RMC_BYID(r->route.kind);
    enum query_label ql = r->route.id == R_Q_BYID ? QL_BYID
                          : r->route.id == R_Q_LIST ? QL_LIST : QL_STATS;
    uint64_t gen = 0;
    if (cache != NULL) {
        struct buf hit;
        buf_init(&hit, 0);
        int64_t c0 = time_mono_us();
        if (rmcache_get(cache, ns, r->route.key, &hit)) {
            histogram_observe(&s->m.query_seconds[ql], (double)(time_mono_us() - c0) / 1e6);
            enum MHD_Result ret = http_reply(r, MHD_HTTP_OK, &hit);
            buf_fini(&hit);
            return ret;
        }
        buf_fini(&hit);
        gen = rmcache_generation(cache, ns, r->route.key);     /* before the snapshot */
    }
    struct err e;
    err_clear(&e);
    struct readmodel *rm = http_rm_get(s, &e);
    if (rm == NULL) {
        log_error("cannot open read models", "err=\"%s\"", e.msg);
        r->retry_after = 1;
        return http_reply_error(r, MHD_HTTP_SERVICE_UNAVAILABLE, "read models unavailable", NULL);
    }
    struct buf out;
    buf_init(&out, 0);
    int64_t t0 = time_mono_us();
    int rc = rm_read_begin(rm, &e);
    switch (rc != ERR_OK ? R_NONE : r->route.id) {
    case R_NONE:
        break;
    case R_Q_BYID:
        rc = rm_query_by_id(rm, r->route.kind, r->route.key, &out, &e);
        break;
    case R_Q_LIST:
        rc = rm_query_list(rm, r->route.scope, r->route.key, r->route.kind, limit, offset, &out, &e);
        break;
    default:
        rc = rm_query_stats(rm, r->route.scope, r->route.key, &out, &e);
        break;
    }
    rm_read_end(rm);
    http_rm_put(s, rm);
    histogram_observe(&s->m.query_seconds[ql], (double)(time_mono_us() - t0) / 1e6);
    enum MHD_Result ret;
    if (rc == ERR_OK) {
        if (cache != NULL) {
            rmcache_put(cache, ns, r->route.key, out.p, out.len, gen);
        }
        ret = http_reply(r, MHD_HTTP_OK, &out);
    } else if (rc == ERR_NOTFOUND) {
        ret = http_reply_error(r, MHD_HTTP_NOT_FOUND, e.msg, NULL);
    } else {
        log_error("query failed", "err=\"%s\"", e.msg);
        r->retry_after = 1;
        ret = http_reply_error(r, MHD_HTTP_SERVICE_UNAVAILABLE, "read models unavailable", NULL);
    }
    buf_fini(&out);
    return ret;
}

enum MHD_Result h_query(struct req *r)
{
    struct projector *p = r->srv->deps.projector;
    int st = atomic_load(&r->state);
    if (st == ST_WAITING) {
        return MHD_YES;
    }
    if (st == ST_READY) {
        if (projector_position(p) < r->min_position) {
            r->pos_header = projector_position(p);
            r->retry_after = 1;
            return http_reply_error(r, MHD_HTTP_SERVICE_UNAVAILABLE,
                                    "read models have not reached min_position yet", "min_position");
        }
        return run_query(r);
    }
    if (query_int(arg(r, "min_position"), 0, 0, INT64_MAX, &r->min_position) != ERR_OK) {
        return http_reply_error(r, MHD_HTTP_BAD_REQUEST, "min_position must be an integer >= 0",
                                "min_position");
    }
    if (query_int(arg(r, "wait_ms"), WAIT_DEFAULT_MS, 0, WAIT_MAX_MS, &r->wait_ms) != ERR_OK) {
        return http_reply_error(r, MHD_HTTP_BAD_REQUEST, "wait_ms must be an integer from 0 to 60000",
                                "wait_ms");
    }
    if (projector_position(p) >= r->min_position) {
        return run_query(r);
    }
    r->waiter.min_position = r->min_position;
    r->waiter.deadline_us = time_mono_us() + r->wait_ms * 1000;
    r->waiter.wake = on_position;
    atomic_store(&r->state, ST_WAITING);
    http_suspend(r);
    projector_add_waiter(p, &r->waiter);
    return MHD_YES;
}

/* /tracking/queries/estado: store position, each projection's position
 * and lag, sizes, uptime, version. */
static void estado(struct http_server *s, struct jsonw *w, int64_t head, int64_t pos)
{
    struct projector_stats ps;
    projector_get_stats(s->deps.projector, &ps);
    jsonw_kint(w, "store_position", head);
    jsonw_kint(w, "store_size_bytes",
               s->deps.committer != NULL ? committer_store_bytes(s->deps.committer) : 0);
    jsonw_key(w, "projections");
    jsonw_arr_open(w);
    for (size_t i = 0; i < proj_count; i++) {
        jsonw_obj_open(w);
        jsonw_kstr(w, "name", proj_names[i]);
        jsonw_kint(w, "position", pos);
        jsonw_kint(w, "lag_events", head > pos ? head - pos : 0);
        jsonw_kint(w, "lag_ms", projector_lag_us(s->deps.projector, head) / 1000);
        jsonw_obj_close(w);
    }
    jsonw_arr_close(w);
    jsonw_kint(w, "events_applied", ps.applied);
    jsonw_kint(w, "events_skipped", ps.skipped + ps.invalid);
    jsonw_kint(w, "projection_errors", ps.errors);
}

enum MHD_Result h_health(struct req *r)
{
    struct http_server *s = r->srv;
    int64_t head = http_store_head(s);
    int64_t pos = s->deps.projector != NULL ? projector_position(s->deps.projector) : head;
    unsigned status = MHD_HTTP_OK;
    struct buf b;
    struct jsonw w;
    buf_init(&b, 0);
    jsonw_init(&w, &b);
    jsonw_obj_open(&w);
    if (r->route.id == R_READY) {
        /* ready: the store answers (the committer runs) and the read models
         * are within ready_max_lag events of it */
        int64_t lag = head > pos ? head - pos : 0;
        bool ready = lag <= s->deps.ready_max_lag &&
                     (s->deps.ready == NULL || s->deps.ready(s->deps.ready_arg));
        status = ready ? MHD_HTTP_OK : MHD_HTTP_SERVICE_UNAVAILABLE;
        if (!ready) {
            r->retry_after = 1;
        }
        jsonw_kstr(&w, "status", ready ? "ready" : "not ready");
        jsonw_kint(&w, "lag_events", lag);
        jsonw_kint(&w, "max_lag_events", s->deps.ready_max_lag);
    } else {
        jsonw_kstr(&w, "status", "ok");
    }
    jsonw_kstr(&w, "version", RASTRO_VERSION);
    if (r->route.id == R_Q_HEALTH) {
        r->pos_header = pos;
        jsonw_kint(&w, "position", pos);
        jsonw_kint(&w, "store_position", head);
        jsonw_kint(&w, "lag_events", head > pos ? head - pos : 0);
        jsonw_kint(&w, "lag_ms", projector_lag_us(s->deps.projector, head) / 1000);
    } else if (r->route.id == R_Q_ESTADO) {
        r->pos_header = pos;
        estado(s, &w, head, pos);
    } else if (r->route.id == R_HEALTH) {
        jsonw_kint(&w, "store_position", head);
        jsonw_kint(&w, "pending_commits",
                   s->deps.committer != NULL ? committer_pending(s->deps.committer) : 0);
    }
    jsonw_kint(&w, "uptime_seconds", (time_mono_us() - s->started_us) / 1000000);
    jsonw_obj_close(&w);
    enum MHD_Result ret = http_reply(r, status, &b);
    buf_fini(&b);
    return ret;
}
