/*
 * test_tracking.c - every validation rule of the domain, one table row each.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <stdlib.h>

#include "check.h"
#include "core/buf.h"
#include "core/timeutil.h"
#include "domain/tracking.h"

#define CAMP "\"campa\xc3\xb1" "a_id\""
#define K_CAMPANA "campa\xc3\xb1" "a_id"

static void test_command_table(void)
{
    static const struct {
        enum tracking_kind kind;
        const char *body;
        int rc;
        const char *field;      /* expected field on error */
    } cases[] = {
        /* the body itself */
        { KIND_IMPRESION, "", ERR_INVALID, "body" },
        { KIND_IMPRESION, "{", ERR_INVALID, "body" },
        { KIND_IMPRESION, "[]", ERR_INVALID, "body" },
        { KIND_IMPRESION, "\"x\"", ERR_INVALID, "body" },
        { KIND_IMPRESION, "42", ERR_INVALID, "body" },
        { KIND_IMPRESION, "null", ERR_INVALID, "body" },
        { KIND_IMPRESION, "{} {}", ERR_INVALID, "body" },
        { KIND_IMPRESION, "{" CAMP ":\"c\"} x", ERR_INVALID, "body" },
        { KIND_IMPRESION, "{" CAMP ":\"c\"}  \n", ERR_OK, NULL },
        /* campaña_id */
        { KIND_IMPRESION, "{}", ERR_INVALID, K_CAMPANA },
        { KIND_IMPRESION, "{" CAMP ":\"\"}", ERR_INVALID, K_CAMPANA },
        { KIND_IMPRESION, "{" CAMP ":null}", ERR_INVALID, K_CAMPANA },
        { KIND_IMPRESION, "{" CAMP ":5}", ERR_INVALID, K_CAMPANA },
        { KIND_IMPRESION, "{" CAMP ":\"a\\u0001b\"}", ERR_INVALID, K_CAMPANA },
        { KIND_IMPRESION, "{\"campana_id\":\"c\"}", ERR_OK, NULL },
        { KIND_IMPRESION, "{\"campana_id\":\"c\"," CAMP ":\"c\"}", ERR_OK, NULL },
        { KIND_IMPRESION, "{\"campana_id\":\"c\"," CAMP ":\"d\"}", ERR_INVALID, K_CAMPANA },
        { KIND_IMPRESION, "{\"campana_id\":7}", ERR_INVALID, "campana_id" },
        /* id */
        { KIND_IMPRESION, "{\"id\":\"\"," CAMP ":\"c\"}", ERR_INVALID, "id" },
        { KIND_IMPRESION, "{\"id\":12," CAMP ":\"c\"}", ERR_INVALID, "id" },
        { KIND_IMPRESION, "{\"id\":null," CAMP ":\"c\"}", ERR_OK, NULL },
        { KIND_IMPRESION, "{\"id\":\"x\\ny\"," CAMP ":\"c\"}", ERR_INVALID, "id" },
        /* optional strings */
        { KIND_IMPRESION, "{" CAMP ":\"c\",\"influencer_id\":1}", ERR_INVALID, "influencer_id" },
        { KIND_IMPRESION, "{" CAMP ":\"c\",\"usuario_id\":[1]}", ERR_INVALID, "usuario_id" },
        { KIND_IMPRESION, "{" CAMP ":\"c\",\"usuario_id\":\"\\t\"}", ERR_INVALID, "usuario_id" },
        { KIND_IMPRESION, "{" CAMP ":\"c\",\"usuario_id\":\"u\\u0000x\"}", ERR_INVALID, "usuario_id" },
        { KIND_IMPRESION, "{" CAMP ":\"c\\u0000\"}", ERR_INVALID, K_CAMPANA },
        { KIND_IMPRESION, "{" CAMP ":\"c\",\"referrer\":\"\\\\u0000\"}", ERR_OK, NULL },
        /* invalid JSON that holds the escape: a JSON error, not a field's */
        { KIND_IMPRESION, "{\"x\"\"\" 1\":\"a\\u0000\"}", ERR_INVALID, "body" },
        { KIND_IMPRESION, "{" CAMP ":\"c\",\"user_agent\":false}", ERR_INVALID, "user_agent" },
        { KIND_IMPRESION, "{" CAMP ":\"c\",\"referrer\":{}}", ERR_INVALID, "referrer" },
        { KIND_IMPRESION, "{" CAMP ":\"c\",\"influencer_id\":\"\"}", ERR_OK, NULL },
        /* tipo_evento */
        { KIND_IMPRESION, "{" CAMP ":\"c\",\"tipo_evento\":\"a b\"}", ERR_INVALID, "tipo_evento" },
        { KIND_IMPRESION, "{" CAMP ":\"c\",\"tipo_evento\":\"VISTA_2\"}", ERR_OK, NULL },
        { KIND_IMPRESION, "{" CAMP ":\"c\",\"tipo_evento\":\"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\"}",
          ERR_INVALID, "tipo_evento" },
        /* ip_address */
        { KIND_IMPRESION, "{" CAMP ":\"c\",\"ip_address\":\"1.2.3\"}", ERR_INVALID, "ip_address" },
        { KIND_IMPRESION, "{" CAMP ":\"c\",\"ip_address\":\"999.1.1.1\"}", ERR_INVALID, "ip_address" },
        { KIND_IMPRESION, "{" CAMP ":\"c\",\"ip_address\":\"10.0.0.1\"}", ERR_OK, NULL },
        { KIND_IMPRESION, "{" CAMP ":\"c\",\"ip_address\":\"2001:db8::1\"}", ERR_OK, NULL },
        /* timestamp */
        { KIND_IMPRESION, "{" CAMP ":\"c\",\"timestamp\":\"yesterday\"}", ERR_INVALID, "timestamp" },
        { KIND_IMPRESION, "{" CAMP ":\"c\",\"timestamp\":\"2026-02-30T00:00:00Z\"}", ERR_INVALID, "timestamp" },
        { KIND_IMPRESION, "{" CAMP ":\"c\",\"timestamp\":\"2026-01-01T25:00:00Z\"}", ERR_INVALID, "timestamp" },
        { KIND_IMPRESION, "{" CAMP ":\"c\",\"timestamp\":true}", ERR_INVALID, "timestamp" },
        { KIND_IMPRESION, "{" CAMP ":\"c\",\"timestamp\":-5}", ERR_INVALID, "timestamp" },
        { KIND_IMPRESION, "{" CAMP ":\"c\",\"timestamp\":\"2026-11-28T10:15:00+02:00\"}", ERR_OK, NULL },
        { KIND_IMPRESION, "{" CAMP ":\"c\",\"timestamp\":1764324900}", ERR_OK, NULL },
        /* conversion fields */
        { KIND_CONVERSION, "{" CAMP ":\"c\",\"tipo_conversion\":\"venta\"}", ERR_INVALID, "tipo_conversion" },
        { KIND_CONVERSION, "{" CAMP ":\"c\",\"tipo_conversion\":3}", ERR_INVALID, "tipo_conversion" },
        { KIND_CONVERSION, "{" CAMP ":\"c\",\"tipo_conversion\":\"DESCARGAR\"}", ERR_OK, NULL },
        { KIND_CONVERSION, "{" CAMP ":\"c\",\"valor\":-1}", ERR_INVALID, "valor" },
        { KIND_CONVERSION, "{" CAMP ":\"c\",\"valor\":\"abc\"}", ERR_INVALID, "valor" },
        { KIND_CONVERSION, "{" CAMP ":\"c\",\"valor\":1.00001}", ERR_INVALID, "valor" },
        { KIND_CONVERSION, "{" CAMP ":\"c\",\"valor\":1e12}", ERR_INVALID, "valor" },
        { KIND_CONVERSION, "{" CAMP ":\"c\",\"valor\":true}", ERR_INVALID, "valor" },
        { KIND_CONVERSION, "{" CAMP ":\"c\",\"valor\":\"-0.5\"}", ERR_INVALID, "valor" },
        { KIND_CONVERSION, "{" CAMP ":\"c\",\"valor\":\"12.50\"}", ERR_OK, NULL },
        { KIND_CONVERSION, "{" CAMP ":\"c\",\"valor\":99.9999}", ERR_OK, NULL },
        { KIND_CONVERSION, "{" CAMP ":\"c\",\"moneda\":\"usd\"}", ERR_INVALID, "moneda" },
        { KIND_CONVERSION, "{" CAMP ":\"c\",\"moneda\":\"US\"}", ERR_INVALID, "moneda" },
        { KIND_CONVERSION, "{" CAMP ":\"c\",\"moneda\":\"XYZ\"}", ERR_INVALID, "moneda" },
        { KIND_CONVERSION, "{" CAMP ":\"c\",\"moneda\":\"USDD\"}", ERR_INVALID, "moneda" },
        { KIND_CONVERSION, "{" CAMP ":\"c\",\"moneda\":7}", ERR_INVALID, "moneda" },
        { KIND_CONVERSION, "{" CAMP ":\"c\",\"moneda\":\"EUR\"}", ERR_OK, NULL },
        /* conversion-only fields are ignored on impressions */
        { KIND_IMPRESION, "{" CAMP ":\"c\",\"moneda\":\"nope\"}", ERR_OK, NULL },
    };
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        struct tracking t;
        struct err e;
        err_clear(&e);
        int rc = tracking_parse_command(cases[i].kind, cases[i].body, strlen(cases[i].body), &t, &e);
        CHECKF(rc == cases[i].rc, "case %zu (%s): rc %d want %d (%s)", i, cases[i].body, rc,
               cases[i].rc, e.msg);
        if (cases[i].field != NULL && rc != ERR_OK) {
            CHECKF(strcmp(e.field, cases[i].field) == 0, "case %zu (%s): field '%s' want '%s'", i,
                   cases[i].body, e.field, cases[i].field);
        }
    }
}

