/*
 * evstore_js.c - see evstore_js.h.
 */
#include "dist/evstore_js.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/log.h"
#include "core/timeutil.h"
#include "core/xmalloc.h"
#include "dist/wire.h"

#define FETCH_MAX 1024
#define FETCH_WAIT_MS 50

struct js_store {
    struct evstore base;
    struct natsbus *nb;
    struct evstore *fallback;
    struct bus *heads;
    char durable[128];
    natsSubscription *sub;
    int64_t next;               /* the consumer delivers this position next */
    int64_t head_cache;
    int64_t head_at_us;
    int64_t gap_logged;         /* the last unfillable gap we warned about */
    int64_t fill_logged_us;     /* when a filled gap was last logged */
};

static int js_append(struct evstore *base, const struct event_in *ev, size_t n,
                     struct append_out *out, struct err *e)
{
    (void)base;
    (void)ev;
    (void)n;
    (void)out;
    return err_set(e, ERR_STATE, "the bus is read-only here: commands go through the api role");
}

static void drop_sub(struct js_store *s)
{
    if (s->sub != NULL) {
        natsSubscription_Destroy(s->sub);
        s->sub = NULL;
    }
}

/* (Re)creates the durable consumer at position from. */
static int place(struct js_store *s, int64_t from, struct err *e)
{
    drop_sub(s);
    jsCtx *js = natsbus_js(s->nb);
    jsErrCode je = 0;
    natsStatus st = js_DeleteConsumer(js, NB_STREAM_EVENTS, s->durable, NULL, &je);
    if (st != NATS_OK && st != NATS_NOT_FOUND) {
        return natsbus_err(e, "resetting the query consumer", st, je);
    }
    jsConsumerConfig cc;
    jsConsumerConfig_Init(&cc);
    cc.Durable = s->durable;
    cc.AckPolicy = js_AckAll;
    cc.DeliverPolicy = js_DeliverByStartSequence;
    cc.OptStartSeq = (uint64_t)(from > 0 ? from : 1);
    cc.FilterSubject = NB_SUBJ_EVT "*";
    cc.MaxAckPending = 100000;
    st = js_AddConsumer(NULL, js, NB_STREAM_EVENTS, &cc, NULL, &je);
    if (st != NATS_OK) {
        return natsbus_err(e, "creating the query consumer", st, je);
    }
    jsSubOptions so;
    jsSubOptions_Init(&so);
    so.Stream = NB_STREAM_EVENTS;
    so.Consumer = s->durable;
    st = js_PullSubscribe(&s->sub, js, NB_SUBJ_EVT "*", s->durable, NULL, &so, &je);
    if (st != NATS_OK) {
        s->sub = NULL;
        return natsbus_err(e, "subscribing to events", st, je);
    }
    s->next = from;
    int64_t h = 0;
    struct err ignore;
    if (s->heads != NULL && s->base.ops->head(&s->base, &h, &ignore) == ERR_OK) {
        bus_announce(s->heads, h);
    }
    return ERR_OK;
}

struct fill {
    evstore_cb cb;
    void *arg;
    int64_t next;
    int rc;
};

static int fill_one(const struct event_rec *ev, void *arg)
{
    struct fill *f = arg;
    if (ev->position != f->next) {
        return -1;
    }
    f->next++;
    f->rc = f->cb(ev, f->arg);
    return f->rc;
}

/* Delivers positions [from, upto) missing from what the consumer sent:
 * from the stream by sequence, else from the fallback store. Returns the
 * callback's value, or ERR_IO when a position cannot be found anywhere. */
static int fill_gap(struct js_store *s, int64_t from, int64_t upto, evstore_cb cb, void *arg,
                    struct err *e)
{
    for (int64_t p = from; p < upto; p++) {
        natsMsg *m = NULL;
        jsErrCode je = 0;
        natsStatus st = js_GetMsg(&m, natsbus_js(s->nb), NB_STREAM_EVENTS, (uint64_t)p, NULL, &je);
        if (st == NATS_OK) {
            struct event_rec rec;
            int rc = wire_event_decode(m, &rec, e) == ERR_OK && rec.position == p
                         ? cb(&rec, arg)
                         : err_set(e, ERR_IO, "event %lld on the bus does not decode",
                                   (long long)p);
            natsMsg_Destroy(m);
            if (rc != 0) {
                return rc;
            }
            continue;
        }
        if (s->fallback == NULL) {
            return err_set(e, ERR_IO, "position %lld is missing from %s and this node has no "
                           "--store to fill it from", (long long)p, NB_STREAM_EVENTS);
        }
        struct fill f = { .cb = cb, .arg = arg, .next = p, .rc = 0 };
        int64_t n = upto - p < FETCH_MAX ? upto - p : FETCH_MAX;
        int rc = evstore_read(s->fallback, p, (size_t)n, fill_one, &f, e);
        if (f.rc != 0) {
            return f.rc;
        }
        if (f.next == p) {      /* the store does not have it either (or failed) */
            return err_set(e, ERR_IO, "position %lld is missing from the bus and the store%s",
                           (long long)p, rc < 0 ? " (the store read failed)" : "");
        }
        log_warn("filled a gap in the event stream from the store", "from=%lld to=%lld",
                 (long long)p, (long long)(f.next - 1));
        p = f.next - 1;
    }
    return 0;
}

