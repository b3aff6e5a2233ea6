/*
 * h_metrics.c - GET /metrics: every counter rastro keeps, in the Prometheus
 * text exposition format (version 0.0.4). Names follow the conventions:
 * rastro_ prefix, _total for counters, _seconds and _bytes for units.
 * Rendering reads relaxed atomics and a few file sizes; nothing locks the
 * hot path.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/log.h"
#include "core/timeutil.h"
#include "http/http_internal.h"
#include "read/rmcache.h"
#include "proj/projections.h"

static const char *const status_names[SL__COUNT] = {
    "200", "202", "400", "404", "405", "409", "413", "500", "503", "other",
};
static const char *const reject_names[REJ__COUNT] = { "duplicate", "conflict", "invalid" };
static const char *const query_names[QL__COUNT] = { "by_id", "list", "estadisticas" };

static int64_t file_bytes(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? (int64_t)st.st_size : 0;
}

/* The read-model file with its WAL. (Index files are not counted here.) */
static int64_t rm_bytes(const char *path)
{
    char p[4200];
    snprintf(p, sizeof(p), "%s-wal", path);
    return file_bytes(path) + file_bytes(p);
}

/* A counter with two label values. */
static int counter_pair(struct buf *b, const char *name, const char *help, const char *l1,
                        int64_t v1, const char *l2, int64_t v2)
{
    int rc = metrics_header(b, name, "counter", help);
    if (rc == ERR_OK) {
        rc = metrics_sample_u64(b, name, l1, (uint64_t)v1);
    }
    if (rc == ERR_OK) {
        rc = metrics_sample_u64(b, name, l2, (uint64_t)v2);
    }
    return rc;
}