static void test_lengths(void)
{
    static const struct {
        const char *field;
        size_t max;
    } cases[] = {
        { "id", ID_MAX }, { "influencer_id", ID_MAX }, { "usuario_id", ID_MAX },
        { "user_agent", UA_MAX }, { "referrer", REF_MAX }, { "campana_id", ID_MAX },
    };
    char body[8192];
    char val[4096];
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        for (size_t extra = 0; extra <= 1; extra++) {
            memset(val, 'a', cases[i].max + extra);
            val[cases[i].max + extra] = '\0';
            snprintf(body, sizeof(body), "{\"campana_id\":\"c\",\"%s\":\"%s\"}", cases[i].field, val);
            if (strcmp(cases[i].field, "campana_id") == 0) {
                snprintf(body, sizeof(body), "{\"campana_id\":\"%s\"}", val);
            }
            struct tracking t;
            struct err e;
            err_clear(&e);
            int rc = tracking_parse_command(KIND_IMPRESION, body, strlen(body), &t, &e);
            CHECKF(rc == (extra ? ERR_INVALID : ERR_OK), "%s at %zu bytes: rc %d", cases[i].field,
                   cases[i].max + extra, rc);
            if (extra) {
                CHECK_STR(e.field, cases[i].field);
            }
        }
    }
}

