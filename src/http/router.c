/*
 * router.c - see router.h.
 */
#include "http/router.h"

#include <stdbool.h>
#include <string.h>

#include "core/hex.h"

int percent_decode(const char *in, size_t n, char *out, size_t max, size_t *out_len)
{
    size_t j = 0;
    for (size_t i = 0; i < n; i++) {
        char c = in[i];
        if (c == '%') {
            if (i + 2 >= n) {
                return ERR_INVALID;
            }
            int hi = hex_digit(in[i + 1]);
            int lo = hex_digit(in[i + 2]);
            if (hi < 0 || lo < 0) {
                return ERR_INVALID;
            }
            c = (char)(hi << 4 | lo);
            i += 2;
        }
        if (c == '\0') {
            return ERR_INVALID;
        }
        if (j + 1 >= max) {
            return ERR_TOOBIG;
        }
        out[j++] = c;
    }
    out[j] = '\0';
    if (out_len != NULL) {
        *out_len = j;
    }
    return ERR_OK;
}

#define MAX_SEGS 8

struct segs {
    const char *p[MAX_SEGS];
    size_t n[MAX_SEGS];
    int count;
};

/* Splits "/a/b/c" into raw segments; false if too many or empty ones. */
static bool split(const char *path, struct segs *s)
{
    s->count = 0;
    if (path[0] != '/') {
        return false;
    }
    const char *p = path + 1;
    size_t len = strlen(p);
    if (len > 0 && p[len - 1] == '/') {
        len--;                      /* tolerate one trailing slash */
    }
    const char *end = p + len;
    while (p < end) {
        const char *q = memchr(p, '/', (size_t)(end - p));
        if (q == NULL) {
            q = end;
        }
        if (q == p || s->count == MAX_SEGS) {
            return false;
        }
        s->p[s->count] = p;
        s->n[s->count] = (size_t)(q - p);
        s->count++;
        p = q + 1;
    }
    return true;
}

static bool seg_is(const struct segs *s, int i, const char *lit)
{
    size_t n = strlen(lit);
    return s->n[i] == n && memcmp(s->p[i], lit, n) == 0;
}

/* "campañas" in any of its spellings: campa%C3%B1as (either hex case),
 * the raw UTF-8 bytes, or ASCII campanas. */
static bool seg_is_campanas(const struct segs *s, int i)
{
    char dec[32];
    size_t n;
    if (s->n[i] >= sizeof(dec) || percent_decode(s->p[i], s->n[i], dec, sizeof(dec), &n) != ERR_OK) {
        return false;
    }
    return strcmp(dec, "campa\xc3\xb1" "as") == 0 || strcmp(dec, "campanas") == 0;
}

static int method_check(const char *method, const char *want, struct route *out)
{
    out->allow = want;
    if (strcmp(want, "POST") == 0) {
        return strcmp(method, "POST") == 0 ? ERR_OK : ROUTE_BAD_METHOD;
    }
    return strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0 ? ERR_OK : ROUTE_BAD_METHOD;
}

static int decode_key(const struct segs *s, int i, struct route *out)
{
    size_t n;
    int rc = percent_decode(s->p[i], s->n[i], out->key, sizeof(out->key), &n);
    if (rc == ERR_INVALID) {
        return ROUTE_BAD_PATH;
    }
    if (rc != ERR_OK || n == 0 || n > ID_MAX || !text_is_clean(out->key, n)) {
        return ERR_NOTFOUND;        /* no stored id can look like this */
    }
    return ERR_OK;
}

int route_match(const char *method, const char *raw_path, struct route *out)
{
    struct segs s;
    memset(out, 0, sizeof(*out));
    if (!split(raw_path, &s)) {
        return ERR_NOTFOUND;
    }
    if (s.count == 1 && seg_is(&s, 0, "metrics")) {
        out->id = R_METRICS;
        return method_check(method, "GET, HEAD", out);
    }
    if (s.count == 2 && seg_is(&s, 0, "health") &&
        (seg_is(&s, 1, "live") || seg_is(&s, 1, "ready"))) {
        out->id = seg_is(&s, 1, "live") ? R_LIVE : R_READY;
        return method_check(method, "GET, HEAD", out);
    }
    if (s.count < 2 || !seg_is(&s, 0, "tracking")) {
        return ERR_NOTFOUND;
    }
    if (s.count == 2) {
        if (seg_is(&s, 1, "impresiones") || seg_is(&s, 1, "conversiones")) {
            out->id = R_CMD;
            out->kind = seg_is(&s, 1, "impresiones") ? KIND_IMPRESION : KIND_CONVERSION;
            return method_check(method, "POST", out);
        }
        if (seg_is(&s, 1, "health")) {
            out->id = R_HEALTH;
            return method_check(method, "GET, HEAD", out);
        }
        return ERR_NOTFOUND;
    }
    if (!seg_is(&s, 1, "queries")) {
        return ERR_NOTFOUND;
    }
    if (s.count == 3 && (seg_is(&s, 2, "health") || seg_is(&s, 2, "estado"))) {
        out->id = seg_is(&s, 2, "health") ? R_Q_HEALTH : R_Q_ESTADO;
        return method_check(method, "GET, HEAD", out);
    }
    if (s.count == 4 && (seg_is(&s, 2, "impresiones") || seg_is(&s, 2, "conversiones"))) {
        out->id = R_Q_BYID;
        out->kind = seg_is(&s, 2, "impresiones") ? KIND_IMPRESION : KIND_CONVERSION;
        int rc = decode_key(&s, 3, out);
        return rc != ERR_OK ? rc : method_check(method, "GET, HEAD", out);
    }
    if (s.count == 5) {
        if (seg_is_campanas(&s, 2)) {
            out->scope = SCOPE_CAMPANA;
        } else if (seg_is(&s, 2, "influencers")) {
            out->scope = SCOPE_INFLUENCER;
        } else {
            return ERR_NOTFOUND;
        }
        if (seg_is(&s, 4, "impresiones") || seg_is(&s, 4, "conversiones")) {
            out->id = R_Q_LIST;
            out->kind = seg_is(&s, 4, "impresiones") ? KIND_IMPRESION : KIND_CONVERSION;
        } else if (seg_is(&s, 4, "estadisticas")) {
            out->id = R_Q_STATS;
        } else {
            return ERR_NOTFOUND;
        }
        int rc = decode_key(&s, 3, out);
        return rc != ERR_OK ? rc : method_check(method, "GET, HEAD", out);
    }
    return ERR_NOTFOUND;
}

int query_int(const char *raw, int64_t dflt, int64_t min, int64_t max, int64_t *out)
{
    if (raw == NULL) {
        *out = dflt;
        return ERR_OK;
    }
    char dec[32];
    size_t n;
    if (percent_decode(raw, strlen(raw), dec, sizeof(dec), &n) != ERR_OK || n == 0 || n > 18) {
        return ERR_INVALID;
    }
    const char *p = dec;
    bool neg = *p == '-';
    if (neg) {
        p++;
    }
    if (*p == '\0') {
        return ERR_INVALID;
    }
    int64_t v = 0;
    for (; *p != '\0'; p++) {
        if (*p < '0' || *p > '9') {
            return ERR_INVALID;
        }
        v = v * 10 + (*p - '0');
    }
    if (neg) {
        v = -v;
    }
    if (v < min || v > max) {
        return ERR_INVALID;
    }
    *out = v;
    return ERR_OK;
}
