/*
 * test_router.c - routing, percent-decoding of paths and query values.
 */
#include "check.h"
#include "http/router.h"

static void test_routes(void)
{
    static const struct {
        const char *method;
        const char *path;
        int rc;
        enum route_id id;
        int kind;       /* -1: don't care */
        int scope;      /* -1: don't care */
        const char *key;
    } cases[] = {
        { "POST", "/tracking/impresiones", ERR_OK, R_CMD, KIND_IMPRESION, -1, NULL },
        { "POST", "/tracking/conversiones", ERR_OK, R_CMD, KIND_CONVERSION, -1, NULL },
        { "POST", "/tracking/conversiones/", ERR_OK, R_CMD, KIND_CONVERSION, -1, NULL },
        { "GET", "/tracking/impresiones", ROUTE_BAD_METHOD, R_CMD, -1, -1, NULL },
        { "PUT", "/tracking/conversiones", ROUTE_BAD_METHOD, R_CMD, -1, -1, NULL },
        { "GET", "/tracking/health", ERR_OK, R_HEALTH, -1, -1, NULL },
        { "HEAD", "/tracking/health", ERR_OK, R_HEALTH, -1, -1, NULL },
        { "POST", "/tracking/health", ROUTE_BAD_METHOD, R_HEALTH, -1, -1, NULL },
        { "GET", "/tracking/queries/health", ERR_OK, R_Q_HEALTH, -1, -1, NULL },
        { "GET", "/tracking/queries/impresiones/abc", ERR_OK, R_Q_BYID, KIND_IMPRESION, -1, "abc" },
        { "GET", "/tracking/queries/conversiones/a%20b%2Fc", ERR_OK, R_Q_BYID, KIND_CONVERSION, -1, "a b/c" },
        { "DELETE", "/tracking/queries/conversiones/x", ROUTE_BAD_METHOD, R_Q_BYID, -1, -1, NULL },
        { "GET", "/tracking/queries/campa%C3%B1as/c1/impresiones", ERR_OK, R_Q_LIST, KIND_IMPRESION, SCOPE_CAMPANA, "c1" },
        { "GET", "/tracking/queries/campa%c3%b1as/c1/conversiones", ERR_OK, R_Q_LIST, KIND_CONVERSION, SCOPE_CAMPANA, "c1" },
        { "GET", "/tracking/queries/campa\xc3\xb1" "as/c1/estadisticas", ERR_OK, R_Q_STATS, -1, SCOPE_CAMPANA, "c1" },
        { "GET", "/tracking/queries/campanas/c%2B1/estadisticas", ERR_OK, R_Q_STATS, -1, SCOPE_CAMPANA, "c+1" },
        { "GET", "/tracking/queries/influencers/i%C3%B1/impresiones", ERR_OK, R_Q_LIST, KIND_IMPRESION, SCOPE_INFLUENCER, "i\xc3\xb1" },
        { "GET", "/tracking/queries/influencers/i/estadisticas", ERR_OK, R_Q_STATS, -1, SCOPE_INFLUENCER, "i" },
        { "GET", "/tracking/queries/campaigns/c1/impresiones", ERR_NOTFOUND, R_NONE, -1, -1, NULL },
        { "GET", "/tracking/queries/campanas/c1/otra", ERR_NOTFOUND, R_NONE, -1, -1, NULL },
        { "GET", "/tracking/queries/campanas/c1", ERR_NOTFOUND, R_NONE, -1, -1, NULL },
        { "GET", "/tracking/queries/impresiones/%ZZ", ROUTE_BAD_PATH, R_NONE, -1, -1, NULL },
        { "GET", "/tracking/queries/impresiones/%4", ROUTE_BAD_PATH, R_NONE, -1, -1, NULL },
        { "GET", "/tracking/queries/impresiones/a%00b", ROUTE_BAD_PATH, R_NONE, -1, -1, NULL },
        { "GET", "/tracking/queries/impresiones/a%01b", ERR_NOTFOUND, R_NONE, -1, -1, NULL },
        { "GET", "/tracking/queries/impresiones//", ERR_NOTFOUND, R_NONE, -1, -1, NULL },
        { "GET", "/tracking//impresiones", ERR_NOTFOUND, R_NONE, -1, -1, NULL },
        { "GET", "/", ERR_NOTFOUND, R_NONE, -1, -1, NULL },
        { "GET", "", ERR_NOTFOUND, R_NONE, -1, -1, NULL },
        { "GET", "tracking/health", ERR_NOTFOUND, R_NONE, -1, -1, NULL },
        { "GET", "/nope", ERR_NOTFOUND, R_NONE, -1, -1, NULL },
        { "GET", "/metrics", ERR_OK, R_METRICS, -1, -1, NULL },
        { "POST", "/metrics", ROUTE_BAD_METHOD, R_METRICS, -1, -1, NULL },
        { "GET", "/metrics/x", ERR_NOTFOUND, R_NONE, -1, -1, NULL },
        { "GET", "/health/live", ERR_OK, R_LIVE, -1, -1, NULL },
        { "GET", "/health/ready", ERR_OK, R_READY, -1, -1, NULL },
        { "POST", "/health/ready", ROUTE_BAD_METHOD, R_READY, -1, -1, NULL },
        { "GET", "/health/other", ERR_NOTFOUND, R_NONE, -1, -1, NULL },
        { "GET", "/tracking/queries/estado", ERR_OK, R_Q_ESTADO, -1, -1, NULL },
        { "GET", "/tracking/queries/a/b/c/d/e/f/g/h/i", ERR_NOTFOUND, R_NONE, -1, -1, NULL },
    };
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        struct route r;
        int rc = route_match(cases[i].method, cases[i].path, &r);
        CHECKF(rc == cases[i].rc, "%s %s: rc %d want %d", cases[i].method, cases[i].path, rc,
               cases[i].rc);
        if (rc == ERR_OK || rc == ROUTE_BAD_METHOD) {
            CHECKF(r.id == cases[i].id, "%s: id %d", cases[i].path, r.id);
        }
        if (rc == ERR_OK && cases[i].kind >= 0) {
            CHECKF((int)r.kind == cases[i].kind, "%s: kind", cases[i].path);
        }
        if (rc == ERR_OK && cases[i].scope >= 0) {
            CHECKF((int)r.scope == cases[i].scope, "%s: scope", cases[i].path);
        }
        if (rc == ERR_OK && cases[i].key != NULL) {
            CHECK_STR(r.key, cases[i].key);
        }
    }
    /* an id longer than any stored one cannot exist */
    char path[1024] = "/tracking/queries/impresiones/";
    size_t n = strlen(path);
    memset(path + n, 'x', ID_MAX + 1);
    path[n + ID_MAX + 1] = '\0';
    struct route r;
    CHECK(route_match("GET", path, &r) == ERR_NOTFOUND);
    path[n + ID_MAX] = '\0';
    CHECK(route_match("GET", path, &r) == ERR_OK);
}

