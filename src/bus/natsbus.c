/*
 * natsbus.c - the NATS JetStream transport. See natsbus.h.
 */
#include "bus/natsbus.h"

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

#define DUPLICATE_WINDOW_NS (120LL * 1000 * 1000 * 1000)
#define MAX_PENDING_PUBLISHES 200000

/* Publishes awaiting their ack: message -> who to tell. */
#define PEND_BUCKETS 65536
struct pend {
    const natsMsg *msg;
    natsbus_ack_fn done;
    void *closure;
    struct pend *next;
};

struct natsbus {
    natsConnection *nc;
    jsCtx *js;
    int replicas;
    pthread_mutex_t pend_mu;
    struct pend **pend;
    int64_t npend;
    /* nats.c calls the connection handlers on its own thread, after Close
     * returns: close waits for the last one (closed) before freeing */
    pthread_cond_t closed_cv;
    bool closed;
    pthread_mutex_t mu;         /* stream set-up */
    _Atomic bool streams_ok;
    pthread_t setup_thread;
    pthread_cond_t setup_cv;
    bool setup_stop, setup_running;
    struct natsbus_metrics m;
};

int natsbus_err(struct err *e, const char *what, natsStatus s, jsErrCode je)
{
    if (je != 0) {
        return err_set(e, ERR_IO, "%s: %s (JetStream error %d)", what, natsStatus_GetText(s),
                       (int)je);
    }
    return err_set(e, ERR_IO, "%s: %s", what, natsStatus_GetText(s));
}

static void on_disconnected(natsConnection *nc, void *closure)
{
    struct natsbus *nb = closure;
    if (natsConnection_IsClosed(nc)) {
        return;     /* our own close */
    }
    counter_add(&nb->m.disconnects, 1);
    log_warn("NATS disconnected; reconnecting", NULL);
}

static void on_reconnected(natsConnection *nc, void *closure)
{
    (void)nc;
    struct natsbus *nb = closure;
    /* a restarted server may have lost its streams (no file storage, or
     * a new cluster): check them again before publishing */
    atomic_store(&nb->streams_ok, false);
    pthread_mutex_lock(&nb->mu);
    pthread_cond_signal(&nb->setup_cv);
    pthread_mutex_unlock(&nb->mu);
    log_info("NATS reconnected", NULL);
}

/* Waits up to secs for *flag (set under mu, signalled on cv): nats.c's
 * last callback for something we are about to free. */
static bool wait_flag(pthread_mutex_t *mu, pthread_cond_t *cv, bool *flag, int secs)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += secs;
    pthread_mutex_lock(mu);
    while (!*flag && pthread_cond_timedwait(cv, mu, &ts) == 0) {
    }
    bool v = *flag;
    pthread_mutex_unlock(mu);
    return v;
}

static void on_closed(natsConnection *nc, void *closure)
{
    (void)nc;
    struct natsbus *nb = closure;
    pthread_mutex_lock(&nb->mu);
    nb->closed = true;
    pthread_cond_broadcast(&nb->closed_cv);
    pthread_mutex_unlock(&nb->mu);
}

static void on_connected(natsConnection *nc, void *closure)
{
    (void)nc;
    (void)closure;
    log_info("NATS connected", NULL);
}

static size_t pend_slot(const natsMsg *m)
{
    uintptr_t x = (uintptr_t)m;
    return (size_t)((x >> 4) ^ (x >> 20)) & (PEND_BUCKETS - 1);
}

static void pend_put(struct natsbus *nb, struct pend *p)
{
    size_t i = pend_slot(p->msg);
    pthread_mutex_lock(&nb->pend_mu);
    p->next = nb->pend[i];
    nb->pend[i] = p;
    nb->npend++;
    pthread_mutex_unlock(&nb->pend_mu);
}

static struct pend *pend_take(struct natsbus *nb, const natsMsg *m)
{
    size_t i = pend_slot(m);
    pthread_mutex_lock(&nb->pend_mu);
    struct pend **pp = &nb->pend[i];
    while (*pp != NULL && (*pp)->msg != m) {
        pp = &(*pp)->next;
    }
    struct pend *p = *pp;
    if (p != NULL) {
        *pp = p->next;
        nb->npend--;
    }
    pthread_mutex_unlock(&nb->pend_mu);
    return p;
}

int64_t natsbus_pending(struct natsbus *nb)
{
    pthread_mutex_lock(&nb->pend_mu);
    int64_t n = nb->npend;
    pthread_mutex_unlock(&nb->pend_mu);
    return n;
}

