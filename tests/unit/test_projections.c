/*
 * test_projections.c - projection apply and statistics arithmetic, against
 * a throwaway read-model file: table-driven, and the replay rule (one batch
 * or one event at a time must give the same read models).
 */
#include <pthread.h>
#include <sched.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bus/bus.h"
#include "check.h"
#include "core/buf.h"
#include "core/timeutil.h"
#include "proj/projections.h"
#include "proj/projector.h"
#include "proj/stats.h"
#include "read/money.h"
#include "read/readmodel.h"
#include "read/statsdelta.h"

static struct tracking mk(enum tracking_kind kind, const char *id, const char *camp,
                          const char *infl, int64_t valor, const char *moneda)
{
    struct tracking t;
    memset(&t, 0, sizeof(t));
    t.kind = kind;
    snprintf(t.id, sizeof(t.id), "%s", id);
    t.id_given = true;
    snprintf(t.campana_id, sizeof(t.campana_id), "%s", camp);
    snprintf(t.influencer_id, sizeof(t.influencer_id), "%s", infl);
    strcpy(t.tipo_evento, kind == KIND_IMPRESION ? "IMPRESION" : "CONVERSION");
    t.timestamp_us = 1764324900000000LL;
    t.ts_given = true;
    t.valor = valor;
    snprintf(t.moneda, sizeof(t.moneda), "%s", moneda);
    return t;
}

static void test_stats_table(void)
{
    static const struct {
        enum tracking_kind kind;
        const char *camp, *infl, *moneda;
        int64_t valor;
    } events[] = {
        { KIND_IMPRESION, "c1", "i1", "", 0 },
        { KIND_IMPRESION, "c1", "", "", 0 },
        { KIND_CONVERSION, "c1", "i1", "USD", 1000 },   /* 0.1 */
        { KIND_CONVERSION, "c1", "i2", "USD", 2000 },   /* 0.2 */
        { KIND_CONVERSION, "c1", "", "EUR", 50000 },
        { KIND_IMPRESION, "c2", "i1", "", 0 },
    };
    static const struct {
        enum rm_scope scope;
        const char *key;
        int64_t imp, conv;
        const char *moneda;
        int64_t valor;
    } want[] = {
        { SCOPE_CAMPANA, "c1", 2, 3, "USD", 3000 },
        { SCOPE_CAMPANA, "c1", 2, 3, "EUR", 50000 },
        { SCOPE_CAMPANA, "c2", 1, 0, NULL, 0 },
        { SCOPE_INFLUENCER, "i1", 2, 1, "USD", 1000 },
        { SCOPE_INFLUENCER, "i2", 0, 1, "USD", 2000 },
    };
    struct stats_acc *a = stats_acc_new();
    for (size_t i = 0; i < ARRAY_LEN(events); i++) {
        struct tracking t = mk(events[i].kind, "x", events[i].camp, events[i].infl,
                               events[i].valor, events[i].moneda);
        stats_acc_apply(a, &t, 1000 + (int64_t)i);
    }
    for (size_t i = 0; i < ARRAY_LEN(want); i++) {
        int64_t imp = -1, conv = -1, last = -1;
        CHECKF(stats_acc_get(a, want[i].scope, want[i].key, &imp, &conv, &last), "%s", want[i].key);
        CHECKF(imp == want[i].imp && conv == want[i].conv, "%s: %lld/%lld", want[i].key,
               (long long)imp, (long long)conv);
        if (want[i].moneda != NULL) {
            __int128 v = -1;
            CHECK(stats_acc_get_valor(a, want[i].scope, want[i].key, want[i].moneda, &v));
            CHECKF(v == want[i].valor, "%s %s", want[i].key, want[i].moneda);
        }
    }
    int64_t imp, conv, last;
    CHECK(!stats_acc_get(a, SCOPE_INFLUENCER, "", &imp, &conv, &last));   /* no influencer: not counted */
    CHECK(stats_acc_get(a, SCOPE_CAMPANA, "c1", &imp, &conv, &last) && last == 1004);
    __int128 v;
    CHECK(!stats_acc_get_valor(a, SCOPE_CAMPANA, "c2", "USD", &v));
    stats_acc_free(a);
}

/* Many keys: the accumulator grows (its slots are rebuilt many times),
 * keys past the inline length live on the heap, and after a clear every
 * key is gone and can come back. Each key gets its own counts, so a slot
 * pointing at the wrong entry shows. */
/* Key k's campaign (every 7th longer than a UUID) and influencer names. */
static void many_keys_names(int k, char camp[80], char infl[80])
{
    snprintf(camp, 80, k % 7 ? "c-%d" : "campaign-with-a-long-name-%d-xxxxxxxxxx", k);
    snprintf(infl, 80, "i-%d", k);
}

/* Round 0 folds events in one call, round 1 in the rebuild's parts
 * (hashes, both prefetch stages, then the apply): the same totals. */
static void apply_round(struct stats_acc *a, const struct tracking *t, int64_t at, int round)
{
    if (round == 0) {
        stats_acc_apply(a, t, at);
        return;
    }
    struct stats_hint h;
    stats_acc_hint(a, t, &h);
    stats_acc_prefetch(a, t, &h, 1);
    stats_acc_prefetch(a, t, &h, 2);
    stats_acc_apply_hinted(a, t, at, &h);
}

static void test_stats_many_keys(void)
{
    enum { K = 5000 };
    struct stats_acc *a = stats_acc_new();
    for (int round = 0; round < 2; round++) {
        for (int k = 0; k < K; k++) {
            char camp[80], infl[80];
            many_keys_names(k, camp, infl);
            for (int j = 0; j <= k % 3; j++) {      /* k % 3 + 1 impressions */
                struct tracking t = mk(KIND_IMPRESION, "x", camp, infl, 0, "");
                apply_round(a, &t, 1000 + k, round);
            }
            struct tracking c = mk(KIND_CONVERSION, "x", camp, "", 100 + k, k % 2 ? "USD" : "EUR");
            apply_round(a, &c, 1000 + k, round);
        }
        bool all = true;
        for (int k = 0; k < K && all; k++) {
            char camp[80], infl[80];
            many_keys_names(k, camp, infl);
            int64_t imp = -1, conv = -1, last = -1;
            __int128 v = -1;
            all = stats_acc_get(a, SCOPE_CAMPANA, camp, &imp, &conv, &last) &&
                  imp == k % 3 + 1 && conv == 1 && last == 1000 + k &&
                  stats_acc_get_valor(a, SCOPE_CAMPANA, camp, k % 2 ? "USD" : "EUR", &v) &&
                  v == 100 + k &&
                  !stats_acc_get_valor(a, SCOPE_CAMPANA, camp, k % 2 ? "EUR" : "USD", &v) &&
                  stats_acc_get(a, SCOPE_INFLUENCER, infl, &imp, &conv, &last) &&
                  imp == k % 3 + 1 && conv == 0;
            CHECKF(all, "round %d key %d", round, k);
        }
        int64_t imp, conv, last;
        CHECK(!stats_acc_get(a, SCOPE_CAMPANA, "c-5000", &imp, &conv, &last));
        stats_acc_clear(a);
        CHECK(!stats_acc_get(a, SCOPE_CAMPANA, "c-1", &imp, &conv, &last));
    }
    stats_acc_free(a);
}

static void test_money_format(void)
{
    static const struct {
        __int128 ticks;
        const char *text;
    } cases[] = {
        { 0, "0" }, { 1, "0.0001" }, { 1000, "0.1" }, { 3000, "0.3" }, { 125000, "12.5" },
        { 10000, "1" }, { 1234567891, "123456.7891" }, { -5000, "-0.5" },
        { (__int128)9223372036854775807LL * 4, "3689348814741910.3228" },
    };
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        char out[64];
        money_format(cases[i].ticks, out, sizeof(out));
        CHECK_STR(out, cases[i].text);
        char t[64];
        __int128 back;
        money_ticks_text(cases[i].ticks, t, sizeof(t));
        CHECK(money_parse_ticks(t, &back) == ERR_OK && back == cases[i].ticks);
    }
    /* the most negative total formats without negating it (UB), though at
     * 39 digits it is past what a stored total may hold */
    char out[64];
    money_format(-(__int128)(((unsigned __int128)1 << 126) - 1) * 2 - 2, out, sizeof(out));
    CHECK_STR(out, "-17014118346046923173168730371588410.5728");
    __int128 x;
    CHECK(money_parse_ticks("", &x) != ERR_OK);
    CHECK(money_parse_ticks("1.5", &x) != ERR_OK);
    CHECK(money_parse_ticks("123456789012345678901234567890123456789", &x) != ERR_OK);
}

