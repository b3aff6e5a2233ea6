/*
 * handler.c - see handler.h.
 */
#include "dist/handler.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/log.h"
#include "core/metrics.h"
#include "core/xmalloc.h"
#include "dist/wire.h"
#include "domain/tracking.h"
#include "store/evstore.h"

#define FETCH_MAX 512
#define FETCH_WAIT_MS 200
#define DURABLE "handlers"

struct handler {
    struct natsbus *nb;
    struct evstore *store;
    pthread_t thread;
    _Atomic bool stop;
    struct handler_metrics m;
    natsSubscription *sub;
    /* one batch */
    natsMsg *msgs[FETCH_MAX];
    struct wire_command cmds[FETCH_MAX];
    struct event_in ev[FETCH_MAX];
    struct append_out out[FETCH_MAX];
    int idx[FETCH_MAX];     /* ev[i] came from msgs[idx[i]] */
};

static void nap_ms(int ms)
{
    struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };
    nanosleep(&ts, NULL);
}

int handler_dead_letter(struct natsbus *nb, natsMsg *orig, const char *reason, struct err *e)
{
    const char *subj = natsMsg_GetSubject(orig);
    const char *kind = strrchr(subj, '.');
    char dsubj[64];
    snprintf(dsubj, sizeof(dsubj), "%s%s", NB_SUBJ_DLQ, kind != NULL ? kind + 1 : "unknown");
    natsMsg *m = NULL;
    natsStatus s = natsMsg_Create(&m, dsubj, NULL, natsMsg_GetData(orig),
                                  natsMsg_GetDataLength(orig));
    /* keep the command's envelope, add why and from where */
    const char **keys = NULL;
    int nkeys = 0;
    if (s == NATS_OK && natsMsgHeader_Keys(orig, &keys, &nkeys) == NATS_OK) {
        for (int i = 0; i < nkeys && s == NATS_OK; i++) {
            const char *v = NULL;
            if (strcmp(keys[i], "Nats-Msg-Id") != 0 &&
                natsMsgHeader_Get(orig, keys[i], &v) == NATS_OK) {
                s = natsMsgHeader_Set(m, keys[i], v);
            }
        }
        free((void *)keys);
    }
    jsMsgMetaData *md = NULL;
    char seq[48] = "", deliveries[24] = "1";
    if (natsMsg_GetMetaData(&md, orig) == NATS_OK) {
        snprintf(seq, sizeof(seq), "dlq:cmd:%llu", (unsigned long long)md->Sequence.Stream);
        snprintf(deliveries, sizeof(deliveries), "%llu", (unsigned long long)md->NumDelivered);
        jsMsgMetaData_Destroy(md);
    }
    if (s == NATS_OK) {
        s = natsMsgHeader_Set(m, NB_H_REASON, reason);
    }
    if (s == NATS_OK) {
        s = natsMsgHeader_Set(m, NB_H_SUBJECT, subj);
    }
    if (s == NATS_OK) {
        s = natsMsgHeader_Set(m, NB_H_DELIVERIES, deliveries);
    }
    if (s == NATS_OK && seq[0] != '\0') {
        s = natsMsgHeader_Set(m, "Nats-Msg-Id", seq);   /* one DLQ entry per command */
    }
    jsErrCode je = 0;
    if (s == NATS_OK) {
        s = js_PublishMsg(NULL, natsbus_js(nb), m, NULL, &je);
    }
    natsMsg_Destroy(m);
    return s == NATS_OK ? ERR_OK : natsbus_err(e, "dead-lettering", s, je);
}

static void to_dlq(struct handler *h, natsMsg *m, const char *reason)
{
    struct err e;
    err_clear(&e);
    if (handler_dead_letter(h->nb, m, reason, &e) == ERR_OK) {
        counter_add(&h->m.dead_lettered, 1);
        log_warn("command dead-lettered", "subject=%s reason=\"%s\"", natsMsg_GetSubject(m),
                 reason);
        natsMsg_Ack(m, NULL);
    } else {
        log_warn("cannot dead-letter a command; it will come again", "err=\"%s\"", e.msg);
        natsMsg_NakWithDelay(m, 1000, NULL);
    }
}