static void test_defaults_and_roundtrip(void)
{
    const char *body = "{\"campana_id\":\"c9\",\"valor\":0.1,\"usuario_id\":\"u\\\"q\"}";
    struct tracking t, back;
    struct err e;
    CHECK(tracking_parse_command(KIND_CONVERSION, body, strlen(body), &t, &e) == ERR_OK);
    CHECK(!t.id_given);
    CHECK(!t.ts_given);
    CHECK_STR(t.tipo_evento, "CONVERSION");
    CHECK_STR(t.moneda, "COP");
    CHECK(t.tipo_conversion == CONV_VENTA);
    CHECK(t.valor == 1000);
    tracking_fill_defaults(&t, "01900000-0000-7000-8000-000000000000", 1764324900123456LL);
    CHECK_STR(t.id, "01900000-0000-7000-8000-000000000000");
    CHECK(t.timestamp_us == 1764324900123456LL);

    struct buf b;
    buf_init(&b, 0);
    CHECK(tracking_to_json(&t, &b) == ERR_OK);
    CHECK(strstr(b.p, "\"valor\":0.1,") != NULL);
    CHECK(strstr(b.p, "\"timestamp\":\"2025-11-28T10:15:00.123456Z\"") != NULL);
    CHECK(tracking_from_json(KIND_CONVERSION, b.p, b.len, &back, &e) == ERR_OK);
    CHECK(tracking_same_payload(&back, &t));
    CHECK(back.valor == t.valor && back.timestamp_us == t.timestamp_us);
    CHECK_STR(back.usuario_id, "u\"q");
    buf_fini(&b);

    /* idempotency comparisons */
    struct tracking c = back;
    c.ts_given = false;
    c.timestamp_us = 0;
    CHECK(tracking_same_payload(&back, &c));         /* omitted timestamp: not compared */
    c.ts_given = true;
    c.timestamp_us = 1;
    CHECK(!tracking_same_payload(&back, &c));
    c = back;
    c.valor++;
    CHECK(!tracking_same_payload(&back, &c));
    c = back;
    strcpy(c.moneda, "USD");
    CHECK(!tracking_same_payload(&back, &c));
    c = back;
    strcpy(c.referrer, "x");
    CHECK(!tracking_same_payload(&back, &c));
    /* stored data without id does not decode */
    CHECK(tracking_from_json(KIND_IMPRESION, "{\"campana_id\":\"c\"}", 18, &back, &e) == ERR_INVALID);
}