/* The per-currency list of a statistics row: merged currency by currency,
 * strictly parsed (anything else is corrupt, never guessed at). */
static void test_money_totals_merge(void)
{
    static const char big[] = "USD=99999999999999999999999999999999999999/1";   /* 38 nines */
    static const struct {
        const char *a, *b;
        int rc;
        const char *want;
    } cases[] = {
        { "", "", ERR_OK, "" },
        { "", "USD=5/1", ERR_OK, "USD=5/1" },
        { "USD=5/1", "", ERR_OK, "USD=5/1" },
        { "USD=5/1", "USD=-7/2", ERR_OK, "USD=-2/3" },
        { "COP=1/1,USD=2/1", "EUR=3/1", ERR_OK, "COP=1/1,EUR=3/1,USD=2/1" },
        { "EUR=3/1", "COP=1/1,USD=2/1", ERR_OK, "COP=1/1,EUR=3/1,USD=2/1" },
        { "COP=1/1,MXN=4/4", "COP=9/1,USD=2/1", ERR_OK, "COP=10/2,MXN=4/4,USD=2/1" },
        { "USD=9223372036854775807/1", "USD=9223372036854775807/1", ERR_OK,
          "USD=18446744073709551614/2" },                                   /* past 2^63 */
        { big, big, ERR_TOOBIG, NULL },                                     /* past 2^127 */
        { "USD=1/999999999999999999", "USD=1/999999999999999999", ERR_OK,
          "USD=2/1999999999999999998" },
        { "usd=1/1", "", ERR_INVALID, NULL },
        { "usd=1/1", "USD=1/1", ERR_INVALID, NULL },
        { "USD=1", "USD=1/1", ERR_INVALID, NULL },
        { "USD=1/1,", "USD=1/1", ERR_INVALID, NULL },
        { "USD=/1", "USD=1/1", ERR_INVALID, NULL },
        { "USD=1/", "USD=1/1", ERR_INVALID, NULL },
        { "USD=1.5/1", "USD=1/1", ERR_INVALID, NULL },
        { "USD=1/1,COP=1/1", "EUR=1/1", ERR_INVALID, NULL },               /* unsorted */
        { "USD=1/1,USD=1/1", "EUR=1/1", ERR_INVALID, NULL },               /* repeated */
        { "EUR=1/1", "USD=1/1;COP=2/2", ERR_INVALID, NULL },
        { "USD=1/1234567890123456789", "USD=1/1", ERR_INVALID, NULL },     /* 19-digit count */
        { "USD=123456789012345678901234567890123456789/1", "USD=1/1", ERR_INVALID, NULL },
    };
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        struct buf out;
        buf_init(&out, 0);
        int rc = money_totals_merge(cases[i].a, strlen(cases[i].a), cases[i].b,
                                    strlen(cases[i].b), &out);
        CHECKF(rc == cases[i].rc, "case %zu: rc %d, want %d", i, rc, cases[i].rc);
        if (cases[i].want != NULL && rc == ERR_OK) {
            CHECKF(strcmp(out.len ? out.p : "", cases[i].want) == 0, "case %zu: got '%s'", i,
                   out.len ? out.p : "");
        }
        buf_fini(&out);
    }
}

/* Money totals are summed in the read model by rastro_merge_valores, in
 * 128 bits, across batches; a list that does not parse fails the batch. */
static void test_money_totals_in_db(const char *dir)
{
    char path[400];
    snprintf(path, sizeof(path), "%s/money", dir);
    CHECK(mkdir(path, 0755) == 0);
    snprintf(path, sizeof(path), "%s/money/readmodels.db", dir);
    struct readmodel *rm = NULL;
    struct err e;
    CHECK(readmodel_open(path, RM_WRITER, NULL, &rm, &e) == ERR_OK);
    if (rm == NULL) {
        return;
    }
    static const struct {
        const char *add;
        const char *want;       /* valor_por_moneda after the batch */
    } steps[] = {
        { "USD=9000000000000000000/1", "{\"USD\":900000000000000}" },
        { "USD=9000000000000000000/1", "{\"USD\":1800000000000000}" },   /* past 2^63 ticks */
        { "USD=-1/1", "{\"USD\":1799999999999999.9999}" },
        { "EUR=5000/1", "{\"EUR\":0.5,\"USD\":1799999999999999.9999}" },
        { "", "{\"EUR\":0.5,\"USD\":1799999999999999.9999}" },      /* impressions only */
    };
    struct buf out;
    buf_init(&out, 0);
    for (size_t i = 0; i < ARRAY_LEN(steps); i++) {
        CHECK(rm_begin(rm, &e) == ERR_OK);
        CHECK(rm_stats_add(rm, SCOPE_CAMPANA, "c", steps[i].add[0] ? 0 : 1,
                           steps[i].add[0] ? 1 : 0, 1, steps[i].add, strlen(steps[i].add),
                           &e) == ERR_OK);
        CHECK(rm_commit(rm, &e) == ERR_OK);
        buf_reset(&out);
        CHECK(rm_query_stats(rm, SCOPE_CAMPANA, "c", &out, &e) == ERR_OK);
        CHECKF(strstr(out.p, steps[i].want) != NULL, "step %zu: %s", i, out.p);
    }
    CHECKF(strstr(out.p, "\"total_impresiones\":1,\"total_conversiones\":4") != NULL, "%s",
           out.p);
    readmodel_close(rm);        /* folds the pending statistics into stats */
    sqlite3 *db = NULL;
    CHECK(sqlite3_open(path, &db) == SQLITE_OK &&
          sqlite3_exec(db, "UPDATE stats SET valores='USD=12x/1'", NULL, NULL, NULL) == SQLITE_OK &&
          sqlite3_changes(db) == 1);
    sqlite3_close(db);
    CHECK(readmodel_open(path, RM_WRITER, NULL, &rm, &e) == ERR_OK);
    CHECK(rm_begin(rm, &e) == ERR_OK);
    CHECK(rm_stats_add(rm, SCOPE_CAMPANA, "c", 0, 1, 1, "USD=1/1", 7, &e) == ERR_OK);
    CHECK(rm_commit(rm, &e) == ERR_OK);        /* pending: added at query time */
    buf_reset(&out);
    CHECK(rm_query_stats(rm, SCOPE_CAMPANA, "c", &out, &e) == ERR_IO);   /* not answered wrong */
    CHECKF(strstr(e.msg, "corrupt money total") != NULL, "%s", e.msg);
    buf_fini(&out);
    readmodel_close(rm);        /* its fold fails on the corrupt row: rolled back, logged */
    CHECK(sqlite3_open(path, &db) == SQLITE_OK);
    sqlite3_stmt *st = NULL;
    CHECK(sqlite3_prepare_v2(db, "SELECT count(*) FROM stats_pending", -1, &st, NULL) ==
              SQLITE_OK && sqlite3_step(st) == SQLITE_ROW);
    CHECKF(sqlite3_column_int(st, 0) == 1, "the delta stays pending: %d",
           sqlite3_column_int(st, 0));
    sqlite3_finalize(st);
    sqlite3_close(db);
}

struct fixture {
    char path[300];
    struct readmodel *rm;
    struct stats_acc *acc;
};

static void fx_open(struct fixture *f, const char *dir, const char *name)
{
    struct err e;
    /* one folder each: a data folder holds one set of read models */
    snprintf(f->path, sizeof(f->path), "%s/%s", dir, name);
    if (mkdir(f->path, 0755) != 0) {
        CHECK(!"mkdir");
    }
    snprintf(f->path, sizeof(f->path), "%s/%s/readmodels.db", dir, name);
    CHECK(readmodel_open(f->path, RM_WRITER, NULL, &f->rm, &e) == ERR_OK);
    f->acc = stats_acc_new();
}

static void fx_close(struct fixture *f)
{
    readmodel_close(f->rm);
    stats_acc_free(f->acc);
}

/* Applies events [from, to) in one transaction. */
static void apply_range(struct fixture *f, const struct event_rec *evs, size_t from, size_t to,
                        struct proj_counters *c)
{
    struct err e;
    CHECK(rm_begin(f->rm, &e) == ERR_OK);
    for (size_t i = from; i < to; i++) {
        CHECK(proj_apply(f->rm, f->acc, &evs[i], c, &e) == ERR_OK);
    }
    CHECK(stats_acc_flush(f->acc, f->rm, &e) == ERR_OK);
    CHECK(rm_set_checkpoint(f->rm, "impresiones", evs[to - 1].position, &e) == ERR_OK);
    CHECK(rm_commit(f->rm, &e) == ERR_OK);
}