static void on_pub_ack(jsCtx *js, natsMsg *msg, jsPubAck *pa, jsPubAckErr *pae, void *closure)
{
    (void)js;
    struct natsbus *nb = closure;
    struct pend *p = pend_take(nb, msg);
    if (p != NULL) {
        p->done(p->closure, msg, pa, pae);
        free(p);
    } else {
        log_warn("NATS ack for an unknown publish", NULL);
    }
    natsMsg_Destroy(msg);
}

int natsbus_publish_async(struct natsbus *nb, natsMsg **msg, jsPubOptions *po,
                          natsbus_ack_fn done, void *closure, struct err *e)
{
    struct pend *p = xmalloc(sizeof(*p));
    p->msg = *msg;
    p->done = done;
    p->closure = closure;
    pend_put(nb, p);    /* before publishing: the ack may beat us back */
    natsStatus s = js_PublishMsgAsync(nb->js, msg, po);
    if (s != NATS_OK) {
        free(pend_take(nb, p->msg));
        return natsbus_err(e, "publishing", s, 0);
    }
    return ERR_OK;
}

/* Creates the stream, or updates it when its configuration differs. */
static int ensure_stream(struct natsbus *nb, const char *name, const char *subject,
                         struct err *e)
{
    jsStreamConfig cfg;
    jsStreamConfig_Init(&cfg);
    cfg.Name = name;
    const char *subjects[1] = { subject };
    cfg.Subjects = subjects;
    cfg.SubjectsLen = 1;
    cfg.Storage = js_FileStorage;
    cfg.Retention = js_LimitsPolicy;
    cfg.Replicas = nb->replicas;
    cfg.Duplicates = DUPLICATE_WINDOW_NS;
    cfg.AllowDirect = true;
    jsErrCode je = 0;
    natsStatus s = js_AddStream(NULL, nb->js, &cfg, NULL, &je);
    if (s != NATS_OK && je == JSStreamNameExistErr) {
        s = js_UpdateStream(NULL, nb->js, &cfg, NULL, &je);
    }
    if (s != NATS_OK) {
        char what[96];
        snprintf(what, sizeof(what), "creating stream %s", name);
        return natsbus_err(e, what, s, je);
    }
    return ERR_OK;
}

/* Creates the streams whenever the connection is up and they are not
 * known to exist (at start, after a reconnect), on its own thread: the
 * JetStream calls can take seconds during a leader election, and
 * natsbus_ready() is asked on request paths. */
static void *setup_run(void *arg)
{
    struct natsbus *nb = arg;
    pthread_setname_np(pthread_self(), "rastro-natssetup");
    pthread_mutex_lock(&nb->mu);
    while (!nb->setup_stop) {
        if (!atomic_load(&nb->streams_ok) &&
            natsConnection_Status(nb->nc) == NATS_CONN_STATUS_CONNECTED) {
            pthread_mutex_unlock(&nb->mu);
            struct err e;
            err_clear(&e);
            if (ensure_stream(nb, NB_STREAM_COMMANDS, NB_SUBJ_CMD "*", &e) == ERR_OK &&
                ensure_stream(nb, NB_STREAM_EVENTS, NB_SUBJ_EVT "*", &e) == ERR_OK &&
                ensure_stream(nb, NB_STREAM_DLQ, NB_SUBJ_DLQ "*", &e) == ERR_OK) {
                atomic_store(&nb->streams_ok, true);
                log_info("NATS streams ready", "replicas=%d", nb->replicas);
            } else {
                log_warn("NATS streams not ready", "err=\"%s\"", e.msg);
            }
            pthread_mutex_lock(&nb->mu);
        }
        struct timespec ts;
        time_deadline(CLOCK_REALTIME, 100, &ts);
        pthread_cond_timedwait(&nb->setup_cv, &nb->mu, &ts);
    }
    pthread_mutex_unlock(&nb->mu);
    nats_ReleaseThreadMemory();
    return NULL;
}

bool natsbus_ready(struct natsbus *nb)
{
    return natsConnection_Status(nb->nc) == NATS_CONN_STATUS_CONNECTED &&
           atomic_load(&nb->streams_ok);
}

bool natsbus_wait_ready(struct natsbus *nb, int timeout_ms)
{
    int64_t until = time_mono_us() + (int64_t)timeout_ms * 1000;
    while (!natsbus_ready(nb)) {
        if (time_mono_us() >= until) {
            return false;
        }
        struct timespec ts = { 0, 50 * 1000000L };
        nanosleep(&ts, NULL);
    }
    return true;
}

