/*
 * relay.c - see relay.h.
 */
#include "dist/relay.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/log.h"
#include "core/metrics.h"
#include "core/timeutil.h"
#include "core/xmalloc.h"
#include "dist/wire.h"
#include "store/evstore.h"

#define BATCH 1000
#define ACK_WAIT_MS 5000
#define IDLE_MS 20

struct relay {
    struct natsbus *nb;
    struct bus *announce;
    struct evstore *store;
    pthread_t thread;
    _Atomic bool stop;
    struct relay_metrics m;
    /* the batch in flight */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int outstanding;
    bool failed;
    char why[300];
    int64_t next;               /* next position to publish */
    int sent;
};

static void nap_ms(int ms)
{
    struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };
    nanosleep(&ts, NULL);
}

static void on_ack(void *closure, natsMsg *msg, jsPubAck *pa, jsPubAckErr *pae)
{
    (void)msg;
    struct relay *r = closure;
    pthread_mutex_lock(&r->mu);
    if (pa != NULL) {
        if ((int64_t)pa->Sequence > atomic_load(&r->m.position)) {
            atomic_store(&r->m.position, (int64_t)pa->Sequence);
        }
        if (!pa->Duplicate) {
            counter_add(&r->m.published, 1);
        }
    } else if (!r->failed) {
        r->failed = true;
        snprintf(r->why, sizeof(r->why), "%s (code %d)",
                 pae != NULL && pae->ErrText != NULL ? pae->ErrText
                                                     : natsStatus_GetText(pae ? pae->Err : 1),
                 pae != NULL ? (int)pae->ErrCode : 0);
    }
    r->outstanding--;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

static int publish_one(const struct event_rec *ev, void *arg)
{
    struct relay *r = arg;
    if (ev->position != r->next) {
        return -1;      /* the store has a gap: never skip it */
    }
    struct err e;
    err_clear(&e);
    natsMsg *m = NULL;
    if (wire_event_msg(ev, &m, &e) != ERR_OK) {
        log_error("cannot encode an event for the bus", "position=%lld err=\"%s\"",
                  (long long)ev->position, e.msg);
        return -1;
    }
    jsPubOptions po;
    jsPubOptions_Init(&po);
    po.MaxWait = ACK_WAIT_MS;
    po.ExpectStream = NB_STREAM_EVENTS;
    if (ev->position > 1) {
        po.ExpectLastSeq = (uint64_t)(ev->position - 1);
    } else if (natsMsgHeader_Set(m, "Nats-Expected-Last-Sequence", "0") != NATS_OK) {
        /* position 1 expects an empty stream (ExpectLastSeq = 0 means "unset" in
         * nats.c, so the header is set by hand) */
        natsMsg_Destroy(m);
        return -1;
    }
    pthread_mutex_lock(&r->mu);
    r->outstanding++;
    pthread_mutex_unlock(&r->mu);
    if (natsbus_publish_async(r->nb, &m, &po, on_ack, r, &e) != ERR_OK) {
        natsMsg_Destroy(m);
        pthread_mutex_lock(&r->mu);
        r->outstanding--;
        r->failed = true;
        snprintf(r->why, sizeof(r->why), "%s", e.msg);
        pthread_mutex_unlock(&r->mu);
        return -1;
    }
    r->next++;
    r->sent++;
    return 0;
}

/* Where the stream is: the position to publish next, or -1. */
static int64_t stream_next(struct relay *r)
{
    jsStreamInfo *si = NULL;
    jsErrCode je = 0;
    natsStatus s = js_GetStreamInfo(&si, natsbus_js(r->nb), NB_STREAM_EVENTS, NULL, &je);
    if (s != NATS_OK) {
        log_warn("relay cannot read the events stream", "err=\"%s\"", natsStatus_GetText(s));
        return -1;
    }
    int64_t last = (int64_t)si->State.LastSeq;
    jsStreamInfo_Destroy(si);
    if (last > 0) {
        /* the stream's sequence must be the store's position */
        natsMsg *m = NULL;
        if (js_GetLastMsg(&m, natsbus_js(r->nb), NB_STREAM_EVENTS, NB_SUBJ_EVT "*", NULL, &je) ==
            NATS_OK) {
            const char *p = NULL;
            bool ok = natsMsgHeader_Get(m, NB_H_POSITION, &p) == NATS_OK &&
                      strtoll(p, NULL, 10) == (long long)natsMsg_GetSequence(m);
            natsMsg_Destroy(m);
            if (!ok) {
                log_error("TRACKING_EVENTS holds messages not published by a relay; its sequence"
                          " is no longer the store position. Purge or recreate the stream.", NULL);
                return -1;
            }
        }
    }
    atomic_store(&r->m.position, last);
    return last + 1;
}

static void *run(void *arg)
{
    struct relay *r = arg;
    pthread_setname_np(pthread_self(), "rastro-relay");
    r->next = -1;
    while (!atomic_load(&r->stop)) {
        if (!natsbus_ready(r->nb)) {
            nap_ms(100);
            continue;
        }
        if (r->next < 0) {
            r->next = stream_next(r);
            if (r->next < 0) {
                nap_ms(1000);
                continue;
            }
            log_info("relay publishing", "from=%lld", (long long)r->next);
        }
        int64_t from = r->next;
        r->sent = 0;
        struct err e;
        err_clear(&e);
        int rc = evstore_read(r->store, from, BATCH, publish_one, r, &e);
        if (rc < 0 && r->sent == 0 && !r->failed) {
            log_warn("relay cannot read the store", "err=\"%s\"", rc == -1 ? "gap" : e.msg);
        }
        /* wait for the batch's acks */
        pthread_mutex_lock(&r->mu);
        while (r->outstanding > 0) {
            pthread_cond_wait(&r->cv, &r->mu);
        }
        bool failed = r->failed;
        r->failed = false;
        pthread_mutex_unlock(&r->mu);
        if (failed) {
            counter_add(&r->m.resyncs, 1);
            log_warn("relay publish refused or lost; re-reading the stream", "err=\"%s\"", r->why);
            r->next = -1;
            nap_ms(200);
            continue;
        }
        if (r->sent > 0) {
            bus_announce(r->announce, r->next - 1);
        } else {
            nap_ms(rc < 0 ? 500 : IDLE_MS);
        }
    }
    nats_ReleaseThreadMemory();
    return NULL;
}

int relay_start(struct natsbus *nb, struct bus *announce, const char *store_spec,
                const char *data_dir, struct relay **out, struct err *e)
{
    struct relay *r = xcalloc(1, sizeof(*r));
    r->nb = nb;
    r->announce = announce;
    pthread_mutex_init(&r->mu, NULL);
    pthread_cond_init(&r->cv, NULL);
    int rc = evstore_open(store_spec, data_dir, EVSTORE_READONLY, &r->store, e);
    if (rc == ERR_OK && pthread_create(&r->thread, NULL, run, r) != 0) {
        evstore_close(r->store);
        rc = err_set(e, ERR_STATE, "cannot start the relay thread");
    }
    if (rc != ERR_OK) {
        pthread_mutex_destroy(&r->mu);
        pthread_cond_destroy(&r->cv);
        free(r);
        return rc;
    }
    *out = r;
    return ERR_OK;
}

void relay_stop(struct relay *r)
{
    if (r == NULL) {
        return;
    }
    atomic_store(&r->stop, true);
    pthread_join(r->thread, NULL);
    evstore_close(r->store);
    pthread_mutex_destroy(&r->mu);
    pthread_cond_destroy(&r->cv);
    free(r);
}

const struct relay_metrics *relay_get_metrics(struct relay *r)
{
    return &r->m;
}