static void query_all(struct readmodel *rm, struct buf *out)
{
    static const char *keys[] = { "c1", "c2", "i1", "i2", "nope" };
    struct err e;
    for (size_t i = 0; i < ARRAY_LEN(keys); i++) {
        for (int scope = 0; scope <= 1; scope++) {
            CHECK(rm_query_stats(rm, (enum rm_scope)scope, keys[i], out, &e) == ERR_OK);
            for (int kind = 0; kind <= 1; kind++) {
                CHECK(rm_query_list(rm, (enum rm_scope)scope, keys[i], (enum tracking_kind)kind,
                                    100, 0, out, &e) == ERR_OK);
            }
        }
    }
}

static void test_apply_and_replay(const char *dir)
{
    /* event data as the store holds it */
    static const struct {
        const char *type;
        const char *data;
    } raw[] = {
        { "ImpresionRegistrada", "{\"id\":\"e1\",\"campana_id\":\"c1\",\"influencer_id\":\"i1\",\"timestamp\":\"2026-01-01T00:00:00Z\"}" },
        { "ConversionRegistrada", "{\"id\":\"e1\",\"campana_id\":\"c1\",\"influencer_id\":\"i1\",\"timestamp\":\"2026-01-01T00:00:00Z\",\"valor\":0.1,\"moneda\":\"USD\"}" },
        { "ClickRegistrado", "{\"id\":\"k\"}" },                              /* unknown: skipped */
        { "ConversionRegistrada", "{\"id\":\"e2\",\"campana_id\":\"c1\",\"timestamp\":\"2026-01-01T00:00:00Z\",\"valor\":0.2,\"moneda\":\"USD\"}" },
        { "ImpresionRegistrada", "{\"campana_id\":\"c1\"}" },                   /* invalid: no id */
        { "ImpresionRegistrada", "{\"id\":\"e3\",\"campana_id\":\"c1\",\"timestamp\":\"2026-01-01T00:00:00Z\"}" },
        { "ImpresionRegistrada", "{\"id\":\"e4\",\"campana_id\":\"c2\",\"influencer_id\":\"i2\",\"timestamp\":\"2026-01-01T00:00:00Z\"}" },
        { "ConversionRegistrada", "{\"id\":\"e5\",\"campana_id\":\"c1\",\"timestamp\":\"2026-01-01T00:00:00Z\",\"valor\":5,\"moneda\":\"EUR\"}" },
    };
    struct event_rec evs[ARRAY_LEN(raw)];
    for (size_t i = 0; i < ARRAY_LEN(raw); i++) {
        memset(&evs[i], 0, sizeof(evs[i]));
        evs[i].position = (int64_t)i + 1;
        evs[i].stream_id = "s";
        evs[i].type = raw[i].type;
        evs[i].data = raw[i].data;
        evs[i].data_len = strlen(raw[i].data);
        evs[i].metadata = "{}";
        evs[i].recorded_at_us = 1764324900000000LL + (int64_t)i;
    }
    struct fixture one, many;
    fx_open(&one, dir, "one.db");
    fx_open(&many, dir, "many.db");
    struct proj_counters c1 = { 0 }, c2 = { 0 };
    apply_range(&one, evs, 0, ARRAY_LEN(evs), &c1);
    for (size_t i = 0; i < ARRAY_LEN(evs); i++) {
        apply_range(&many, evs, i, i + 1, &c2);
    }
    CHECK(c1.applied == 6 && c1.skipped == 1 && c1.invalid == 1);
    CHECK(c2.applied == c1.applied && c2.skipped == c1.skipped && c2.invalid == c1.invalid);

    struct buf a, b;
    buf_init(&a, 0);
    buf_init(&b, 0);
    query_all(one.rm, &a);
    query_all(many.rm, &b);
    CHECK(a.len > 0 && a.len == b.len && memcmp(a.p, b.p, a.len) == 0);

    struct err e;
    buf_reset(&a);
    CHECK(rm_query_stats(one.rm, SCOPE_CAMPANA, "c1", &a, &e) == ERR_OK);
    CHECK(strstr(a.p, "\"total_impresiones\":2,\"total_conversiones\":3,"
                      "\"valor_total_conversiones\":null,\"tasa_conversion\":150,") != NULL);
    CHECK(strstr(a.p, "\"valor_por_moneda\":{\"EUR\":5,\"USD\":0.3}") != NULL);
    buf_reset(&a);
    CHECK(rm_query_stats(one.rm, SCOPE_INFLUENCER, "i1", &a, &e) == ERR_OK);
    CHECK(strstr(a.p, "\"valor_total_conversiones\":0.1,\"tasa_conversion\":100,") != NULL);
    buf_reset(&a);
    CHECK(rm_query_stats(one.rm, SCOPE_CAMPANA, "nope", &a, &e) == ERR_OK);
    CHECK(strstr(a.p, "\"total_impresiones\":0,\"total_conversiones\":0,\"valor_total_conversiones\":0,"
                      "\"tasa_conversion\":0,\"ultima_actualizacion\":null,\"valor_por_moneda\":{}") != NULL);
    buf_reset(&a);
    CHECK(rm_query_list(one.rm, SCOPE_CAMPANA, "c1", KIND_IMPRESION, 1, 0, &a, &e) == ERR_OK);
    CHECK(strstr(a.p, "\"total\":2,\"limit\":1,\"offset\":0,\"impresiones\":[{\"id\":\"e3\"") != NULL);
    buf_reset(&a);
    CHECK(rm_query_by_id(one.rm, KIND_CONVERSION, "e1", &a, &e) == ERR_OK);
    CHECK(strstr(a.p, "\"valor\":0.1,\"moneda\":\"USD\"") != NULL);
    CHECK(strstr(a.p, "\"position\":2}") != NULL);
    CHECK(rm_query_by_id(one.rm, KIND_IMPRESION, "e5", &a, &e) == ERR_NOTFOUND);
    int64_t pos = 0;
    CHECK(rm_query_position(one.rm, &pos, &e) == ERR_OK && pos == (int64_t)ARRAY_LEN(evs));

    buf_fini(&a);
    buf_fini(&b);
    fx_close(&one);
    fx_close(&many);
}

/* One campaign key in 13 is longer than the statistics map keeps inline. */
static void bulk_key(int i, char *camp, size_t n, char *infl, size_t m)
{
    if (i % 13 == 0) {
        snprintf(camp, n, "campaign-with-a-name-longer-than-kept-inline-%d", i % 3);
    } else {
        snprintf(camp, n, "c%d", i % 13);
    }
    snprintf(infl, m, "i%d", i % 7);
}

/* Stats, lists and counts of every key, in one buffer. */
static void answers(const char *path, struct buf *out)
{
    struct readmodel *rm = NULL;
    struct err e;
    CHECK(readmodel_open(path, RM_WRITER, NULL, &rm, &e) == ERR_OK);   /* opens its index */
    if (rm == NULL) {
        return;
    }
    char camp[96], infl[16];
    for (int i = 0; i < 13 * 7; i++) {
        bulk_key(i, camp, sizeof(camp), infl, sizeof(infl));
        CHECK(rm_query_stats(rm, SCOPE_CAMPANA, camp, out, &e) == ERR_OK);
        CHECK(rm_query_stats(rm, SCOPE_INFLUENCER, infl, out, &e) == ERR_OK);
        CHECK(rm_query_list(rm, SCOPE_CAMPANA, camp, KIND_CONVERSION, 50, 0, out, &e) == ERR_OK);
    }
    int64_t imp = -1, conv = -1, stats = -1, pos = -1;
    CHECK(rm_query_rows(rm, &imp, &conv, &stats, &e) == ERR_OK);
    CHECK(rm_query_position(rm, &pos, &e) == ERR_OK);
    CHECK(buf_printf(out, "rows %lld %lld %lld position %lld", (long long)imp, (long long)conv,
                (long long)stats, (long long)pos) == ERR_OK);
    readmodel_close(rm);
}

/* A flush writes one statistics row a (scope, key) with all its currencies:
 * keys that share their first 15 bytes (what the flush sorts by first), a
 * key of exactly 15 bytes, and one name in both scopes stay apart. */
