/*
 * gen.c - bench tool: appends N synthetic events (impressions and 1 in 10
 * conversions, random UUIDv4 client ids, 10,000 campaigns, 100,000
 * influencers) straight into a data folder's event store through the
 * evstore interface, in batches of 4,096, so the benchmark can measure
 * rebuild, memory and ingest at 1 and 10 million stored events without
 * spending an hour on HTTP first; with a store spec and a batch size it
 * measures each backend's append throughput. Not part of the product.
 *
 *   rastro-gen DIR N [STORE [BATCH]]     (STORE: sqlite or postgres://...)
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/buf.h"
#include "core/timeutil.h"
#include "core/uuid.h"
#include "domain/tracking.h"
#include "store/evstore.h"

#define BATCH 4096

int main(int argc, char **argv)
{
    if (argc < 3 || argc > 5) {
        fprintf(stderr, "usage: rastro-gen DIR N [STORE [BATCH]]\n");
        return 2;
    }
    long long total = atoll(argv[2]);
    const char *spec = argc > 3 ? argv[3] : "sqlite";
    size_t batch = argc > 4 ? (size_t)atoll(argv[4]) : BATCH;
    if (batch < 1 || batch > BATCH) {
        fprintf(stderr, "rastro-gen: BATCH from 1 to %d\n", BATCH);
        return 2;
    }
    struct evstore *s = NULL;
    struct err e;
    if (mkdir(argv[1], 0755) != 0 && errno != EEXIST) {
        fprintf(stderr, "rastro-gen: cannot create %s: %s\n", argv[1], strerror(errno));
        return 1;
    }
    if (evstore_open(spec, argv[1], 0, &s, &e) != ERR_OK) {
        fprintf(stderr, "rastro-gen: %s\n", e.msg);
        return 1;
    }
    struct event_in *ev = calloc(BATCH, sizeof(*ev));
    struct append_out *out = calloc(BATCH, sizeof(*out));
    struct buf *data = calloc(BATCH, sizeof(*data));
    char (*sid)[STREAM_ID_MAX] = calloc(BATCH, STREAM_ID_MAX);
    static const char *monedas[] = { "COP", "USD", "EUR", "MXN" };
    unsigned seed = 12345;
    int64_t t0 = time_mono_us();
    for (long long done = 0; done < total;) {
        size_t n = total - done < (long long)batch ? (size_t)(total - done) : batch;
        for (size_t i = 0; i < n; i++) {
            struct tracking t;
            memset(&t, 0, sizeof(t));
            t.kind = rand_r(&seed) % 10 == 0 ? KIND_CONVERSION : KIND_IMPRESION;
            struct uuid u;
            uuid_v4(&u);
            uuid_format(&u, t.id);
            snprintf(t.campana_id, sizeof(t.campana_id), "camp-%u", 1 + rand_r(&seed) % 10000);
            snprintf(t.influencer_id, sizeof(t.influencer_id), "inf-%u", 1 + rand_r(&seed) % 100000);
            snprintf(t.usuario_id, sizeof(t.usuario_id), "user-%u", 1 + rand_r(&seed) % 1000000);
            strcpy(t.tipo_evento, t.kind == KIND_IMPRESION ? "IMPRESION" : "CONVERSION");
            strcpy(t.user_agent, "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36");
            snprintf(t.ip_address, sizeof(t.ip_address), "203.0.113.%u", 1 + rand_r(&seed) % 254);
            snprintf(t.referrer, sizeof(t.referrer), "https://example.com/p/%u", rand_r(&seed) % 10000);
            t.timestamp_us = time_now_us();
            t.valor = (int64_t)(rand_r(&seed) % 5000000);
            strcpy(t.moneda, monedas[rand_r(&seed) % 4]);
            buf_reset(&data[i]);
            if (tracking_to_json(&t, &data[i]) != ERR_OK) {
                return 1;
            }
            tracking_stream_id(t.kind, t.id, sid[i]);
            ev[i] = (struct event_in){
                .stream_id = sid[i], .expected_version = EVSTORE_NO_STREAM,
                .type = tracking_event_type_name(t.kind), .schema_version = EVENT_SCHEMA_VERSION,
                .recorded_at_us = t.timestamp_us, .data = data[i].p,
                .metadata = "{\"correlation_id\":\"gen\",\"causation_id\":\"gen\",\"client\":\"127.0.0.1\"}",
            };
            uuid_v7(&ev[i].event_id);
        }
        if (evstore_append(s, ev, n, out, &e) != ERR_OK) {
            fprintf(stderr, "rastro-gen: %s\n", e.msg);
            return 1;
        }
        done += (long long)n;
    }
    double secs = (double)(time_mono_us() - t0) / 1e6;
    printf("appended %lld events in %.1f s (%.0f events/s)\n", total, secs, (double)total / secs);
    evstore_close(s);
    for (size_t i = 0; i < BATCH; i++) {
        buf_fini(&data[i]);
    }
    free(ev);
    free(out);
    free(data);
    free(sid);
    return 0;
}
