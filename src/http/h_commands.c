/*
 * h_commands.c - POST /tracking/impresiones and /tracking/conversiones.
 *
 * body -> validate (domain) -> event -> committer (group commit) -> 202.
 * The connection is parked (http_park) while the event is made durable; the
 * committer thread's completion marks it ready and wakes its loop, and the
 * 202 is only ever sent after the fsync.
 * Idempotency: a client id names the stream "impresion:<id>"; appending
 * expects no such stream. On conflict the stored event is compared with
 * the command: the same payload gets the first answer again (and nothing
 * is appended), a different one gets 409.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>

#include "core/jsonw.h"
#include "core/log.h"
#include "core/timeutil.h"
#include "core/uuid.h"
#include "core/xmalloc.h"
#include "http/http_internal.h"

/* Bodies above BODY_MAX but below this are read and discarded for a clean 413. */
#define DRAIN_MAX (16u * 1024 * 1024)

static void on_committed(struct commit_req *cr)
{
    struct req *r = cr->arg;
    const struct http_deps *d = &r->srv->deps;
    if (cr->status == ERR_OK && d->committer != NULL && d->projector != NULL) {
        projector_feed(d->projector, cr->out.position, cr->ev.recorded_at_us, r->cmd);
    }
    http_parked_ready(r);
}

static enum MHD_Result reply_accepted(struct req *r, const char *id, int64_t position)
{
    struct buf b;
    struct jsonw w;
    buf_init(&b, 0);
    jsonw_init(&w, &b);
    jsonw_obj_open(&w);
    jsonw_kstr(&w, "status", "EN_QUEUED");
    jsonw_kstr(&w, "id", id);
    if (position > 0) {     /* 0: queued on the bus, no event yet */
        jsonw_kint(&w, "position", position);
    }
    jsonw_obj_close(&w);
    enum MHD_Result ret = http_reply(r, MHD_HTTP_ACCEPTED, &b);
    buf_fini(&b);
    return ret;
}

static enum MHD_Result finish(struct req *r)
{
    struct commit_req *cr = &r->creq;
    struct http_metrics *m = &r->srv->m;
    if (cr->status == ERR_OK) {
        counter_add(&m->stored[r->cmd->kind], 1);
        return reply_accepted(r, r->cmd->id, cr->out.position);
    }
    if (cr->status == ERR_CONFLICT) {
        struct tracking stored;
        struct err e;
        err_clear(&e);
        if (cr->existing_data == NULL ||
            tracking_from_json(r->cmd->kind, cr->existing_data, strlen(cr->existing_data), &stored,
                               &e) != ERR_OK) {
            log_error("stored event does not decode", "stream=%s err=\"%s\"", r->stream_id, e.msg);
            r->retry_after = 1;
            return http_reply_error(r, MHD_HTTP_SERVICE_UNAVAILABLE,
                                    "stored event for this id is unreadable", NULL);
        }
        if (tracking_same_payload(&stored, r->cmd)) {
            counter_add(&m->rejected[REJ_DUPLICATE], 1);
            return reply_accepted(r, stored.id, cr->out.position);
        }
        counter_add(&m->rejected[REJ_CONFLICT], 1);
        return http_reply_error(r, MHD_HTTP_CONFLICT,
                                "id already used with a different payload", "id");
    }
    r->retry_after = 1;
    return http_reply_error(r, MHD_HTTP_SERVICE_UNAVAILABLE,
                            cr->status == ERR_STATE ? "shutting down; retry"
                            : cr->errmsg[0] != '\0' && r->srv->deps.committer == NULL
                                ? cr->errmsg
                                : "event store unavailable; retry",
                            NULL);
}

static void client_address(struct MHD_Connection *conn, char *out, size_t max)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    out[0] = '\0';
    if (ci == NULL || ci->client_addr == NULL) {
        return;
    }
    const struct sockaddr *sa = ci->client_addr;
    if (sa->sa_family == AF_INET) {
        inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, out, (socklen_t)max);
    } else if (sa->sa_family == AF_INET6) {
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, out, (socklen_t)max);
    }
}

/* A header value fit to go into metadata, or NULL. */
static const char *clean_header(struct MHD_Connection *conn, const char *name)
{
    const char *v = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, name);
    if (v == NULL || v[0] == '\0' || strlen(v) > ID_MAX || !text_is_clean(v, strlen(v))) {
        return NULL;
    }
    return v;
}