static void test_flush_groups_by_key(const char *dir)
{
    static const char A[] = "campaign-2026-11-alpha", B[] = "campaign-2026-11-delta",
                      P15[] = "campaign-2026-1";
    static const struct {
        enum tracking_kind kind;
        const char *camp, *infl, *moneda;
        int64_t valor;
    } events[] = {
        { KIND_CONVERSION, A, A, "USD", 10000 },
        { KIND_CONVERSION, B, "", "EUR", 20000 },
        { KIND_CONVERSION, A, "", "EUR", 30000 },
        { KIND_IMPRESION, P15, "", "", 0 },
        { KIND_CONVERSION, "c", "", "COP", 5000 },
        { KIND_CONVERSION, B, "", "EUR", 10000 },
        { KIND_IMPRESION, A, "", "", 0 },
    };
    static const struct {
        enum rm_scope scope;
        const char *key, *once, *twice;     /* after one batch, after the same again */
    } want[] = {
        { SCOPE_CAMPANA, A, "\"total_impresiones\":1,\"total_conversiones\":2,",
          "\"total_impresiones\":2,\"total_conversiones\":4," },
        { SCOPE_CAMPANA, A, "\"valor_por_moneda\":{\"EUR\":3,\"USD\":1}}",
          "\"valor_por_moneda\":{\"EUR\":6,\"USD\":2}}" },
        { SCOPE_CAMPANA, B, "\"total_conversiones\":2,\"valor_total_conversiones\":3,",
          "\"total_conversiones\":4,\"valor_total_conversiones\":6," },
        { SCOPE_CAMPANA, P15, "\"total_impresiones\":1,\"total_conversiones\":0,",
          "\"total_impresiones\":2,\"total_conversiones\":0," },
        { SCOPE_CAMPANA, P15, "\"valor_por_moneda\":{}}", "\"valor_por_moneda\":{}}" },
        { SCOPE_CAMPANA, "c", "\"valor_por_moneda\":{\"COP\":0.5}}",
          "\"valor_por_moneda\":{\"COP\":1}}" },
        { SCOPE_INFLUENCER, A, "\"total_impresiones\":0,\"total_conversiones\":1,",
          "\"total_impresiones\":0,\"total_conversiones\":2," },
        { SCOPE_INFLUENCER, A, "\"valor_por_moneda\":{\"USD\":1}}",
          "\"valor_por_moneda\":{\"USD\":2}}" },
    };
    struct fixture f;
    fx_open(&f, dir, "groups");
    struct err e;
    struct buf out;
    buf_init(&out, 0);
    for (int batch = 0; batch < 2; batch++) {
        CHECK(rm_begin(f.rm, &e) == ERR_OK);
        for (size_t i = 0; i < ARRAY_LEN(events); i++) {
            struct tracking t = mk(events[i].kind, "x", events[i].camp, events[i].infl,
                                   events[i].valor, events[i].moneda);
            stats_acc_apply(f.acc, &t, 1000 + (int64_t)i);
        }
        CHECK(stats_acc_flush(f.acc, f.rm, &e) == ERR_OK);
        CHECK(rm_commit(f.rm, &e) == ERR_OK);
        for (size_t i = 0; i < ARRAY_LEN(want); i++) {
            buf_reset(&out);
            CHECK(rm_query_stats(f.rm, want[i].scope, want[i].key, &out, &e) == ERR_OK);
            const char *w = batch == 0 ? want[i].once : want[i].twice;
            CHECKF(strstr(out.p, w) != NULL, "batch %d, %s: %s", batch, want[i].key, out.p);
        }
    }
    int64_t imp = 0, conv = 0, rows = 0;
    CHECK(rm_query_rows(f.rm, &imp, &conv, &rows, &e) == ERR_OK);
    CHECKF(rows == 0, "%lld statistics rows before the fold", (long long)rows);
    readmodel_close(f.rm);      /* folds */
    CHECK(readmodel_open(f.path, RM_WRITER, NULL, &f.rm, &e) == ERR_OK);
    CHECK(rm_query_rows(f.rm, &imp, &conv, &rows, &e) == ERR_OK);
    CHECKF(rows == 5, "%lld statistics rows", (long long)rows);
    buf_fini(&out);
    fx_close(&f);
}

/* A new SQLite event store in dir/name (its folder in store_dir). */
static struct evstore *new_store(const char *dir, const char *name, char *store_dir, size_t max)
{
    snprintf(store_dir, max, "%s/%s", dir, name);
    CHECK(mkdir(store_dir, 0755) == 0);
    struct evstore *s = NULL;
    struct err e;
    CHECK(evstore_open(NULL, store_dir, 0, &s, &e) == ERR_OK);
    return s;
}

/*
 * The rebuild (PROJ_BULK: a reader thread decodes chunks while the caller
 * applies them, in batches far larger than a chunk) must give exactly what
 * the live projector gives, with unknown and undecodable events among
 * thousands, across chunk and batch boundaries, and stop where told.
 */
static void test_bulk_equals_live(const char *dir)
{
    enum { N = 3000 };
    char store_dir[300], path[400];
    struct err e;
    struct evstore *s = new_store(dir, "store", store_dir, sizeof(store_dir));
    if (s == NULL) {
        return;
    }
    int64_t want_applied = 0, want_skipped = 0, want_invalid = 0, want_conv = 0;
    static char data[N][320];
    struct event_in ev[100];
    for (int base = 0; base < N; base += 100) {
        for (int j = 0; j < 100; j++) {
            int i = base + j;
            char camp[96], infl[16];
            bulk_key(i, camp, sizeof(camp), infl, sizeof(infl));
            const char *type = i % 4 == 1 ? "ConversionRegistrada" : "ImpresionRegistrada";
            if (i % 97 == 5) {
                type = "ClickRegistrado";
                want_skipped++;
            } else if (i % 89 == 7) {
                want_invalid++;     /* no id */
            } else {
                want_applied++;
                want_conv += i % 4 == 1;
            }
            char idf[32] = "";
            if (i % 89 != 7 || i % 97 == 5) {
                snprintf(idf, sizeof(idf), "\"id\":\"e%d\",", i);
            }
            snprintf(data[i], sizeof(data[i]),
                     "{%s\"campana_id\":\"%s\",\"influencer_id\":\"%s\","
                     "\"timestamp\":\"2026-01-01T00:00:00Z\",\"valor\":%d.25,"
                     "\"moneda\":\"%s\"}",
                     idf, camp, infl, i % 50, i % 3 == 0 ? "USD" : i % 3 == 1 ? "EUR" : "COP");
            ev[j] = (struct event_in){ .stream_id = "s", .expected_version = EVSTORE_ANY,
                                       .type = type, .schema_version = 1,
                                       .recorded_at_us = 1764324900000000LL + i,
                                       .data = data[i], .metadata = "{}" };
            uuid_v4(&ev[j].event_id);
        }
        struct append_out out[100];
        CHECK(evstore_append(s, ev, 100, out, &e) == ERR_OK);
    }
    evstore_close(s);

    static const struct {
        const char *name;
        int flags;
        int64_t upto;
    } runs[] = {
        { "live", 0, INT64_MAX },
        { "bulk", PROJ_BULK, INT64_MAX },
        { "part", PROJ_BULK, 1234 },        /* verify's partial rebuild */
    };
    struct buf got[3];
    for (size_t r = 0; r < ARRAY_LEN(runs); r++) {
        snprintf(path, sizeof(path), "%s/%s", dir, runs[r].name);
        CHECK(mkdir(path, 0755) == 0);
        snprintf(path, sizeof(path), "%s/%s/readmodels.db", dir, runs[r].name);
        struct projector *p = NULL;
        CHECK(projector_new(NULL, store_dir, path, NULL, runs[r].flags, &p, &e) == ERR_OK);
        if (p == NULL) {
            return;
        }
        CHECK(projector_run_to(p, runs[r].upto, &e) == ERR_OK);
        struct projector_stats ps;
        projector_get_stats(p, &ps);
        int64_t want_pos = runs[r].upto == INT64_MAX ? N : runs[r].upto;
        CHECK(ps.position == want_pos);
        if (runs[r].upto == INT64_MAX) {
            CHECK(ps.applied == want_applied && ps.skipped == want_skipped &&
                  ps.invalid == want_invalid);
        }
        projector_free(p);
        buf_init(&got[r], 0);
        answers(path, &got[r]);
    }
    CHECK(got[0].len > 0 && got[0].len == got[1].len && memcmp(got[0].p, got[1].p, got[0].len) == 0);
    CHECK(got[2].len > 0 && strstr(got[2].p, "position 1234") != NULL);
    char want[96];
    snprintf(want, sizeof(want), "rows %lld %lld ", (long long)(want_applied - want_conv),
             (long long)want_conv);
    CHECK(strstr(got[1].p, want) != NULL);
    for (size_t r = 0; r < ARRAY_LEN(runs); r++) {
        buf_fini(&got[r]);
    }
}