static void free_bus(struct natsbus *nb)
{
    pthread_cond_destroy(&nb->closed_cv);
    pthread_cond_destroy(&nb->setup_cv);
    pthread_mutex_destroy(&nb->mu);
    pthread_mutex_destroy(&nb->pend_mu);
    free(nb->pend);
    free(nb);
}

int natsbus_open(const char *url, int replicas, struct natsbus **out, struct err *e)
{
    struct natsbus *nb = xcalloc(1, sizeof(*nb));
    nb->replicas = replicas > 0 ? replicas : 1;
    nb->pend = xcalloc(PEND_BUCKETS, sizeof(*nb->pend));
    pthread_mutex_init(&nb->mu, NULL);
    pthread_mutex_init(&nb->pend_mu, NULL);
    pthread_cond_init(&nb->closed_cv, NULL);
    pthread_cond_init(&nb->setup_cv, NULL);
    natsOptions *o = NULL;
    natsStatus s = natsOptions_Create(&o);
    /* a comma list of servers (a cluster): each is tried, and reconnects
     * go to whichever answers */
    char *copy = xstrdup(url);
    const char *servers[16];
    int nservers = 0;
    for (char *save = NULL, *tok = strtok_r(copy, ",", &save); tok != NULL && nservers < 16;
         tok = strtok_r(NULL, ",", &save)) {
        while (*tok == ' ') {
            tok++;
        }
        if (*tok != '\0') {
            servers[nservers++] = tok;
        }
    }
    if (s == NATS_OK) {
        s = nservers > 0 ? natsOptions_SetServers(o, servers, nservers) : NATS_INVALID_ARG;
    }
    free(copy);     /* the options keep their own copies */
    if (s == NATS_OK) {
        s = natsOptions_SetTimeout(o, 1000);
    }
    if (s == NATS_OK) {
        s = natsOptions_SetMaxReconnect(o, -1);
    }
    if (s == NATS_OK) {
        s = natsOptions_SetReconnectWait(o, 250);
    }
    if (s == NATS_OK) {
        s = natsOptions_SetDisconnectedCB(o, on_disconnected, nb);
    }
    if (s == NATS_OK) {
        s = natsOptions_SetReconnectedCB(o, on_reconnected, nb);
    }
    if (s == NATS_OK) {
        s = natsOptions_SetClosedCB(o, on_closed, nb);
    }
    if (s == NATS_OK) {
        s = natsOptions_SetRetryOnFailedConnect(o, true, on_connected, nb);
    }
    if (s == NATS_OK) {
        s = natsOptions_SetName(o, "rastro");
    }
    if (s != NATS_OK) {
        natsOptions_Destroy(o);
        free_bus(nb);
        return natsbus_err(e, "NATS options (check --bus)", s, 0);
    }
    s = natsConnection_Connect(&nb->nc, o);
    natsOptions_Destroy(o);
    if (s == NATS_NOT_YET_CONNECTED) {
        log_warn("NATS not reachable yet; retrying in the background", NULL);
    } else if (s != NATS_OK) {
        free_bus(nb);
        return natsbus_err(e, "connecting to NATS", s, 0);
    }
    jsOptions jo;
    jsOptions_Init(&jo);
    jo.Wait = 5000;     /* JetStream API calls (stream info, consumers, sync publishes) */
    jo.PublishAsync.MaxPending = MAX_PENDING_PUBLISHES;
    jo.PublishAsync.StallWait = 1;      /* a full window fails the request, never parks a thread */
    jo.PublishAsync.AckHandler = on_pub_ack;
    jo.PublishAsync.AckHandlerClosure = nb;
    s = natsConnection_JetStream(&nb->js, nb->nc, &jo);
    if (s != NATS_OK) {
        natsConnection_Destroy(nb->nc);
        free_bus(nb);
        return natsbus_err(e, "JetStream context", s, 0);
    }
    nb->setup_running = pthread_create(&nb->setup_thread, NULL, setup_run, nb) == 0;
    if (!nb->setup_running) {
        log_error("cannot start the NATS set-up thread; streams are not created", NULL);
    }
    *out = nb;
    return ERR_OK;
}