static void test_valor(void)
{
    static const struct {
        const char *s;
        bool ok;
        int64_t ticks;
    } dec[] = {
        { "0", true, 0 }, { "12.5", true, 125000 }, { "0.0001", true, 1 },
        { "0.00010", true, 1 }, { "0.00011", false, 0 }, { "100000000000", true, VALOR_MAX },
        { "100000000000.0001", false, 0 }, { "1e3", false, 0 }, { "-1", false, 0 },
        { "", false, 0 }, { ".5", false, 0 }, { "5.", false, 0 }, { " 5", false, 0 },
        { "99999999999999999999", false, 0 },
    };
    for (size_t i = 0; i < ARRAY_LEN(dec); i++) {
        int64_t v = -1;
        bool ok = valor_parse_decimal(dec[i].s, &v);
        CHECKF(ok == dec[i].ok, "'%s'", dec[i].s);
        if (ok) {
            CHECKF(v == dec[i].ticks, "'%s' -> %lld", dec[i].s, (long long)v);
        }
    }
    static const struct {
        double d;
        bool ok;
        int64_t ticks;
    } dbl[] = {
        { 0.1, true, 1000 }, { 0.2, true, 2000 }, { 19.99, true, 199900 }, { 1e11, true, VALOR_MAX },
        { 0.00005, false, 0 }, { -0.0001, false, 0 }, { 1e11 + 1, false, 0 },
        { 123456.7891, true, 1234567891 },
    };
    for (size_t i = 0; i < ARRAY_LEN(dbl); i++) {
        int64_t v = -1;
        bool ok = valor_from_double(dbl[i].d, &v);
        CHECKF(ok == dbl[i].ok, "%.17g", dbl[i].d);
        if (ok) {
            CHECKF(v == dbl[i].ticks, "%.17g -> %lld", dbl[i].d, (long long)v);
        }
    }
}

static void test_time(void)
{
    static const struct {
        const char *s;
        bool ok;
        const char *canon;
    } cases[] = {
        { "2026-11-28T10:15:00Z", true, "2026-11-28T10:15:00.000000Z" },
        { "2026-11-28T10:15:00+02:00", true, "2026-11-28T08:15:00.000000Z" },
        { "2026-11-28T10:15:00-0530", true, "2026-11-28T15:45:00.000000Z" },
        { "2026-11-28T10:15:00+02", true, "2026-11-28T08:15:00.000000Z" },
        { "2026-11-28T10:15:00", true, "2026-11-28T10:15:00.000000Z" },
        { "2026-11-28 10:15:00.5", true, "2026-11-28T10:15:00.500000Z" },
        { "2026-11-28T10:15", true, "2026-11-28T10:15:00.000000Z" },
        { "2026-11-28", true, "2026-11-28T00:00:00.000000Z" },
        { "2024-02-29T00:00:00Z", true, "2024-02-29T00:00:00.000000Z" },
        { "2026-11-28T10:15:00.123456789Z", true, "2026-11-28T10:15:00.123456Z" },
        { "1970-01-01T00:00:00Z", true, "1970-01-01T00:00:00.000000Z" },
        { "1969-12-31T23:59:59.999999Z", true, "1969-12-31T23:59:59.999999Z" },
        { "0001-01-01T00:00:00Z", true, "0001-01-01T00:00:00.000000Z" },
        { "9999-12-31T23:59:59.999999Z", true, "9999-12-31T23:59:59.999999Z" },
        { "2000-02-29T12:34:56.000789Z", true, "2000-02-29T12:34:56.000789Z" },
        { "2025-02-29T00:00:00Z", false, NULL },
        { "2026-13-01T00:00:00Z", false, NULL },
        { "2026-11-28T24:00:00Z", false, NULL },
        { "2026-11-28T10:60:00Z", false, NULL },
        { "2026-11-28T10:15:00.Z", false, NULL },
        { "2026-11-28T10:15:00+25:00", false, NULL },
        { "2026-11-28T10:15:00Zjunk", false, NULL },
        { "26-11-28", false, NULL },
        { "", false, NULL },
    };
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        int64_t us = 0;
        bool ok = time_parse_iso8601(cases[i].s, &us);
        CHECKF(ok == cases[i].ok, "'%s'", cases[i].s);
        if (ok && cases[i].canon) {
            char out[TS_STR_LEN + 1];
            time_format_iso8601(us, out);
            CHECK_STR(out, cases[i].canon);
        }
    }
}