/*
 * The feed (projector_feed): events handed over as the HTTP layer does (the
 * command parsed, defaults filled, the event data its JSON) must leave the
 * same read models as the same events read back from the store; a gap in
 * what is fed, or more than the ring holds, makes the projector read the
 * store for what it lacks. Store: FEED_N events; fed: 1-100, then 151 on
 * (a gap), which overflows the 4,096-event ring at 4,247 and starts it again
 * there, so a batch reads 1-4,246 from the store and the rest from memory.
 */
#define FEED_N 5000

/* A store that breaks evstore_read's "up to max": it hands over 7 more
 * than asked (evstore_js did, filling a gap on top of a fetch, until the
 * fourteenth session). The projector must keep to its chunk and read the
 * extra ones again. */
struct greedy_store {
    struct evstore base;
    struct evstore *inner;
    int64_t over;           /* reads that delivered more than asked */
};

struct greedy_count {
    evstore_cb cb;
    void *arg;
    size_t n, max;
    int64_t *over;
};

static int greedy_cb(const struct event_rec *ev, void *arg)
{
    struct greedy_count *g = arg;
    if (++g->n == g->max + 1) {
        (*g->over)++;
    }
    return g->cb(ev, g->arg);
}

static int greedy_read(struct evstore *base, int64_t from, size_t max, evstore_cb cb, void *arg,
                       struct err *e)
{
    struct greedy_store *g = (struct greedy_store *)base;
    struct greedy_count c = { .cb = cb, .arg = arg, .max = max, .over = &g->over };
    return evstore_read(g->inner, from, max + 7, greedy_cb, &c, e);
}

static int greedy_head(struct evstore *base, int64_t *position, struct err *e)
{
    return evstore_head(((struct greedy_store *)base)->inner, position, e);
}

static int greedy_size(struct evstore *base, int64_t *bytes, struct err *e)
{
    return evstore_size_bytes(((struct greedy_store *)base)->inner, bytes, e);
}

static int greedy_version(struct evstore *base, const char *stream_id, int64_t *version,
                          int64_t *last_position, struct err *e)
{
    return evstore_stream_version(((struct greedy_store *)base)->inner, stream_id, version,
                                  last_position, e);
}

static void greedy_close(struct evstore *base)
{
    /* the inner store and the counter outlive the projector: the test
     * reads the counter after projector_free */
    evstore_close(((struct greedy_store *)base)->inner);
}

static const struct evstore_ops greedy_ops = {
    .name = "greedy", .read = greedy_read, .head = greedy_head, .size_bytes = greedy_size,
    .stream_version = greedy_version, .close = greedy_close,
};

static void test_feed(const char *dir)
{
    char store_dir[512], path[600];
    struct err e;
    struct evstore *s = new_store(dir, "feedstore", store_dir, sizeof(store_dir));
    if (s == NULL) {
        return;
    }
    static struct tracking cmd[FEED_N];
    static struct buf data[FEED_N];
    static char sid[FEED_N][STREAM_ID_MAX];
    int64_t pos[FEED_N];
    for (int i = 0; i < FEED_N; i++) {
        char camp[96], infl[16], body[600];
        bulk_key(i, camp, sizeof(camp), infl, sizeof(infl));
        enum tracking_kind kind = i % 4 == 1 ? KIND_CONVERSION : KIND_IMPRESION;
        snprintf(body, sizeof(body),
                 "{\"campa\xc3\xb1" "a_id\":\"%s\",\"influencer_id\":\"%s\","
                 "\"usuario_id\":\"u\\u00f1%d\",\"user_agent\":\"Mozilla \\\"q\\\" \\\\ %d\","
                 "\"referrer\":\"https://e.example/?a=1&b=%d\"%s%s}",
                 camp, infl, i, i, i,
                 i % 3 == 0 ? ",\"timestamp\":\"2026-01-01T10:00:00.5+02:00\"" : "",
                 kind == KIND_CONVERSION
                     ? (i % 2 ? ",\"tipo_conversion\":\"VENTA\",\"valor\":12.3456,\"moneda\":\"EUR\""
                              : ",\"tipo_conversion\":\"REGISTRO\",\"valor\":\"7\",\"moneda\":\"USD\"")
                     : "");
        CHECKF(tracking_parse_command(kind, body, strlen(body), &cmd[i], &e) == ERR_OK,
               "%.200s: %s", body, e.msg);
        char id[40];
        snprintf(id, sizeof(id), "feed-%d", i);
        tracking_fill_defaults(&cmd[i], id, 1764324900000000LL + i);
        tracking_stream_id(kind, cmd[i].id, sid[i]);
        buf_init(&data[i], 0);
        CHECK(tracking_to_json(&cmd[i], &data[i]) == ERR_OK);
        struct event_in ev = { .stream_id = sid[i], .expected_version = EVSTORE_NO_STREAM,
                               .type = tracking_event_type_name(kind), .schema_version = 1,
                               .recorded_at_us = 1764324900000000LL + i, .data = data[i].p,
                               .metadata = "{}" };
        uuid_v4(&ev.event_id);
        struct append_out out;
        CHECK(evstore_append(s, &ev, 1, &out, &e) == ERR_OK && out.status == ERR_OK);
        pos[i] = out.position;
    }
    evstore_close(s);
    /* 0: read from the store; 1: fed in memory (but for 50); 2: read from a
     * store that delivers more than asked */
    struct buf got[3];
    static struct greedy_store greedy = { .base = { .ops = &greedy_ops } };
    for (int fed = 0; fed < 3; fed++) {
        snprintf(path, sizeof(path), "%s/feed%d", dir, fed);
        CHECK(mkdir(path, 0755) == 0);
        snprintf(path, sizeof(path), "%s/feed%d/readmodels.db", dir, fed);
        struct projector *p = NULL;
        if (fed == 2) {
            CHECK(evstore_open(NULL, store_dir, 0, &greedy.inner, &e) == ERR_OK);
            CHECK(projector_new_from(&greedy.base, path, NULL, 0, &p, &e) == ERR_OK);
        } else {
            CHECK(projector_new(NULL, store_dir, path, NULL, 0, &p, &e) == ERR_OK);
        }
        if (p == NULL) {
            return;
        }
        for (int i = 0; fed == 1 && i < FEED_N; i++) {
            if (i < 100 || i >= 150) {
                projector_feed(p, pos[i], 1764324900000000LL + i, &cmd[i]);
            }
        }
        CHECK(projector_run_to(p, INT64_MAX, &e) == ERR_OK);
        struct projector_stats ps;
        projector_get_stats(p, &ps);
        CHECKF(ps.position == FEED_N && ps.applied == FEED_N, "position %lld applied %lld",
               (long long)ps.position, (long long)ps.applied);
        CHECKF(fed == 1 ? ps.read_memory == FEED_N - 4246 && ps.read_store == 4246
                        : ps.read_memory == 0 && ps.read_store == FEED_N,
               "fed %d: %lld from memory, %lld from the store", fed, (long long)ps.read_memory,
               (long long)ps.read_store);
        projector_free(p);
        buf_init(&got[fed], 0);
        answers(path, &got[fed]);
        struct readmodel *rm = NULL;     /* every record whole, by id */
        CHECK(readmodel_open(path, RM_WRITER, NULL, &rm, &e) == ERR_OK);
        for (int i = 0; rm != NULL && i < FEED_N; i++) {
            CHECK(rm_query_by_id(rm, cmd[i].kind, cmd[i].id, &got[fed], &e) == ERR_OK);
        }
        readmodel_close(rm);
    }
    CHECKF(got[0].len > 0 && got[0].len == got[1].len &&
               memcmp(got[0].p, got[1].p, got[0].len) == 0,
           "fed and read back differ (%zu and %zu bytes)", got[0].len, got[1].len);
    CHECKF(greedy.over > 0, "the greedy store never delivered more than asked");
    CHECKF(got[0].len == got[2].len && memcmp(got[0].p, got[2].p, got[0].len) == 0,
           "read from a store that gives too much differs (%zu and %zu bytes)", got[0].len,
           got[2].len);
    for (int i = 0; i < 3; i++) {
        buf_fini(&got[i]);
    }
    for (int i = 0; i < FEED_N; i++) {
        buf_fini(&data[i]);
    }
}

static atomic_bool hogs_stop;

static void *hog(void *arg)
{
    (void)arg;
    volatile uint64_t n = 0;
    while (!atomic_load_explicit(&hogs_stop, memory_order_relaxed)) {
        n++;
    }
    return NULL;
}

/*
 * The live projector's batch thread runs at the lowest priority; with every
 * CPU busy at normal priority it gets next to nothing, and the catch-up
 * thread must then apply the events itself once they are URGENT_MS old.
 * Measured here with two busy threads a CPU: without it this backlog took
 * over 15 s (and 11 s with one busy thread a CPU); with it, 2-3 s. The
 * busy threads stop when the test does (15 s at most).
 */