void natsbus_close(struct natsbus *nb)
{
    if (nb == NULL) {
        return;
    }
    if (nb->setup_running) {
        pthread_mutex_lock(&nb->mu);
        nb->setup_stop = true;
        pthread_cond_signal(&nb->setup_cv);
        pthread_mutex_unlock(&nb->mu);
        pthread_join(nb->setup_thread, NULL);
    }
    if (nb->js != NULL) {
        jsPubOptions po;
        jsPubOptions_Init(&po);
        po.MaxWait = 2000;
        (void)js_PublishAsyncComplete(nb->js, &po);
        jsCtx_Destroy(nb->js);
    }
    natsConnection_Close(nb->nc);
    bool closed = wait_flag(&nb->mu, &nb->closed_cv, &nb->closed, 5);
    natsConnection_Destroy(nb->nc);
    if (!closed) {
        log_warn("NATS connection did not report closed in time", NULL);
        return;     /* its handlers may yet run: leak rather than free under them */
    }
    /* acks that never came (closed connection): no callback will */
    for (size_t i = 0; i < PEND_BUCKETS; i++) {
        while (nb->pend[i] != NULL) {
            struct pend *p = nb->pend[i];
            nb->pend[i] = p->next;
            free(p);
        }
    }
    free_bus(nb);
}

jsCtx *natsbus_js(struct natsbus *nb) { return nb->js; }
const struct natsbus_metrics *natsbus_get_metrics(struct natsbus *nb) { return &nb->m; }

/* --- the bus: a local bus that also hears heads from other processes --- */

struct bus_nats {
    struct bus base;
    struct natsbus *nb;
    struct bus *local;
    bool publish;
    natsSubscription *sub;
    /* the head handler may still be running when we unsubscribe: close
     * waits for nats.c to say it returned for the last time */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool sub_done;
};

static void on_sub_complete(void *closure)
{
    struct bus_nats *b = closure;
    pthread_mutex_lock(&b->mu);
    b->sub_done = true;
    pthread_cond_broadcast(&b->cv);
    pthread_mutex_unlock(&b->mu);
}

static void on_head(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    (void)nc;
    (void)sub;
    struct bus_nats *b = closure;
    char num[24];
    int n = natsMsg_GetDataLength(msg);
    if (n > 0 && n < (int)sizeof(num)) {
        memcpy(num, natsMsg_GetData(msg), (size_t)n);
        num[n] = '\0';
        bus_announce(b->local, strtoll(num, NULL, 10));
    }
    natsMsg_Destroy(msg);
}

static void n_announce(struct bus *base, int64_t head)
{
    struct bus_nats *b = (struct bus_nats *)base;
    bus_announce(b->local, head);
    if (!b->publish) {
        return;
    }
    char num[24];
    int n = snprintf(num, sizeof(num), "%lld", (long long)head);
    /* best effort: a lost head only delays a query node until its next poll */
    (void)natsConnection_Publish(b->nb->nc, NB_SUBJ_HEAD, num, n);
}

static int64_t n_wait(struct bus *base, int64_t after, int timeout_ms)
{
    struct bus_nats *b = (struct bus_nats *)base;
    return bus_wait(b->local, after, timeout_ms);
}

static void n_wake_all(struct bus *base)
{
    struct bus_nats *b = (struct bus_nats *)base;
    bus_wake_all(b->local);
}

static void n_close(struct bus *base)
{
    struct bus_nats *b = (struct bus_nats *)base;
    if (b->sub != NULL) {
        natsSubscription_Unsubscribe(b->sub);
        bool done = wait_flag(&b->mu, &b->cv, &b->sub_done, 5);
        natsSubscription_Destroy(b->sub);
        if (!done) {
            /* the handler may yet run: leaking the bus beats a use after free */
            log_warn("head subscription did not close in time", NULL);
            return;
        }
    }
    bus_close(b->local);
    pthread_mutex_destroy(&b->mu);
    pthread_cond_destroy(&b->cv);
    free(b);
}

static const struct bus_ops nats_ops = {
    .name = "nats",
    .announce = n_announce,
    .wait = n_wait,
    .wake_all = n_wake_all,
    .close = n_close,
};

struct bus *natsbus_bus(struct natsbus *nb, int64_t head, bool publish)
{
    struct bus_nats *b = xcalloc(1, sizeof(*b));
    b->base.ops = &nats_ops;
    b->nb = nb;
    b->publish = publish;
    b->local = bus_local_new(head);
    pthread_mutex_init(&b->mu, NULL);
    pthread_cond_init(&b->cv, NULL);
    if (!publish &&
        (natsConnection_Subscribe(&b->sub, nb->nc, NB_SUBJ_HEAD, on_head, b) != NATS_OK ||
         natsSubscription_SetOnCompleteCB(b->sub, on_sub_complete, b) != NATS_OK)) {
        log_warn("cannot subscribe to heads; the query node falls back to polling", NULL);
        natsSubscription_Destroy(b->sub);
        b->sub = NULL;
    }
    return &b->base;
}

int64_t natsbus_bus_head(struct bus *b)
{
    return bus_wait(b, INT64_MAX, 0);
}
