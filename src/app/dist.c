/*
 * dist.c - see dist.h.
 */
#include "app/dist.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bus/natsbus.h"
#include "core/buf.h"
#include "core/hash.h"
#include "core/jsonw.h"
#include "core/log.h"
#include "core/metrics.h"
#include "dist/evstore_js.h"
#include "dist/handler.h"
#include "dist/publisher.h"
#include "dist/relay.h"
#include "dist/wire.h"
#include "proj/projector.h"

int dist_parse_roles(const char *s, int *roles)
{
    *roles = 0;
    if (s == NULL || s[0] == '\0' || strcmp(s, "all") == 0) {
        return 0;
    }
    static const struct { const char *name; int bit; } names[] = {
        { "api", ROLE_API }, { "handler", ROLE_HANDLER }, { "relay", ROLE_RELAY },
        { "query", ROLE_QUERY },
    };
    const char *p = s;
    while (*p != '\0') {
        size_t n = strcspn(p, ",");
        bool found = false;
        for (size_t i = 0; i < ARRAY_LEN(names); i++) {
            if (strlen(names[i].name) == n && strncmp(p, names[i].name, n) == 0) {
                *roles |= names[i].bit;
                found = true;
            }
        }
        if (!found) {
            return -1;
        }
        p += n;
        if (*p == ',') {
            p++;
        }
    }
    return *roles != 0 ? 0 : -1;
}

int dist_open_bus(const struct config *cfg, struct dist *d, struct err *e)
{
    d->cfg = cfg;
    int rc = natsbus_open(cfg->bus, cfg->replicas, &d->nb, e);
    if (rc == ERR_OK && !natsbus_wait_ready(d->nb, 2000)) {
        log_warn("message bus not ready yet; the node starts and keeps trying", NULL);
    }
    return rc;
}

/* The query node's name: --node, else one derived from the data folder, so
 * the same folder keeps the same durable consumer across restarts. */
static void node_name(const struct config *cfg, char *out, size_t max)
{
    if (cfg->node != NULL && cfg->node[0] != '\0') {
        snprintf(out, max, "%s", cfg->node);
    } else {
        /* host and folder: containers often share the same path */
        char abs[PATH_MAX], id[PATH_MAX + 300], host[256] = "";
        const char *dir = realpath(cfg->data, abs) != NULL ? abs : cfg->data;
        if (gethostname(host, sizeof(host) - 1) != 0) {
            host[0] = '\0';
        }
        int n = snprintf(id, sizeof(id), "%s:%s", host, dir);
        snprintf(out, max, "n%016llx", (unsigned long long)hash64(id, n > 0 ? (size_t)n : 0));
    }
    for (char *c = out; *c != '\0'; c++) {     /* consumer names: no . * > or blanks */
        if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') ||
              *c == '-' || *c == '_')) {
            *c = '_';
        }
    }
}

int dist_start_roles(const struct config *cfg, struct dist *d, const char *rm_path,
                     struct rmcache *cache, struct projector **proj, struct err *e)
{
    int roles = cfg->roles;
    int rc = ERR_OK;
    if ((roles & ROLE_API) && !cfg->store_given) {
        d->pub = publisher_new(d->nb);
    }
    if (roles & ROLE_HANDLER) {
        rc = handler_start(d->nb, cfg->store, cfg->data, &d->handler, e);
    }
    if (rc == ERR_OK && (roles & ROLE_RELAY)) {
        d->relay_bus = natsbus_bus(d->nb, 0, true);
        rc = relay_start(d->nb, d->relay_bus, cfg->store, cfg->data, &d->relay, e);
    }
    if (rc == ERR_OK && (roles & ROLE_QUERY)) {
        struct evstore *fallback = NULL, *js = NULL;
        if (cfg->store_given) {
            rc = evstore_open(cfg->store, cfg->data, EVSTORE_READONLY, &fallback, e);
        }
        char node[128];
        node_name(cfg, node, sizeof(node));
        d->query_bus = natsbus_bus(d->nb, 0, false);
        if (rc == ERR_OK) {
            rc = evstore_js_open(d->nb, node, fallback, d->query_bus, &js, e);
        }
        if (rc == ERR_OK) {
            rc = projector_new_from(js, rm_path, d->query_bus, 0, proj, e);
        } else {
            evstore_close(fallback);
        }
        if (rc == ERR_OK) {
            projector_set_cache(*proj, cache);
            rc = projector_start(*proj, e);
        }
        log_info("query node", "node=%s gap_fill=%s", node, fallback != NULL ? "store" : "bus");
    }
    return rc;
}

static void submit_to_bus(void *arg, struct commit_req *r, bool ts_defaulted)
{
    publisher_submit_cmd(arg, r, ts_defaulted);
}

static int64_t head_of(void *arg)
{
    struct dist *d = arg;
    if (d->query_bus != NULL) {
        return natsbus_bus_head(d->query_bus);
    }
    if (d->relay != NULL) {
        return atomic_load(&relay_get_metrics(d->relay)->position);
    }
    if (d->handler != NULL) {
        return atomic_load(&handler_get_metrics(d->handler)->head);
    }
    return 0;
}