/* A command that failed through no fault of the store: again, or to the DLQ. */
static void failed_command(struct handler *h, natsMsg *m, const char *reason)
{
    jsMsgMetaData *md = NULL;
    uint64_t n = 1;
    if (natsMsg_GetMetaData(&md, m) == NATS_OK) {
        n = md->NumDelivered;
        jsMsgMetaData_Destroy(md);
    }
    if (n >= HANDLER_MAX_DELIVER) {
        to_dlq(h, m, reason);
    } else {
        counter_add(&h->m.retried, 1);
        natsMsg_NakWithDelay(m, 200, NULL);
    }
}

struct existing {
    char *data;
};

static int grab(const struct event_rec *ev, void *arg)
{
    struct existing *x = arg;
    x->data = xstrndup(ev->data, ev->data_len);
    return 1;
}

/* Conflict: is the stored event the same command (a redelivery)? 1 yes,
 * 0 no, -1 could not tell (the store read failed: ask again later). */
static int same_as_stored(struct handler *h, const struct wire_command *c, int64_t pos)
{
    struct existing x = { NULL };
    struct err e;
    int rc = evstore_read(h->store, pos, 1, grab, &x, &e);
    if (rc < 0 || x.data == NULL) {
        free(x.data);
        return -1;
    }
    enum tracking_kind kind =
        strcmp(c->ev.type, "ConversionRegistrada") == 0 ? KIND_CONVERSION : KIND_IMPRESION;
    static __thread struct tracking a, b;
    bool same = tracking_from_json(kind, x.data, strlen(x.data), &a, &e) == ERR_OK &&
                tracking_from_json(kind, c->ev.data, strlen(c->ev.data), &b, &e) == ERR_OK;
    if (same) {
        b.ts_given = !c->ts_defaulted;
        same = tracking_same_payload(&a, &b);
    }
    free(x.data);
    return same ? 1 : 0;
}

static void handle_batch(struct handler *h, natsMsgList *list)
{
    int n = 0;
    for (int i = 0; i < list->Count; i++) {
        natsMsg *m = list->Msgs[i];
        h->msgs[i] = m;
        struct err e;
        err_clear(&e);
        if (wire_command_decode(m, &h->cmds[n], &e) != ERR_OK) {
            failed_command(h, m, e.msg);
            continue;
        }
        h->ev[n] = h->cmds[n].ev;
        h->idx[n] = i;
        n++;
    }
    if (n == 0) {
        return;
    }
    struct err e;
    err_clear(&e);
    if (evstore_append(h->store, h->ev, (size_t)n, h->out, &e) != ERR_OK) {
        counter_add(&h->m.store_failures, 1);
        log_warn("event store append failed; commands will come again", "n=%d err=\"%s\"", n,
                 e.msg);
        for (int i = 0; i < n; i++) {
            counter_add(&h->m.retried, 1);
            natsMsg_NakWithDelay(h->msgs[h->idx[i]], 1000, NULL);
        }
        nap_ms(500);
        return;
    }
    int64_t last = 0;
    for (int i = 0; i < n; i++) {
        natsMsg *m = h->msgs[h->idx[i]];
        if (h->out[i].status == ERR_OK) {
            counter_add(&h->m.appended, 1);
            last = h->out[i].position;
            natsMsg_Ack(m, NULL);
        } else {
            int same = same_as_stored(h, &h->cmds[i], h->out[i].position);
            if (same > 0) {
                counter_add(&h->m.duplicates, 1);
                natsMsg_Ack(m, NULL);
            } else if (same == 0) {
                to_dlq(h, m, "id already used with a different payload");
            } else {
                counter_add(&h->m.retried, 1);
                natsMsg_NakWithDelay(m, 1000, NULL);
            }
        }
    }
    if (last > 0) {
        atomic_store(&h->m.head, last);
    }
}