/* Validated command -> event, then off to the committer. */
static enum MHD_Result submit(struct req *r)
{
    struct uuid eid;
    char eid_s[UUID_STR_LEN + 1];
    uuid_v7(&eid);
    uuid_format(&eid, eid_s);
    int64_t now = time_now_us();
    bool ts_defaulted = !r->cmd->ts_given;
    tracking_fill_defaults(r->cmd, eid_s, now);
    tracking_stream_id(r->cmd->kind, r->cmd->id, r->stream_id);

    int rc = tracking_to_json(r->cmd, &r->data);
    char client[64];
    client_address(r->conn, client, sizeof(client));
    const char *corr = clean_header(r->conn, "X-Correlation-Id");
    const char *reqid = clean_header(r->conn, "X-Request-Id");
    struct jsonw w;
    jsonw_init(&w, &r->meta);
    jsonw_obj_open(&w);
    jsonw_kstr(&w, "correlation_id", corr != NULL ? corr : r->cmd->id);
    jsonw_kstr(&w, "causation_id", r->cmd->id);
    jsonw_kstr(&w, "client", client);
    if (reqid != NULL) {
        jsonw_kstr(&w, "request_id", reqid);
    }
    jsonw_obj_close(&w);
    if (rc != ERR_OK || jsonw_status(&w) != ERR_OK) {
        return http_reply_error(r, MHD_HTTP_INTERNAL_SERVER_ERROR, "cannot encode event", NULL);
    }

    struct commit_req *cr = &r->creq;
    cr->ev.stream_id = r->stream_id;
    cr->ev.expected_version = EVSTORE_NO_STREAM;
    cr->ev.type = tracking_event_type_name(r->cmd->kind);
    cr->ev.schema_version = EVENT_SCHEMA_VERSION;
    cr->ev.event_id = eid;
    cr->ev.recorded_at_us = now;
    cr->ev.data = r->data.p;
    cr->ev.metadata = r->meta.p;
    cr->done = on_committed;
    cr->arg = r;
    atomic_store(&r->state, ST_WAITING);
    http_park(r);       /* before submitting: the completion may come at once */
    const struct http_deps *d = &r->srv->deps;
    if (d->submit_list != NULL) {
        http_plug(r->loop, cr);     /* submitted with the rest of this pass */
    } else {
        d->submit(d->submit_arg, cr, ts_defaulted);
    }
    return MHD_YES;
}

enum MHD_Result h_command(struct req *r, const char *upload, size_t *upload_size)
{
    int st = atomic_load(&r->state);
    if (st == ST_READY) {
        http_unpark(r);
        return finish(r);
    }
    if (st == ST_WAITING) {
        return MHD_YES;     /* parked: the commit is not done yet */
    }
    if (st == ST_NEW) {
        const char *cl = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND,
                                                     MHD_HTTP_HEADER_CONTENT_LENGTH);
        if (cl != NULL && strtoull(cl, NULL, 10) > DRAIN_MAX) {
            /* Far too big to be worth reading just to say 413: drop the
             * connection. Smaller excess is read and discarded below, so
             * the client gets a proper 413 (libmicrohttpd 0.9.75 closes
             * without a response if one is queued with the body unread). */
            log_debug("dropping oversized request", "content_length=%s", cl);
            return MHD_NO;
        }
        atomic_store(&r->state, ST_BODY);
    }
    if (*upload_size > 0) {
        if (!r->too_big && buf_append(&r->body, upload, *upload_size) != ERR_OK) {
            r->too_big = true;
            buf_fini(&r->body);
        }
        *upload_size = 0;
        return MHD_YES;
    }
    enum MHD_Result denied;
    if (http_refuse_draining(r, &denied) || http_authorize(r, &denied) != ERR_OK) {
        return denied;      /* after the body was read: MHD then answers cleanly */
    }
    if (r->srv->deps.submit == NULL) {
        return http_not_here(r);
    }
    if (r->too_big) {
        counter_add(&r->srv->m.rejected[REJ_INVALID], 1);
        return http_reply_error(r, MHD_HTTP_CONTENT_TOO_LARGE, "body larger than 65536 bytes",
                                "body");
    }
    struct err e;
    err_clear(&e);
    if (r->cmd == NULL) {
        r->cmd = xmalloc(sizeof(*r->cmd));     /* only commands pay for its 4 KiB */
    }
    if (tracking_parse_command(r->route.kind, r->body.p ? r->body.p : "", r->body.len, r->cmd,
                               &e) != ERR_OK) {
        counter_add(&r->srv->m.rejected[REJ_INVALID], 1);
        return http_reply_error(r, MHD_HTTP_BAD_REQUEST, e.msg, e.field);
    }
    return submit(r);
}