static void test_starved_batch_thread(const char *dir)
{
    enum { N = 30000, CHUNK_EV = 500 };
    char store_dir[300], path[400];
    snprintf(path, sizeof(path), "%s/readmodels.db", store_dir);
    struct err e;
    struct evstore *s = new_store(dir, "starve", store_dir, sizeof(store_dir));
    if (s == NULL) {
        return;
    }
    static char data[CHUNK_EV][200];
    static char sid[CHUNK_EV][48];
    struct event_in ev[CHUNK_EV];
    struct append_out out[CHUNK_EV];
    for (int base = 0; base < N; base += CHUNK_EV) {
        for (int j = 0; j < CHUNK_EV; j++) {
            int i = base + j;
            snprintf(sid[j], sizeof(sid[j]), "impresion:s%d", i);
            snprintf(data[j], sizeof(data[j]),
                     "{\"id\":\"s%d\",\"campana_id\":\"c%d\",\"influencer_id\":\"i%d\","
                     "\"timestamp\":\"2026-01-01T00:00:00Z\"}", i, i % 100, i % 1000);
            ev[j] = (struct event_in){ .stream_id = sid[j], .expected_version = EVSTORE_NO_STREAM,
                                       .type = "ImpresionRegistrada", .schema_version = 1,
                                       .recorded_at_us = 1764324900000000LL + i,
                                       .data = data[j], .metadata = "{}" };
            uuid_v4(&ev[j].event_id);
        }
        CHECK(evstore_append(s, ev, CHUNK_EV, out, &e) == ERR_OK);
    }
    evstore_close(s);

    /* two a CPU this process may run on (its affinity, not the host's count) */
    cpu_set_t set;
    int ncpu = sched_getaffinity(0, sizeof(set), &set) == 0 ? CPU_COUNT(&set) : 2;
    int nhogs = ncpu > 0 && ncpu <= 32 ? 2 * ncpu : 4;
    pthread_t hogs[64];
    atomic_store(&hogs_stop, false);
    for (int i = 0; i < nhogs; i++) {
        CHECK(pthread_create(&hogs[i], NULL, hog, NULL) == 0);
    }
    struct bus *bus = bus_local_new(N);
    struct projector *p = NULL;
    CHECK(projector_new(NULL, store_dir, path, bus, 0, &p, &e) == ERR_OK);
    int64_t t0 = time_mono_us();
    if (p != NULL) {
        CHECK(projector_start(p, &e) == ERR_OK);
        while (projector_position(p) < N && time_mono_us() - t0 < 15 * 1000000LL) {
            usleep(10 * 1000);
        }
    }
    int64_t took_ms = (time_mono_us() - t0) / 1000;
    atomic_store(&hogs_stop, true);
    for (int i = 0; i < nhogs; i++) {
        pthread_join(hogs[i], NULL);
    }
    CHECKF(p != NULL && projector_position(p) == N, "%lld of %d events applied in %lld ms "
           "with %d busy threads", p != NULL ? (long long)projector_position(p) : -1LL, N,
           (long long)took_ms, nhogs);
    struct projector_stats ps = { 0 };
    if (p != NULL) {
        projector_get_stats(p, &ps);
    }
    fprintf(stderr, "starved batch thread: %d events applied in %lld ms (%lld batches) beside %d "
            "busy threads\n", N, (long long)took_ms, (long long)ps.batches, nhogs);
    projector_free(p);
    bus_close(bus);
}


/* Rows of a table, through a connection of its own (what is on disk). */
static int count_rows(const char *path, const char *table)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    char sql[128];
    snprintf(sql, sizeof(sql), "SELECT count(*) FROM %s", table);
    int n = -1;
    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK &&
        sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW) {
        n = sqlite3_column_int(st, 0);
    }
    sqlite3_finalize(st);
    sqlite3_close(db);
    return n;
}

/* A copy of the read models at path as a crash would leave them (VACUUM
 * INTO: one consistent snapshot), in a folder of its own (name) under
 * dir, so a new writer can open it beside the first; its path in copy. */
static void crash_copy(const char *path, const char *dir, const char *name, char *copy,
                       size_t max)
{
    snprintf(copy, max, "%s/%s", dir, name);
    CHECK(mkdir(copy, 0755) == 0);
    snprintf(copy, max, "%s/%s/readmodels.db", dir, name);
    sqlite3 *db = NULL;
    char sql[600];
    snprintf(sql, sizeof(sql), "VACUUM INTO '%s'", copy);
    CHECK(sqlite3_open(path, &db) == SQLITE_OK &&
          sqlite3_exec(db, sql, NULL, NULL, NULL) == SQLITE_OK);
    sqlite3_close(db);
}

/* The live writer checkpoints its WAL itself (walpace.h),
 * also at open for what a stopped process left in it: a folder as a crash
 * leaves it (the main file and its WAL, copied while the writer is open),
 * opened by a writer, holds the batch in the main file alone. */
static void test_written_out_at_open(const char *dir)
{
    char a[400], b[400], c[400], from[420], to[420];
    snprintf(a, sizeof(a), "%s/wo-a", dir);
    snprintf(b, sizeof(b), "%s/wo-b", dir);
    snprintf(c, sizeof(c), "%s/wo-c", dir);
    CHECK(mkdir(a, 0755) == 0 && mkdir(b, 0755) == 0 && mkdir(c, 0755) == 0);
    snprintf(from, sizeof(from), "%s/readmodels.db", a);
    struct readmodel *rm = NULL;
    struct err e;
    CHECK(readmodel_open(from, RM_WRITER, NULL, &rm, &e) == ERR_OK);
    if (rm == NULL) {
        return;
    }
    CHECK(rm_begin(rm, &e) == ERR_OK);
    CHECK(rm_stats_add(rm, SCOPE_CAMPANA, "c", 1, 0, 1, NULL, 0, &e) == ERR_OK);
    CHECK(rm_commit(rm, &e) == ERR_OK);
    snprintf(to, sizeof(to), "%s/readmodels.db", b);
    check_copy_file(from, to);
    snprintf(from, sizeof(from), "%s/readmodels.db-wal", a);
    snprintf(to, sizeof(to), "%s/readmodels.db-wal", b);
    check_copy_file(from, to);
    readmodel_close(rm);
    snprintf(from, sizeof(from), "%s/readmodels.db", b);
    struct readmodel *crashed = NULL;
    CHECKF(readmodel_open(from, RM_WRITER, NULL, &crashed, &e) == ERR_OK, "%s", e.msg);
    snprintf(to, sizeof(to), "%s/readmodels.db", c);
    check_copy_file(from, to);      /* the main file alone, while it is open */
    CHECKF(count_rows(to, "stats_pending") == 1, "main file without its WAL: %d rows",
           count_rows(to, "stats_pending"));
    readmodel_close(crashed);
}

/* The statistics record format: what goes in comes out, and a truncated
 * list is an error, never a short read. */
static int collect_rec(void *arg, const struct sdelta_rec *r)
{
    struct buf *b = arg;
    return buf_printf(b, "%d|%.*s|%lld|%lld|%lld|%.*s;", r->scope, (int)r->klen, r->key,
                      (long long)r->imp, (long long)r->conv, (long long)r->last, (int)r->vlen,
                      r->vlen > 0 ? r->valores : "");
}