static int render(struct http_server *s, struct buf *b)
{
    char lb[256];
    int rc = ERR_OK;
#define TRY(x) do { if (rc == ERR_OK) { rc = (x); } } while (0)
    const struct http_metrics *m = &s->m;
    int64_t head = http_store_head(s);

    /* commands */
    TRY(metrics_header(b, "rastro_events_stored_total", "counter",
                       "Events appended to the event store by commands of this process, by type "
                       "(with a bus and no store: commands the bus acknowledged)."));
    TRY(metrics_sample_u64(b, "rastro_events_stored_total", "type=\"ImpresionRegistrada\"",
                           atomic_load(&m->stored[KIND_IMPRESION])));
    TRY(metrics_sample_u64(b, "rastro_events_stored_total", "type=\"ConversionRegistrada\"",
                           atomic_load(&m->stored[KIND_CONVERSION])));
    TRY(metrics_header(b, "rastro_store_position", "gauge",
                       "Global position of the last committed event."));
    TRY(metrics_sample(b, "rastro_store_position", NULL, (double)head));
    TRY(metrics_header(b, "rastro_appends_rejected_total", "counter",
                       "Commands not appended, by reason (duplicate: same id and payload again, "
                       "answered with the first answer; conflict: same id, other payload; "
                       "invalid: refused by validation)."));
    for (int i = 0; i < REJ__COUNT; i++) {
        snprintf(lb, sizeof(lb), "reason=\"%s\"", reject_names[i]);
        TRY(metrics_sample_u64(b, "rastro_appends_rejected_total", lb, atomic_load(&m->rejected[i])));
    }
    if (s->deps.committer != NULL) {
        const struct committer_metrics *cm = committer_get_metrics(s->deps.committer);
        TRY(metrics_header(b, "rastro_store_size_bytes", "gauge",
                           "Bytes the event store takes on disk."));
        TRY(metrics_sample(b, "rastro_store_size_bytes", NULL,
                           (double)committer_store_bytes(s->deps.committer)));
        TRY(metrics_header(b, "rastro_append_failures_total", "counter",
                           "Commands failed by an event-store error (answered 503)."));
        TRY(metrics_sample_u64(b, "rastro_append_failures_total", NULL, atomic_load(&cm->failed)));
        TRY(metrics_header(b, "rastro_append_batch_size", "histogram",
                           "Commands per group-commit transaction."));
        TRY(metrics_histogram(b, "rastro_append_batch_size", NULL, &cm->batch_size));
        TRY(metrics_header(b, "rastro_commit_duration_seconds", "histogram",
                           "Time to append one batch and commit it durably (fsync included)."));
        TRY(metrics_histogram(b, "rastro_commit_duration_seconds", NULL, &cm->commit_seconds));
    }

    if (s->deps.projector != NULL) {
        struct projector_stats ps;
        projector_get_stats(s->deps.projector, &ps);
        /* projections */
        TRY(metrics_header(b, "rastro_projection_position", "gauge",
                           "Last event position applied by each projection."));
        for (size_t i = 0; i < proj_count; i++) {
            snprintf(lb, sizeof(lb), "projection=\"%s\"", proj_names[i]);
            TRY(metrics_sample(b, "rastro_projection_position", lb, (double)ps.position));
        }
        TRY(metrics_header(b, "rastro_projection_lag_events", "gauge",
                           "Events committed to the store and not yet applied."));
        TRY(metrics_sample(b, "rastro_projection_lag_events", NULL,
                           (double)(head > ps.position ? head - ps.position : 0)));
        TRY(metrics_header(b, "rastro_projection_lag_seconds", "gauge",
                           "Time since the projector last had every committed event applied (0 when "
                           "caught up)."));
        TRY(metrics_sample(b, "rastro_projection_lag_seconds", NULL,
                           (double)projector_lag_us(s->deps.projector, head) / 1e6));
        TRY(metrics_header(b, "rastro_projection_events_applied_total", "counter",
                           "Events each projection processed (all projections take each event in "
                           "the same transaction)."));
        for (size_t i = 0; i < proj_count; i++) {
            snprintf(lb, sizeof(lb), "projection=\"%s\"", proj_names[i]);
            TRY(metrics_sample_u64(b, "rastro_projection_events_applied_total", lb,
                                   (uint64_t)ps.applied));
        }
        TRY(counter_pair(b, "rastro_projection_events_skipped_total",
                         "Events the projections skipped, by reason (unknown_type: from a newer "
                         "version; invalid: data that does not decode).",
                         "reason=\"unknown_type\"", ps.skipped, "reason=\"invalid\"", ps.invalid));
        TRY(counter_pair(b, "rastro_projection_events_read_total",
                         "Events live projection batches took, by source (memory: handed over "
                         "by this process's committer as it made them durable; store: read "
                         "back from the event store).",
                         "source=\"memory\"", ps.read_memory, "source=\"store\"", ps.read_store));
        TRY(counter_pair(b, "rastro_projection_errors_total",
                         "Projection batches that failed and were retried, by reason (gap: a "
                         "position missing from the log; io: the read models or the store "
                         "failed).",
                         "reason=\"gap\"", ps.errors_gap, "reason=\"io\"",
                         ps.errors - ps.errors_gap));
        const char *ids_path, *lists_path;
        rm_index_paths(projector_rm_index(s->deps.projector), &ids_path, &lists_path);
        TRY(metrics_header(b, "rastro_read_models_size_bytes", "gauge",
                           "Bytes the read models take on disk, by file (with its WAL): the rows "
                           "and statistics, the by-id index, the list index."));
        TRY(metrics_sample(b, "rastro_read_models_size_bytes", "file=\"readmodels\"",
                           (double)rm_bytes(s->deps.rm_path)));
        TRY(metrics_sample(b, "rastro_read_models_size_bytes", "file=\"ids_index\"",
                           (double)rm_bytes(ids_path)));
        TRY(metrics_sample(b, "rastro_read_models_size_bytes", "file=\"lists_index\"",
                           (double)rm_bytes(lists_path)));
        struct err e;
        struct readmodel *rm = http_rm_get(s, &e);
        int64_t imp = 0, conv = 0, stats = 0;
        if (rm != NULL) {
            if (rm_read_begin(rm, &e) == ERR_OK) {
                if (rm_query_rows(rm, &imp, &conv, &stats, &e) != ERR_OK) {
                    log_warn("cannot count read-model rows", "err=\"%s\"", e.msg);
                }
                rm_read_end(rm);
            }
            http_rm_put(s, rm);
        }
        TRY(metrics_header(b, "rastro_read_model_rows", "gauge",
                           "Rows in each read model (estadisticas: as of the last fold,"
                           " up to a second behind)."));
        TRY(metrics_sample(b, "rastro_read_model_rows", "read_model=\"impresiones\"", (double)imp));
        TRY(metrics_sample(b, "rastro_read_model_rows", "read_model=\"conversiones\"", (double)conv));
        TRY(metrics_sample(b, "rastro_read_model_rows", "read_model=\"estadisticas\"", (double)stats));
    }

    /* queries and HTTP */
    TRY(metrics_header(b, "rastro_query_duration_seconds", "histogram",
                       "Time to answer a query from the read models, by kind of query."));
    for (int i = 0; i < QL__COUNT; i++) {
        snprintf(lb, sizeof(lb), "query=\"%s\"", query_names[i]);
        TRY(metrics_histogram(b, "rastro_query_duration_seconds", lb, &m->query_seconds[i]));
    }
    TRY(metrics_header(b, "rastro_http_requests_total", "counter",
                       "HTTP requests answered, by route and status code."));
    for (int rl = 0; rl < RL__COUNT; rl++) {
        for (int sl = 0; sl < SL__COUNT; sl++) {
            uint64_t v = atomic_load(&m->requests[rl][sl]);
            if (v == 0) {
                continue;
            }
            snprintf(lb, sizeof(lb), "route=\"%s\",code=\"%s\"", http_route_name((enum route_label)rl), status_names[sl]);
            TRY(metrics_sample_u64(b, "rastro_http_requests_total", lb, v));
        }
    }
    TRY(metrics_header(b, "rastro_http_requests_in_flight", "gauge",
                       "HTTP requests being handled, this one included."));
    TRY(metrics_sample(b, "rastro_http_requests_in_flight", NULL, (double)atomic_load(&m->in_flight)));
    TRY(metrics_header(b, "rastro_http_commands_unanswered_total", "counter",
                       "Commands whose connection ended while their commit was under way (the "
                       "client reset it, or the server stopped). The event may be stored: a retry "
                       "with the same id gets the answer the first would have."));
    TRY(metrics_sample_u64(b, "rastro_http_commands_unanswered_total", NULL,
                           atomic_load(&m->unanswered)));
    const struct verify_stats *v = s->deps.verify;
    if (v != NULL) {
        TRY(metrics_header(b, "rastro_verify_runs_total", "counter",
                           "Periodic self-checks run (rebuild from the log and compare)."));
        TRY(metrics_sample_u64(b, "rastro_verify_runs_total", NULL, atomic_load(&v->runs)));
        TRY(metrics_header(b, "rastro_verify_failures_total", "counter",
                           "Periodic self-checks that could not complete."));
        TRY(metrics_sample_u64(b, "rastro_verify_failures_total", NULL, atomic_load(&v->failures)));
        TRY(metrics_header(b, "rastro_verify_differences", "gauge",
                           "Rows the last self-check found missing, unexpected or different in "
                           "the read models (0 = consistent)."));
        TRY(metrics_sample(b, "rastro_verify_differences", NULL,
                           (double)atomic_load(&v->differences)));
        TRY(metrics_header(b, "rastro_verify_last_run_timestamp_seconds", "gauge",
                           "Unix time the last self-check completed (0 = never)."));
        TRY(metrics_sample(b, "rastro_verify_last_run_timestamp_seconds", NULL,
                           (double)atomic_load(&v->last_run_unix)));
        TRY(metrics_header(b, "rastro_verify_duration_seconds", "gauge",
                           "How long the last self-check took."));
        TRY(metrics_sample(b, "rastro_verify_duration_seconds", NULL,
                           (double)atomic_load(&v->last_duration_us) / 1e6));
    }
    TRY(metrics_header(b, "rastro_uptime_seconds", "gauge", "Seconds since the server started."));
    TRY(metrics_sample(b, "rastro_uptime_seconds", NULL,
                       (double)(time_mono_us() - s->started_us) / 1e6));
    if (s->deps.cache != NULL) {
        struct rmcache_stats cs;
        rmcache_get_stats(s->deps.cache, &cs);
        const struct metric_u64 lookups[] = { { "hit", cs.hits }, { "miss", cs.misses } };
        TRY(metrics_counters(b, "rastro_query_cache_lookups_total",
                             "Statistics and by-id GETs answered from memory (hit) or from the "
                             "read models (miss).", "result", lookups, ARRAY_LEN(lookups)));
        TRY(metrics_header(b, "rastro_query_cache_entries", "gauge",
                           "Query answers held in memory."));
        TRY(metrics_sample(b, "rastro_query_cache_entries", NULL, (double)cs.entries));
    }
    if (s->deps.more_metrics != NULL) {
        TRY(s->deps.more_metrics(b, s->deps.more_metrics_arg));
    }
#undef TRY
    return rc;
}

enum MHD_Result h_metrics(struct req *r)
{
    struct buf b;
    buf_init(&b, 0);
    enum MHD_Result ret;
    if (render(r->srv, &b) != ERR_OK) {
        ret = http_reply_error(r, MHD_HTTP_INTERNAL_SERVER_ERROR, "cannot render metrics", NULL);
    } else {
        ret = http_reply_typed(r, MHD_HTTP_OK, &b, "text/plain; version=0.0.4; charset=utf-8");
    }
    buf_fini(&b);
    return ret;
}