/* The formatter writes its digits by hand: compared with gmtime_r and
 * snprintf over years 1..9999, both sides of 1970. */
static void test_format_matches_gmtime(void)
{
    uint64_t x = 0x9e3779b97f4a7c15ULL;
    const int64_t lo = -62135596800LL * 1000000;     /* 0001-01-01 */
    const int64_t span = 253402300800LL * 1000000 - lo;  /* .. 10000-01-01 */
    for (int i = 0; i < 20000; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        int64_t us = lo + (int64_t)(x % (uint64_t)span);
        char got[TS_STR_LEN + 1], want[64];
        time_format_iso8601(us, got);
        int64_t secs = us / 1000000, rem = us % 1000000;
        if (rem < 0) {
            rem += 1000000;
            secs--;
        }
        time_t t = (time_t)secs;
        struct tm tm;
        gmtime_r(&t, &tm);
        snprintf(want, sizeof(want), "%04d-%02d-%02dT%02d:%02d:%02d.%06dZ", tm.tm_year + 1900,
                 tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)rem);
        CHECKF(strcmp(got, want) == 0, "%lld: got %s want %s", (long long)us, got, want);
    }
}

static void test_text_and_currency(void)
{
    static const struct {
        const char *s;
        bool ok;
    } txt[] = {
        { "plain", true }, { "campa\xc3\xb1" "a", true }, { "\xe2\x82\xac", true },
        { "\xf0\x9f\x98\x80", true }, { "a\x01", false }, { "\x7f", false }, { "\xc3", false },
        { "\xc0\xaf", false }, { "\xed\xa0\x80", false }, { "\xff", false },
        { "\xf4\x90\x80\x80", false },
    };
    for (size_t i = 0; i < ARRAY_LEN(txt); i++) {
        CHECKF(text_is_clean(txt[i].s, strlen(txt[i].s)) == txt[i].ok, "case %zu", i);
    }
    CHECK(moneda_is_valid("COP"));
    CHECK(moneda_is_valid("USD"));
    CHECK(moneda_is_valid("AED"));
    CHECK(moneda_is_valid("ZWL"));
    CHECK(!moneda_is_valid("XYZ"));
    CHECK(!moneda_is_valid("usd"));
    CHECK(!moneda_is_valid(""));
    CHECK(event_type_parse("ImpresionRegistrada") == EV_IMPRESSION_RECORDED);
    CHECK(event_type_parse("ConversionRegistrada") == EV_CONVERSION_RECORDED);
    CHECK(event_type_parse("ClickRegistrado") == EV_UNKNOWN);
    char sid[STREAM_ID_MAX];
    tracking_stream_id(KIND_CONVERSION, "x1", sid);
    CHECK_STR(sid, "conversion:x1");
}

/* tracking_copy: into a struct full of junk, each field at its longest and
 * at its shortest; the copy encodes to the same event data and carries the
 * same flags (a field added to the struct and the JSON but not to the copy
 * fails here). */
struct parse_job {
    int n;
    int bad;
};

static void *parse_many(void *arg)
{
    struct parse_job *j = arg;
    for (int k = 0; k < 2000; k++) {
        char body[256], want[64];
        snprintf(want, sizeof(want), "camp-%d-%d", j->n, k);
        int len = snprintf(body, sizeof(body), "{" CAMP ":\"%s\",\"usuario_id\":\"%s\"}", want,
                           want);
        struct tracking t;
        struct err e;
        err_clear(&e);
        if (tracking_parse_command(KIND_IMPRESION, body, (size_t)len, &t, &e) != ERR_OK ||
            strcmp(t.campana_id, want) != 0 || strcmp(t.usuario_id, want) != 0) {
            j->bad++;
        }
    }
    return NULL;
}