static int js_read(struct evstore *base, int64_t from, size_t max, evstore_cb cb, void *arg,
                   struct err *e)
{
    struct js_store *s = (struct js_store *)base;
    if (!natsbus_ready(s->nb)) {
        return 0;   /* nothing readable now; the projector polls again */
    }
    if (s->sub == NULL || from != s->next) {
        int rc = place(s, from, e);
        if (rc != ERR_OK) {
            return rc;
        }
    }
    natsMsgList list = { 0 };
    jsErrCode je = 0;
    int batch = max < FETCH_MAX ? (int)max : FETCH_MAX;
    natsStatus st = natsSubscription_Fetch(&list, s->sub, batch, FETCH_WAIT_MS, &je);
    if (st == NATS_TIMEOUT) {
        return 0;
    }
    if (st != NATS_OK) {
        drop_sub(s);
        return natsbus_err(e, "fetching events", st, je);
    }
    int rc = 0;
    int i = 0;
    bool delivered = false;
    /* Never more than max events, gap fills included: the projector reads
     * into a chunk of max (the fourteenth session found a gap of hundreds
     * filled on top of a full fetch writing past one, and crashing). */
    int64_t left = (int64_t)max;
    for (; i < list.Count && rc == 0; i++) {
        struct event_rec rec;
        if (wire_event_decode(list.Msgs[i], &rec, e) != ERR_OK) {
            rc = ERR_IO;
            break;
        }
        if (rec.position < s->next) {
            continue;       /* already had it */
        }
        if (left == 0) {
            break;          /* the rest is fetched again after a re-place */
        }
        if (rec.position > s->next) {
            struct err ge;
            err_clear(&ge);
            int64_t before = s->next;
            int64_t upto = rec.position - before > left ? before + left : rec.position;
            rc = fill_gap(s, before, upto, cb, arg, &ge);
            if (rc == ERR_IO) {
                /* nowhere to fill it from: let the projector keep what it
                 * has so far, and next time hand it the event after the
                 * gap, which it refuses and reports as a gap (never skips) */
                if (s->gap_logged != before) {
                    s->gap_logged = before;
                    log_error("gap in the event stream that cannot be filled; the read models "
                              "stay before it", "position=%lld err=\"%s\"", (long long)before,
                              ge.msg);
                }
                if (delivered) {
                    rc = 0;
                    break;
                }
                rc = cb(&rec, arg);
                break;
            }
            if (rc != 0) {
                break;
            }
            left -= upto - before;
            s->next = upto;
            delivered = true;
            int64_t now = time_mono_us();
            if (s->fill_logged_us == 0 || now - s->fill_logged_us > 10000000) {
                s->fill_logged_us = now;
                log_warn("positions missing from what the events consumer delivered: read one at a "
                         "time from the stream (or the store)",
                         "from=%lld to=%lld", (long long)before, (long long)(upto - 1));
            }
            if (left == 0) {
                break;      /* rec again, after a re-place at s->next */
            }
        }
        rc = cb(&rec, arg);
        delivered = true;
        left--;
        s->next = rec.position + 1;
    }
    if (i > 0 && rc >= 0) {
        natsMsg *last = list.Msgs[i - 1];
        jsMsgMetaData *md = NULL;
        if (s->heads != NULL && natsMsg_GetMetaData(&md, last) == NATS_OK) {
            /* what the stream holds beyond this message: the head for lag */
            bus_announce(s->heads, (int64_t)(md->Sequence.Stream + md->NumPending));
            jsMsgMetaData_Destroy(md);
        }
        natsMsg_Ack(last, NULL);    /* AckAll: everything up to it */
    }
    if (i < list.Count || rc < 0) {
        drop_sub(s);    /* fetched but not delivered: re-place at s->next */
    }
    natsMsgList_Destroy(&list);
    return rc;
}

static int js_stream_version(struct evstore *base, const char *stream_id, int64_t *version,
                             int64_t *last_position, struct err *e)
{
    struct js_store *s = (struct js_store *)base;
    if (s->fallback != NULL) {
        return evstore_stream_version(s->fallback, stream_id, version, last_position, e);
    }
    return err_set(e, ERR_STATE, "stream lookups need the store");
}

static int js_head(struct evstore *base, int64_t *position, struct err *e)
{
    struct js_store *s = (struct js_store *)base;
    int64_t now = time_mono_us();
    if (now - s->head_at_us < 100000) {
        *position = s->head_cache;
        return ERR_OK;
    }
    if (!natsbus_ready(s->nb)) {
        return err_set(e, ERR_IO, "message bus unavailable");
    }
    jsStreamInfo *si = NULL;
    jsErrCode je = 0;
    natsStatus st = js_GetStreamInfo(&si, natsbus_js(s->nb), NB_STREAM_EVENTS, NULL, &je);
    if (st != NATS_OK) {
        return natsbus_err(e, "reading the events stream", st, je);
    }
    s->head_cache = (int64_t)si->State.LastSeq;
    s->head_at_us = now;
    jsStreamInfo_Destroy(si);
    *position = s->head_cache;
    return ERR_OK;
}

static int js_size_bytes(struct evstore *base, int64_t *bytes, struct err *e)
{
    (void)base;
    (void)e;
    *bytes = 0;     /* the store is elsewhere */
    return ERR_OK;
}

static void js_close(struct evstore *base)
{
    struct js_store *s = (struct js_store *)base;
    drop_sub(s);
    evstore_close(s->fallback);
    free(s);
}

static const struct evstore_ops js_ops = {
    .name = "jetstream",
    .append = js_append,
    .read = js_read,
    .stream_version = js_stream_version,
    .head = js_head,
    .size_bytes = js_size_bytes,
    .close = js_close,
};

int evstore_js_open(struct natsbus *nb, const char *node, struct evstore *fallback,
                    struct bus *heads, struct evstore **out, struct err *e)
{
    (void)e;
    struct js_store *s = xcalloc(1, sizeof(*s));
    s->base.ops = &js_ops;
    s->nb = nb;
    s->fallback = fallback;
    s->heads = heads;
    snprintf(s->durable, sizeof(s->durable), "query-%s", node);
    s->next = -1;
    *out = &s->base;
    return ERR_OK;
}