static bool bus_ready(void *arg)
{
    struct dist *d = arg;
    return natsbus_ready(d->nb);
}

static int dist_metrics(struct buf *b, void *arg)
{
    struct dist *d = arg;
    int rc = ERR_OK;
#define TRY(x) do { if (rc == ERR_OK) { rc = (x); } } while (0)
    const struct natsbus_metrics *nm = natsbus_get_metrics(d->nb);
    TRY(metrics_header(b, "rastro_bus_connected", "gauge",
                       "1 while connected to NATS with the streams in place."));
    TRY(metrics_sample(b, "rastro_bus_connected", NULL, natsbus_ready(d->nb) ? 1 : 0));
    TRY(metrics_header(b, "rastro_bus_disconnects_total", "counter",
                       "Times the NATS connection was lost (it reconnects by itself)."));
    TRY(metrics_sample_u64(b, "rastro_bus_disconnects_total", NULL,
                           atomic_load(&nm->disconnects)));
    TRY(metrics_header(b, "rastro_bus_publishes_pending", "gauge",
                       "Publishes to JetStream awaiting their acknowledgement."));
    TRY(metrics_sample(b, "rastro_bus_publishes_pending", NULL, (double)natsbus_pending(d->nb)));
    if (d->pub != NULL) {
        const struct publisher_metrics *pm = publisher_get_metrics(d->pub);
        const struct metric_u64 v[] = {
            { "acked", atomic_load(&pm->published) }, { "duplicate", atomic_load(&pm->duplicates) },
            { "refused", atomic_load(&pm->refused) }, { "failed", atomic_load(&pm->failed) },
        };
        TRY(metrics_counters(b, "rastro_bus_commands_total",
                             "Commands the api published, by result (acked: JetStream has it, "
                             "duplicates included; refused: 503 at once, bus down; failed: no or "
                             "bad ack, 503).", "result", v, ARRAY_LEN(v)));
    }
    if (d->handler != NULL) {
        const struct handler_metrics *hm = handler_get_metrics(d->handler);
        const struct metric_u64 v[] = {
            { "appended", atomic_load(&hm->appended) },
            { "duplicate", atomic_load(&hm->duplicates) },
            { "retried", atomic_load(&hm->retried) },
            { "dead_lettered", atomic_load(&hm->dead_lettered) },
        };
        TRY(metrics_counters(b, "rastro_handler_commands_total",
                             "Commands the handler took from the bus, by outcome.", "result", v,
                             ARRAY_LEN(v)));
        TRY(metrics_header(b, "rastro_handler_store_failures_total", "counter",
                           "Batches the event store refused (naked, delivered again)."));
        TRY(metrics_sample_u64(b, "rastro_handler_store_failures_total", NULL,
                               atomic_load(&hm->store_failures)));
    }
    if (d->relay != NULL) {
        const struct relay_metrics *rm = relay_get_metrics(d->relay);
        TRY(metrics_header(b, "rastro_relay_position", "gauge",
                           "Last store position TRACKING_EVENTS acknowledged."));
        TRY(metrics_sample(b, "rastro_relay_position", NULL,
                           (double)atomic_load(&rm->position)));
        TRY(metrics_header(b, "rastro_relay_events_total", "counter",
                           "Events the relay published."));
        TRY(metrics_sample_u64(b, "rastro_relay_events_total", NULL,
                               atomic_load(&rm->published)));
        TRY(metrics_header(b, "rastro_relay_resyncs_total", "counter",
                           "Times a publish was refused or lost and the relay re-read the "
                           "stream's position."));
        TRY(metrics_sample_u64(b, "rastro_relay_resyncs_total", NULL, atomic_load(&rm->resyncs)));
    }
#undef TRY
    return rc;
}

void dist_http_deps(struct dist *d, struct http_deps *deps)
{
    if (d->pub != NULL) {
        deps->submit = submit_to_bus;
        deps->submit_arg = d->pub;
    }
    if (deps->committer == NULL) {
        deps->head = head_of;
        deps->head_arg = d;
    }
    deps->ready = bus_ready;
    deps->ready_arg = d;
    deps->more_metrics = dist_metrics;
    deps->more_metrics_arg = d;
}

void dist_stop_roles(struct dist *d)
{
    handler_stop(d->handler);
    d->handler = NULL;
    relay_stop(d->relay);
    d->relay = NULL;
}

void dist_close(struct dist *d)
{
    dist_stop_roles(d);
    bus_close(d->relay_bus);
    bus_close(d->query_bus);
    natsbus_close(d->nb);
    publisher_free(d->pub);
    memset(d, 0, sizeof(*d));
}

/* --- rastro dlq ---------------------------------------------------------- */