static void test_copy(void)
{
    static char ua[UA_MAX + 1], ref[REF_MAX + 1], id[ID_MAX + 1];
    memset(ua, 'u', UA_MAX);
    memset(ref, 'r', REF_MAX);
    memset(id, 'i', ID_MAX);
    static char body[8192];
    const char *shapes[2];
    snprintf(body, sizeof(body),
             "{\"id\":\"%s\",\"campana_id\":\"%s\",\"influencer_id\":\"%s\",\"usuario_id\":\"%s\","
             "\"user_agent\":\"%s\",\"referrer\":\"%s\",\"ip_address\":\"2001:db8::1\","
             "\"tipo_evento\":\"CLICK_X\",\"timestamp\":\"2026-01-01T00:00:00.123456Z\","
             "\"tipo_conversion\":\"SUSCRIPCION\",\"valor\":\"123456.7891\",\"moneda\":\"EUR\"}",
             id, id, id, id, ua, ref);
    shapes[0] = body;
    shapes[1] = "{\"campana_id\":\"c\"}";
    for (int kind = 0; kind < 2; kind++) {
        for (size_t i = 0; i < ARRAY_LEN(shapes); i++) {
            struct tracking src;
            static struct tracking dst;
            struct err e;
            err_clear(&e);
            enum tracking_kind k = kind ? KIND_CONVERSION : KIND_IMPRESION;
            CHECKF(tracking_parse_command(k, shapes[i], strlen(shapes[i]), &src, &e) == ERR_OK,
                   "shape %zu: %s", i, e.msg);
            memset(&dst, 0x5a, sizeof(dst));
            tracking_copy(&dst, &src);
            struct buf a, b;
            buf_init(&a, 0);
            buf_init(&b, 0);
            CHECK(tracking_to_json(&src, &a) == ERR_OK && tracking_to_json(&dst, &b) == ERR_OK);
            CHECKF(a.len == b.len && memcmp(a.p, b.p, a.len) == 0, "kind %d shape %zu:\n%s\n%s",
                   kind, i, a.p, b.p);
            CHECK(dst.kind == src.kind && dst.id_given == src.id_given &&
                  dst.ts_given == src.ts_given && tracking_same_payload(&dst, &src));
            buf_fini(&a);
            buf_fini(&b);
        }
    }
}

/* cJSON's nodes come from a per-thread arena while a body is parsed, and
 * from malloc past it: a body that overflows the arena (its known fields
 * after 1,000 unknown members) parses like a small one, and threads parsing
 * at once each get their own values. */
static void test_parse_arena(void)
{
    struct buf big;
    buf_init(&big, 0);
    CHECK(buf_puts(&big, "{") == ERR_OK);
    for (int i = 0; i < 1000; i++) {
        CHECK(buf_printf(&big, "\"extra_%d\":\"%040d\",", i, i) == ERR_OK);
    }
    CHECK(buf_puts(&big, "\"usuario_id\":\"u-late\"," CAMP ":\"camp-late\"}") == ERR_OK);
    for (int round = 0; round < 3; round++) {
        struct tracking t;
        struct err e;
        err_clear(&e);
        CHECKF(tracking_parse_command(KIND_IMPRESION, big.p, big.len, &t, &e) == ERR_OK, "%s",
               e.msg);
        CHECK(strcmp(t.campana_id, "camp-late") == 0 && strcmp(t.usuario_id, "u-late") == 0);
        const char *small = "{" CAMP ":\"c-small\",\"influencer_id\":\"i-small\"}";
        CHECK(tracking_parse_command(KIND_IMPRESION, small, strlen(small), &t, &e) == ERR_OK);
        CHECK(strcmp(t.campana_id, "c-small") == 0 && strcmp(t.influencer_id, "i-small") == 0);
    }
    buf_fini(&big);

    pthread_t th[4];
    struct parse_job jobs[4];
    for (int i = 0; i < 4; i++) {
        jobs[i].n = i;
        jobs[i].bad = 0;
        CHECK(pthread_create(&th[i], NULL, parse_many, &jobs[i]) == 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        CHECKF(jobs[i].bad == 0, "thread %d: %d of 2000 parses had another thread's values", i,
               jobs[i].bad);
    }
}

int main(void)
{
    test_command_table();
    test_lengths();
    test_defaults_and_roundtrip();
    test_valor();
    test_time();
    test_format_matches_gmtime();
    test_text_and_currency();
    test_copy();
    test_parse_arena();
    return check_done("test_tracking");
}