static void test_statsdelta(void)
{
    static const struct sdelta_rec recs[] = {
        { 0, "c1", 2, 3, 0, 100, "", 0 },
        { 1, "i1", 2, 0, 2, 90, "USD=125000/2", 12 },
        { 0, "c1", 2, 1, 1, 50, "COP=10/1", 8 },
        { 0, "", 0, 1, 0, -5, "", 0 },      /* empty key, negative time: carried as is */
        { 1, "i1", 2, -1, 0, 200, "USD=-5/0", 8 },
    };
    struct buf b, got;
    buf_init(&b, 0);
    buf_init(&got, 0);
    for (size_t i = 0; i < ARRAY_LEN(recs); i++) {
        CHECK(sdelta_rec_put(&b, &recs[i]) == ERR_OK);
    }
    CHECK(sdelta_rec_each(b.p, b.len, collect_rec, &got) == ERR_OK);
    CHECKF(got.p != NULL && strcmp(got.p, "0|c1|3|0|100|;1|i1|0|2|90|USD=125000/2;"
                                          "0|c1|1|1|50|COP=10/1;0||1|0|-5|;1|i1|-1|0|200|USD=-5/0;") == 0,
           "%s", got.p);
    for (size_t cut = 1; cut < b.len; cut++) {     /* every truncation but the record ends */
        buf_reset(&got);
        int rc = sdelta_rec_each(b.p, cut, collect_rec, &got);
        CHECK(rc == ERR_OK || rc == ERR_IO);
        if (rc == ERR_OK) {     /* only at a record boundary */
            size_t n = 0;
            struct buf one;
            buf_init(&one, 0);
            for (size_t i = 0; i < ARRAY_LEN(recs) && one.len < cut; i++) {
                CHECK(sdelta_rec_put(&one, &recs[i]) == ERR_OK);
                n = one.len;
            }
            CHECKF(n == cut, "cut at %zu decoded without error", cut);
            buf_fini(&one);
        }
    }
    /* the map sums per key, keeps the latest time, merges currencies, and
     * walks keys in the stats table's order */
    struct sdelta *d = sdelta_new();
    for (size_t i = 0; i < ARRAY_LEN(recs); i++) {
        CHECK(sdelta_add(d, &recs[i]) == ERR_OK);
    }
    CHECK(sdelta_count(d) == 3);
    const struct sdelta_rec *c1 = sdelta_get(d, 0, "c1");
    CHECK(c1 != NULL && c1->imp == 4 && c1->conv == 1 && c1->last == 100 && c1->vlen == 8);
    const struct sdelta_rec *i1 = sdelta_get(d, 1, "i1");
    CHECKF(i1 != NULL && i1->imp == -1 && i1->last == 200 &&
               strncmp(i1->valores, "USD=124995/2", i1->vlen) == 0 && i1->vlen == 12,
           "%.*s", i1 ? (int)i1->vlen : 0, i1 ? i1->valores : "");
    CHECK(sdelta_get(d, 1, "c1") == NULL && sdelta_get(d, 0, "i1") == NULL);
    buf_reset(&got);
    size_t n = 0;
    const struct sdelta_rec **v = sdelta_sorted(d, &n);
    for (size_t i = 0; i < n; i++) {
        CHECK(collect_rec(&got, v[i]) == ERR_OK);
    }
    CHECKF(n == 3 && strcmp(got.p, "0||1|0|-5|;0|c1|4|1|100|COP=10/1;1|i1|-1|2|200|USD=124995/2;") == 0,
           "%s", got.p);
    sdelta_retire(d, v[1]);     /* folded: no longer answered, no longer listed */
    free(v);
    CHECK(sdelta_get(d, 0, "c1") == NULL && sdelta_get(d, 1, "i1") != NULL);
    v = sdelta_sorted(d, &n);
    CHECK(n == 2 && v[0]->klen == 0 && v[1]->scope == 1);
    free(v);
    CHECK(sdelta_key_cmp(0, "b", 1, 1, "a", 1) < 0 && sdelta_key_cmp(1, "ab", 2, 1, "a", 1) > 0 &&
          sdelta_key_cmp(1, "a", 1, 1, "ab", 2) < 0 && sdelta_key_cmp(0, "a\xff", 2, 0, "a\x01", 2) > 0 &&
          sdelta_key_cmp(0, "x", 1, 0, "x", 1) == 0);
    struct sdelta_rec bad = { 0, "c1", 2, 0, 0, 0, "USD=x/1", 7 };
    CHECK(sdelta_add(d, &bad) != ERR_OK);
    struct sdelta_rec big = { 0, "c1", 2, INT64_MAX, 0, 0, "", 0 };
    CHECK(sdelta_add(d, &big) == ERR_TOOBIG);
    for (int i = 0; i < 5000; i++) {        /* growth keeps every key */
        char k[16];
        snprintf(k, sizeof(k), "k%d", i);
        struct sdelta_rec r = { 1, k, strlen(k), i, 0, 0, "", 0 };
        CHECK(sdelta_add(d, &r) == ERR_OK);
    }
    const struct sdelta_rec *k4 = sdelta_get(d, 1, "k4999");
    CHECK(sdelta_count(d) == 5003 && k4 != NULL && k4->imp == 4999);
    CHECK(sdelta_get(d, 0, "c1") == NULL);      /* retired stays retired across growth */
    sdelta_clear(d);
    CHECK(sdelta_count(d) == 0 && sdelta_get(d, 0, "c1") == NULL);
    /* the fold's order with keys that tie on their first 15 bytes, are
     * prefixes of each other, hold bytes above 0x7f or a NUL, in both
     * scopes, added in no particular order: strictly increasing by
     * sdelta_key_cmp, every key once */
    static const struct {
        int scope;
        const char *key;
        size_t klen;
    } keys[] = {
        { 1, "camp-0000000000001", 18 }, { 1, "camp-0000000000000", 18 },
        { 1, "camp-000000000000", 17 },  { 1, "camp-00000000000", 16 },
        { 1, "camp-0000000000", 15 },    { 1, "camp-000000000", 14 },
        { 0, "camp-0000000000", 15 },    { 1, "", 0 },
        { 1, "\xc3\xb1", 2 },            { 1, "\xc3", 1 },
        { 1, "a\0b", 3 },                { 1, "a", 1 },
        { 1, "a\0", 2 },                 { 1, "a\x01", 2 },
        { 0, "zzzzzzzzzzzzzzzzzzzz", 20 }, { 0, "zzzzzzzzzzzzzzzzzzzy", 20 },
        { 0, "zzzzzzzzzzzzzzz", 15 },    { 0, "b", 1 },
    };
    for (size_t i = 0; i < ARRAY_LEN(keys); i++) {
        size_t j = (i * 7) % ARRAY_LEN(keys);      /* 7 is coprime with 18: a shuffle */
        struct sdelta_rec r = { keys[j].scope, keys[j].key, keys[j].klen, 1, 0, 0, "", 0 };
        CHECK(sdelta_add(d, &r) == ERR_OK);
    }
    v = sdelta_sorted(d, &n);
    CHECKF(n == ARRAY_LEN(keys), "%zu keys sorted", n);
    for (size_t i = 1; i < n; i++) {
        CHECKF(sdelta_key_cmp(v[i - 1]->scope, v[i - 1]->key, v[i - 1]->klen, v[i]->scope,
                              v[i]->key, v[i]->klen) < 0,
               "sorted[%zu] (%d, %.*s) after sorted[%zu] (%d, %.*s)", i - 1, v[i - 1]->scope,
               (int)v[i - 1]->klen, v[i - 1]->key, i, v[i]->scope, (int)v[i]->klen, v[i]->key);
    }
    free(v);
    sdelta_free(d);
    buf_fini(&b);
    buf_fini(&got);
}

/* A live writer's statistics: pending after a batch (stats_pending on
 * disk, added by queries of the writer and of readers), folded into stats
 * a second later or when the writer closes, and read back from
 * stats_pending by the next writer after a crash. */