static int subscribe(struct handler *h, struct err *e)
{
    jsConsumerConfig cc;
    jsConsumerConfig_Init(&cc);
    cc.Durable = DURABLE;
    cc.AckPolicy = js_AckExplicit;
    cc.DeliverPolicy = js_DeliverAll;
    /* short: a command fetched by a handler that died (or whose broker restarted)
     * comes again after this; a redelivery of an appended one is acked as a
     * duplicate */
    cc.AckWait = 5LL * 1000 * 1000 * 1000;
    cc.MaxDeliver = -1;         /* the handler decides when to give up (HANDLER_MAX_DELIVER) */
    cc.MaxAckPending = 20000;
    cc.FilterSubject = NB_SUBJ_CMD "*";
    jsErrCode je = 0;
    natsStatus s = js_AddConsumer(NULL, natsbus_js(h->nb), NB_STREAM_COMMANDS, &cc, NULL, &je);
    if (s != NATS_OK) {
        return natsbus_err(e, "creating the handlers consumer", s, je);
    }
    jsSubOptions so;
    jsSubOptions_Init(&so);
    so.Stream = NB_STREAM_COMMANDS;
    so.Consumer = DURABLE;
    s = js_PullSubscribe(&h->sub, natsbus_js(h->nb), NB_SUBJ_CMD "*", DURABLE, NULL, &so, &je);
    if (s != NATS_OK) {
        h->sub = NULL;
        return natsbus_err(e, "subscribing to commands", s, je);
    }
    return ERR_OK;
}

static void *run(void *arg)
{
    struct handler *h = arg;
    pthread_setname_np(pthread_self(), "rastro-handler");
    while (!atomic_load(&h->stop)) {
        if (!natsbus_ready(h->nb)) {
            nap_ms(100);
            continue;
        }
        if (h->sub == NULL) {
            struct err e;
            err_clear(&e);
            if (subscribe(h, &e) != ERR_OK) {
                log_warn("handler cannot subscribe yet", "err=\"%s\"", e.msg);
                nap_ms(500);
                continue;
            }
            log_info("handler consuming commands", "consumer=" DURABLE);
        }
        natsMsgList list = { 0 };
        jsErrCode je = 0;
        natsStatus s = natsSubscription_Fetch(&list, h->sub, FETCH_MAX, FETCH_WAIT_MS, &je);
        if (s == NATS_OK) {
            handle_batch(h, &list);
            natsMsgList_Destroy(&list);
        } else if (s != NATS_TIMEOUT) {
            log_warn("fetching commands failed", "err=\"%s\" code=%d", natsStatus_GetText(s),
                     (int)je);
            natsMsgList_Destroy(&list);
            /* a consumer lost with its server (or deleted): subscribe afresh */
            natsSubscription_Destroy(h->sub);
            h->sub = NULL;
            nap_ms(200);
        }
    }
    nats_ReleaseThreadMemory();
    return NULL;
}

int handler_start(struct natsbus *nb, const char *store_spec, const char *data_dir,
                  struct handler **out, struct err *e)
{
    struct handler *h = xcalloc(1, sizeof(*h));
    h->nb = nb;
    int rc = evstore_open(store_spec, data_dir, 0, &h->store, e);
    if (rc != ERR_OK) {
        free(h);
        return rc;
    }
    if (pthread_create(&h->thread, NULL, run, h) != 0) {
        evstore_close(h->store);
        free(h);
        return err_set(e, ERR_STATE, "cannot start the handler thread");
    }
    *out = h;
    return ERR_OK;
}

void handler_stop(struct handler *h)
{
    if (h == NULL) {
        return;
    }
    atomic_store(&h->stop, true);
    pthread_join(h->thread, NULL);
    if (h->sub != NULL) {
        natsSubscription_Destroy(h->sub);     /* the durable stays */
    }
    evstore_close(h->store);
    free(h);
}

const struct handler_metrics *handler_get_metrics(struct handler *h)
{
    return &h->m;
}