static const char *hget(natsMsg *m, const char *k)
{
    const char *v = NULL;
    return natsMsgHeader_Get(m, k, &v) == NATS_OK ? v : "";
}

int service_dlq(const struct config *cfg, const char *action, int64_t seq)
{
    if (cfg->bus == NULL) {
        fprintf(stderr, "rastro: dlq needs --bus nats://HOST:PORT (or RASTRO_BUS)\n");
        return 2;
    }
    bool replay = strcmp(action, "replay") == 0;
    struct err e;
    err_clear(&e);
    struct natsbus *nb = NULL;
    if (natsbus_open(cfg->bus, cfg->replicas, &nb, &e) != ERR_OK) {
        fprintf(stderr, "rastro: %s\n", e.msg);
        return 1;
    }
    if (!natsbus_wait_ready(nb, 5000)) {
        fprintf(stderr, "rastro: message bus not reachable at %s\n", cfg->bus);
        natsbus_close(nb);
        return 1;
    }
    jsCtx *js = natsbus_js(nb);
    jsStreamInfo *si = NULL;
    jsErrCode je = 0;
    natsStatus s = js_GetStreamInfo(&si, js, NB_STREAM_DLQ, NULL, &je);
    if (s != NATS_OK) {
        fprintf(stderr, "rastro: reading %s: %s\n", NB_STREAM_DLQ, natsStatus_GetText(s));
        natsbus_close(nb);
        return 1;
    }
    uint64_t first = si->State.FirstSeq, last = si->State.LastSeq;
    jsStreamInfo_Destroy(si);
    int status = 0, done = 0;
    struct buf line;
    buf_init(&line, 0);
    for (uint64_t q = first; q <= last && q > 0; q++) {
        if (seq > 0 && q != (uint64_t)seq) {
            continue;
        }
        natsMsg *m = NULL;
        if (js_GetMsg(&m, js, NB_STREAM_DLQ, q, NULL, &je) != NATS_OK) {
            continue;   /* replayed (deleted) already */
        }
        if (!replay) {
            buf_reset(&line);
            struct jsonw w;
            jsonw_init(&w, &line);
            jsonw_obj_open(&w);
            jsonw_kint(&w, "seq", (int64_t)q);
            jsonw_kstr(&w, "subject", hget(m, NB_H_SUBJECT));
            char sid[WIRE_STREAM_HDR_MAX];
            jsonw_kstr(&w, "stream_id",
                       wire_hdr_decode(hget(m, NB_H_STREAM), sid, sizeof(sid)) ? sid : "");
            jsonw_kstr(&w, "reason", hget(m, NB_H_REASON));
            jsonw_kint(&w, "deliveries", strtoll(hget(m, NB_H_DELIVERIES), NULL, 10));
            jsonw_key(&w, "data");
            jsonw_strn(&w, natsMsg_GetData(m), (size_t)natsMsg_GetDataLength(m));
            jsonw_obj_close(&w);
            printf("%s\n", line.p);
            done++;
        } else {
            /* back to the command subject under a fresh message id (the
             * original may still sit in the de-duplication window); the
             * store's idempotency keeps a replay from doubling anything */
            natsMsg *c = NULL;
            s = natsMsg_Create(&c, hget(m, NB_H_SUBJECT), NULL, natsMsg_GetData(m),
                               natsMsg_GetDataLength(m));
            const char **keys = NULL;
            int nk = 0;
            if (s == NATS_OK && natsMsgHeader_Keys(m, &keys, &nk) == NATS_OK) {
                for (int i = 0; i < nk && s == NATS_OK; i++) {
                    if (strncmp(keys[i], "Rastro-", 7) == 0 && strcmp(keys[i], NB_H_REASON) != 0 &&
                        strcmp(keys[i], NB_H_SUBJECT) != 0 && strcmp(keys[i], NB_H_DELIVERIES) != 0) {
                        s = natsMsgHeader_Set(c, keys[i], hget(m, keys[i]));
                    }
                }
                free((void *)keys);
            }
            char id[64];
            snprintf(id, sizeof(id), "replay:%llu", (unsigned long long)q);
            if (s == NATS_OK) {
                s = natsMsgHeader_Set(c, "Nats-Msg-Id", id);
            }
            if (s == NATS_OK) {
                s = js_PublishMsg(NULL, js, c, NULL, &je);
            }
            natsMsg_Destroy(c);
            if (s == NATS_OK) {
                (void)js_DeleteMsg(js, NB_STREAM_DLQ, q, NULL, &je);
                printf("replayed %llu to %s\n", (unsigned long long)q, hget(m, NB_H_SUBJECT));
                done++;
            } else {
                fprintf(stderr, "rastro: replaying %llu: %s\n", (unsigned long long)q,
                        natsStatus_GetText(s));
                status = 1;
            }
        }
        natsMsg_Destroy(m);
    }
    buf_fini(&line);
    if (replay) {
        fprintf(stderr, "%d command(s) replayed\n", done);
    }
    natsbus_close(nb);
    return status;
}