static void test_stats_pending(const char *dir)
{
    struct fixture f;
    struct err e;
    fx_open(&f, dir, "pending");
    struct readmodel *reader = NULL;
    CHECK(readmodel_open(f.path, RM_READER, readmodel_index(f.rm), &reader, &e) == ERR_OK);
    static const struct {
        const char *camp, *infl, *moneda;
        int64_t valor;
    } batch[] = {
        { "p1", "q1", "", 0 }, { "p1", "q2", "USD", 1500 }, { "p2", "q1", "USD", 25 },
        { "p1", "", "EUR", 7 },
    };
    struct buf out;
    buf_init(&out, 0);
    for (int round = 0; round < 2; round++) {
        CHECK(rm_begin(f.rm, &e) == ERR_OK);
        for (size_t i = 0; i < ARRAY_LEN(batch); i++) {
            struct tracking t = mk(batch[i].moneda[0] ? KIND_CONVERSION : KIND_IMPRESION, "x",
                                   batch[i].camp, batch[i].infl, batch[i].valor, batch[i].moneda);
            stats_acc_apply(f.acc, &t, 1000 + (int64_t)i);
        }
        CHECK(stats_acc_flush(f.acc, f.rm, &e) == ERR_OK);
        CHECK(rm_commit(f.rm, &e) == ERR_OK);
    }
    CHECKF(count_rows(f.path, "stats_pending") == 2 && count_rows(f.path, "stats") == 0,
           "pending %d, stats %d", count_rows(f.path, "stats_pending"),
           count_rows(f.path, "stats"));
    static const struct {
        enum rm_scope scope;
        const char *key, *want;
    } want[] = {
        { SCOPE_CAMPANA, "p1", "\"total_impresiones\":2,\"total_conversiones\":4,"
                               "\"valor_total_conversiones\":null" },
        { SCOPE_CAMPANA, "p1", "\"valor_por_moneda\":{\"EUR\":0.0014,\"USD\":0.3}" },
        { SCOPE_CAMPANA, "p2", "\"total_conversiones\":2,\"valor_total_conversiones\":0.005," },
        { SCOPE_INFLUENCER, "q1", "\"total_impresiones\":2,\"total_conversiones\":2" },
        { SCOPE_INFLUENCER, "q2", "\"valor_por_moneda\":{\"USD\":0.3}" },
        { SCOPE_INFLUENCER, "nope", "\"total_impresiones\":0,\"total_conversiones\":0" },
    };
    /* the same answers: pending (writer, reader, a writer after a crash),
     * folded by time, folded at close */
    for (int phase = 0; phase < 5; phase++) {
        struct readmodel *q = phase == 1 ? reader : f.rm;
        struct readmodel *crashed = NULL;
        if (phase == 2) {
            char copy[400];
            crash_copy(f.path, dir, "pending-crash", copy, sizeof(copy));
            CHECK(readmodel_open(copy, RM_WRITER, NULL, &crashed, &e) == ERR_OK);
            q = crashed;
        }
        if (phase == 3) {
            CHECK(rm_fold_due(f.rm) == 0);      /* 6 keys, less than a second */
            usleep(1100 * 1000);
            CHECK(rm_fold_due(f.rm) == 1);
            CHECK(rm_begin(f.rm, &e) == ERR_OK);
            CHECK(rm_stats_add(f.rm, SCOPE_INFLUENCER, "nobody", 0, 0, 1, NULL, 0, &e) == ERR_OK);
            CHECK(rm_commit(f.rm, &e) == ERR_OK);      /* a batch: pending, not folded */
            CHECK(count_rows(f.path, "stats_pending") == 3 && count_rows(f.path, "stats") == 0);
            CHECK(rm_fold(f.rm, &e) == ERR_OK);
            CHECK(rm_fold_due(f.rm) == 0);
            CHECKF(count_rows(f.path, "stats_pending") == 0 && count_rows(f.path, "stats") == 5,
                   "after the fold: pending %d, stats %d", count_rows(f.path, "stats_pending"),
                   count_rows(f.path, "stats"));
        }
        if (phase == 4) {
            CHECK(rm_begin(f.rm, &e) == ERR_OK);
            CHECK(rm_stats_add(f.rm, SCOPE_INFLUENCER, "nobody", 0, 0, 2, NULL, 0, &e) == ERR_OK);
            CHECK(rm_commit(f.rm, &e) == ERR_OK);
            CHECK(count_rows(f.path, "stats_pending") == 1);
            readmodel_close(reader);
            reader = NULL;
            readmodel_close(f.rm);
            CHECK(count_rows(f.path, "stats_pending") == 0 && count_rows(f.path, "stats") == 5);
            CHECK(readmodel_open(f.path, RM_WRITER, NULL, &f.rm, &e) == ERR_OK);
            q = f.rm;
        }
        for (size_t i = 0; i < ARRAY_LEN(want); i++) {
            buf_reset(&out);
            CHECK(rm_query_stats(q, want[i].scope, want[i].key, &out, &e) == ERR_OK);
            CHECKF(out.p != NULL && strstr(out.p, want[i].want) != NULL, "phase %d, %s: %s",
                   phase, want[i].key, out.p);
        }
        buf_reset(&out);
        CHECK(rm_query_list(q, SCOPE_CAMPANA, "p1", KIND_CONVERSION, 10, 0, &out, &e) == ERR_OK);
        CHECKF(strstr(out.p, "\"total\":4") != NULL, "phase %d: %s", phase, out.p);
        readmodel_close(crashed);
    }
    buf_fini(&out);
    fx_close(&f);
}

/* One campaign's or influencer's total_impresiones, as a query answers. */
static long long q_imp(struct readmodel *rm, enum rm_scope scope, const char *key)
{
    struct buf out;
    struct err e;
    buf_init(&out, 0);
    long long n = -1;
    if (rm_query_stats(rm, scope, key, &out, &e) == ERR_OK) {
        const char *p = strstr(out.p, "\"total_impresiones\":");
        n = p != NULL ? atoll(p + strlen("\"total_impresiones\":")) : -1;
    }
    buf_fini(&out);
    return n;
}

/* A fold bigger than a slice: a batch between two slices, a crash in the
 * middle (a copy of the file as it stands), the fold finished after the
 * restart: every answer the same throughout, nothing counted twice. */
static void test_fold_slices(const char *dir)
{
    struct fixture f;
    struct err e;
    fx_open(&f, dir, "slices");
    enum { KEYS = 5000 };
    char k[16];
    for (int round = 0; round < 2; round++) {
        CHECK(rm_begin(f.rm, &e) == ERR_OK);
        for (int i = 0; i < KEYS; i++) {
            snprintf(k, sizeof(k), "k%05d", i);
            CHECK(rm_stats_add(f.rm, SCOPE_INFLUENCER, k, i + 1, 0, 1, NULL, 0, &e) == ERR_OK);
        }
        CHECK(rm_commit(f.rm, &e) == ERR_OK);
    }
    CHECK(rm_fold_due(f.rm) == 0);
    bool more = false;
    CHECK(rm_fold_step(f.rm, &more, &e) == ERR_OK && more);
    int folded = count_rows(f.path, "stats");
    CHECKF(folded > 0 && folded < KEYS, "%d rows after one slice", folded);
    CHECK(rm_fold_due(f.rm) == 1);      /* under way */
    CHECK(rm_begin(f.rm, &e) == ERR_OK);     /* a batch between slices */
    CHECK(rm_stats_add(f.rm, SCOPE_INFLUENCER, "k00000", 100, 0, 2, NULL, 0, &e) == ERR_OK);
    CHECK(rm_stats_add(f.rm, SCOPE_INFLUENCER, "k04999", 100, 0, 2, NULL, 0, &e) == ERR_OK);
    CHECK(rm_commit(f.rm, &e) == ERR_OK);
    static const struct {
        const char *key;
        long long want;
    } want[] = { { "k00000", 102 }, { "k00001", 4 }, { "k02500", 5002 }, { "k04999", 10100 } };
    char copy[400];
    crash_copy(f.path, dir, "slices-crash", copy, sizeof(copy));
    CHECK(count_rows(copy, "stats_fold") == 1 && count_rows(copy, "stats_pending") == 3);
    struct readmodel *crashed = NULL;
    CHECK(readmodel_open(copy, RM_WRITER, NULL, &crashed, &e) == ERR_OK);
    CHECK(rm_fold_due(crashed) == 1);       /* the interrupted fold, first */
    for (int phase = 0; phase < 3; phase++) {
        if (phase == 1) {
            CHECK(rm_fold(f.rm, &e) == ERR_OK && rm_fold(crashed, &e) == ERR_OK);
            CHECK(count_rows(f.path, "stats") == KEYS && count_rows(copy, "stats") == KEYS);
            CHECK(count_rows(f.path, "stats_pending") == 0 && count_rows(copy, "stats_pending") == 0);
            CHECK(count_rows(f.path, "stats_fold") == 0 && count_rows(copy, "stats_fold") == 0);
        }
        if (phase == 2) {
            readmodel_close(crashed);
            CHECK(readmodel_open(copy, RM_WRITER, NULL, &crashed, &e) == ERR_OK);
        }
        for (size_t i = 0; i < ARRAY_LEN(want); i++) {
            CHECKF(q_imp(f.rm, SCOPE_INFLUENCER, want[i].key) == want[i].want, "phase %d %s: %lld",
                   phase, want[i].key, q_imp(f.rm, SCOPE_INFLUENCER, want[i].key));
            CHECKF(q_imp(crashed, SCOPE_INFLUENCER, want[i].key) == want[i].want,
                   "after the crash, phase %d %s: %lld", phase, want[i].key,
                   q_imp(crashed, SCOPE_INFLUENCER, want[i].key));
        }
    }
    readmodel_close(crashed);
    fx_close(&f);
}

int main(void)
{
    char dir[] = "/tmp/rastro-proj-XXXXXX";
    if (mkdtemp(dir) == NULL) {
        return 1;
    }
    test_stats_table();
    test_stats_many_keys();
    test_money_format();
    test_apply_and_replay(dir);
    test_money_totals_merge();
    test_money_totals_in_db(dir);
    test_flush_groups_by_key(dir);
    test_bulk_equals_live(dir);
    test_starved_batch_thread(dir);
    test_statsdelta();
    test_stats_pending(dir);
    test_written_out_at_open(dir);
    test_fold_slices(dir);
    test_feed(dir);
    char cmd[300];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    if (system(cmd) != 0) {
        fprintf(stderr, "could not remove %s\n", dir);
    }
    return check_done("test_projections");
}