static void test_percent(void)
{
    static const struct {
        const char *in;
        int rc;
        const char *out;
    } cases[] = {
        { "", ERR_OK, "" }, { "abc", ERR_OK, "abc" }, { "a%20b", ERR_OK, "a b" },
        { "%2f%2F", ERR_OK, "//" }, { "a+b", ERR_OK, "a+b" }, { "%C3%B1", ERR_OK, "\xc3\xb1" },
        { "%", ERR_INVALID, NULL }, { "%2", ERR_INVALID, NULL }, { "%G0", ERR_INVALID, NULL },
        { "%0G", ERR_INVALID, NULL }, { "%00", ERR_INVALID, NULL }, { "ab%", ERR_INVALID, NULL },
    };
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        char out[64];
        size_t n = 99;
        int rc = percent_decode(cases[i].in, strlen(cases[i].in), out, sizeof(out), &n);
        CHECKF(rc == cases[i].rc, "'%s': rc %d", cases[i].in, rc);
        if (rc == ERR_OK) {
            CHECK_STR(out, cases[i].out);
            CHECK(n == strlen(cases[i].out));
        }
    }
    char small[4];
    CHECK(percent_decode("abcd", 4, small, sizeof(small), NULL) == ERR_TOOBIG);
    CHECK(percent_decode("abc", 3, small, sizeof(small), NULL) == ERR_OK);
}

static void test_query_int(void)
{
    static const struct {
        const char *in;
        int rc;
        int64_t v;
    } cases[] = {
        { NULL, ERR_OK, 100 }, { "1", ERR_OK, 1 }, { "1000", ERR_OK, 1000 },
        { "1001", ERR_INVALID, 0 }, { "0", ERR_INVALID, 0 }, { "-1", ERR_INVALID, 0 },
        { "abc", ERR_INVALID, 0 }, { "", ERR_INVALID, 0 }, { "5x", ERR_INVALID, 0 },
        { "%35", ERR_OK, 5 }, { "99999999999999999999", ERR_INVALID, 0 }, { "-", ERR_INVALID, 0 },
    };
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        int64_t v = -7;
        int rc = query_int(cases[i].in, 100, 1, 1000, &v);
        CHECKF(rc == cases[i].rc, "'%s': rc %d", cases[i].in ? cases[i].in : "(null)", rc);
        if (rc == ERR_OK) {
            CHECKF(v == cases[i].v, "'%s' -> %lld", cases[i].in ? cases[i].in : "(null)", (long long)v);
        }
    }
}

int main(void)
{
    test_routes();
    test_percent();
    test_query_int();
    return check_done("test_router");
}
