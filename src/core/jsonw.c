/*
 * jsonw.c - see jsonw.h.
 */
#include "core/jsonw.h"

#include <inttypes.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void jsonw_init(struct jsonw *w, struct buf *b)
{
    memset(w, 0, sizeof(*w));
    w->b = b;
}

int jsonw_status(const struct jsonw *w)
{
    return w->status;
}

static void put(struct jsonw *w, const char *s, size_t n)
{
    if (w->status == ERR_OK) {
        w->status = buf_append(w->b, s, n);
    }
}

/* Called before every value: writes the separating comma if needed. */
static void before_value(struct jsonw *w)
{
    if (w->need_comma[w->depth]) {
        put(w, ",", 1);
    }
    w->need_comma[w->depth] = true;
}

static void open(struct jsonw *w, char c)
{
    before_value(w);
    put(w, &c, 1);
    if (w->depth + 1 < (int)ARRAY_LEN(w->need_comma)) {
        w->depth++;
        w->need_comma[w->depth] = false;
    } else if (w->status == ERR_OK) {
        w->status = ERR_INVALID;
    }
}

static void close_(struct jsonw *w, char c)
{
    put(w, &c, 1);
    if (w->depth > 0) {
        w->depth--;
    }
}

void jsonw_obj_open(struct jsonw *w) { open(w, '{'); }
void jsonw_obj_close(struct jsonw *w) { close_(w, '}'); }
void jsonw_arr_open(struct jsonw *w) { open(w, '['); }
void jsonw_arr_close(struct jsonw *w) { close_(w, ']'); }

/* What each byte becomes inside a JSON string: 0 itself, 'u' a \u00XX
 * escape, any other letter a two-character escape. */
static const unsigned char esc_of[256] = {
    ['\0'] = 'u', [1] = 'u', [2] = 'u', [3] = 'u', [4] = 'u', [5] = 'u', [6] = 'u', [7] = 'u',
    ['\b'] = 'b', ['\t'] = 't', ['\n'] = 'n', [11] = 'u', ['\f'] = 'f', ['\r'] = 'r',
    [14] = 'u', [15] = 'u', [16] = 'u', [17] = 'u', [18] = 'u', [19] = 'u', [20] = 'u',
    [21] = 'u', [22] = 'u', [23] = 'u', [24] = 'u', [25] = 'u', [26] = 'u', [27] = 'u',
    [28] = 'u', [29] = 'u', [30] = 'u', [31] = 'u', ['"'] = '"', ['\\'] = '\\',
};

/* Whether any of the eight bytes at p is below 0x20, '"' or '\\' (the
 * classic "has a zero byte" test on the word, on it xor'ed with each quote
 * byte, and for "below 0x20" on the word less 0x20 in each byte; exact as
 * to whether one exists, which is all a yes or a no here needs). */
static bool word_needs_escape(const char *p)
{
    const uint64_t ones = 0x0101010101010101ULL, highs = 0x8080808080808080ULL;
    uint64_t x;
    memcpy(&x, p, 8);
    uint64_t q = x ^ (ones * '"'), bs = x ^ (ones * '\\');
    uint64_t low = (x - ones * 0x20) & ~x;
    uint64_t zq = (q - ones) & ~q, zb = (bs - ones) & ~bs;
    return ((low | zq | zb) & highs) != 0;
}

/* Every string of every answer and event goes through here: room for the
 * common case (nothing to escape) is reserved once and the clean runs are
 * copied whole; three appends a string, byte tests and all, were 8 % of a
 * POST's HTTP thread. */
int json_escape(struct buf *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    int rc = n > SIZE_MAX / 2 ? ERR_TOOBIG : buf_reserve(b, n + 2);
    if (rc != ERR_OK) {
        return rc;
    }
    size_t len = b->len, start = 0;
    b->p[len++] = '"';
    for (size_t i = 0; i < n; i++) {
        /* eight bytes at a time while none of them needs a look */
        while (i + 8 <= n && !word_needs_escape(s + i)) {
            i += 8;
        }
        if (i >= n) {
            break;
        }
        unsigned char c = (unsigned char)s[i], e = esc_of[c];
        if (e == 0) {
            continue;
        }
        memcpy(b->p + len, s + start, i - start);
        b->len = len + (i - start);
        start = i + 1;
        /* the escape, and room for the rest as it is and the quote: never
         * more than the string needs, so a capped buffer refuses only what
         * would not fit */
        rc = buf_reserve(b, (e == 'u' ? 6 : 2) + (n - start) + 1);
        if (rc != ERR_OK) {
            b->p[b->len] = '\0';
            return rc;
        }
        len = b->len;
        b->p[len++] = '\\';
        b->p[len++] = (char)e;
        if (e == 'u') {
            memcpy(b->p + len, "00", 2);
            b->p[len + 2] = hex[c >> 4];
            b->p[len + 3] = hex[c & 15];
            len += 4;
        }
    }
    if (n > start) {    /* s may be NULL when n is 0 */
        memcpy(b->p + len, s + start, n - start);
        len += n - start;
    }
    b->p[len++] = '"';
    b->p[len] = '\0';
    b->len = len;
    return ERR_OK;
}

void jsonw_key(struct jsonw *w, const char *k)
{
    before_value(w);
    if (w->status == ERR_OK) {
        w->status = json_escape(w->b, k, strlen(k));
    }
    put(w, ":", 1);
    /* the value that follows must not write a comma */
    w->need_comma[w->depth] = false;
}

void jsonw_strn(struct jsonw *w, const char *s, size_t n)
{
    before_value(w);
    if (w->status == ERR_OK) {
        w->status = json_escape(w->b, s, n);
    }
}

void jsonw_str(struct jsonw *w, const char *s)
{
    if (s == NULL) {
        jsonw_null(w);
        return;
    }
    jsonw_strn(w, s, strlen(s));
}

void jsonw_int(struct jsonw *w, int64_t v)
{
    char tmp[32];
    int n = snprintf(tmp, sizeof(tmp), "%" PRId64, v);
    before_value(w);
    put(w, tmp, (size_t)n);
}

void jsonw_double(struct jsonw *w, double v)
{
    if (!isfinite(v)) {
        jsonw_null(w);
        return;
    }
    /* the shortest plain decimal that reads back as the same double (no
     * exponent: clients parse 50 more happily than 5e+01) */
    char tmp[64];
    int n = 0;
    /* most values: the shortest of 15, 16 or 17 significant digits that
     * reads back, which %g prints without an exponent for 1e-4 <= |v| <
     * 1e15 (three tries, not up to eighteen) */
    for (int p = 15; p <= 17; p++) {
        n = snprintf(tmp, sizeof(tmp), "%.*g", p, v);
        if (strtod(tmp, NULL) == v) {
            break;
        }
    }
    if (fabs(v) < 1e15 && strchr(tmp, 'e') != NULL) {
        for (int d = 0; d <= 17; d++) {
            char t2[64];
            int m = snprintf(t2, sizeof(t2), "%.*f", d, v);
            if (strtod(t2, NULL) == v) {
                memcpy(tmp, t2, (size_t)m + 1);
                n = m;
                break;
            }
        }
    }
    before_value(w);
    put(w, tmp, (size_t)n);
}

void jsonw_bool(struct jsonw *w, bool v)
{
    before_value(w);
    put(w, v ? "true" : "false", v ? 4 : 5);
}

void jsonw_null(struct jsonw *w)
{
    before_value(w);
    put(w, "null", 4);
}

void jsonw_raw(struct jsonw *w, const char *json)
{
    before_value(w);
    put(w, json, strlen(json));
}

void jsonw_fixed4(struct jsonw *w, int64_t ticks)
{
    char tmp[48];
    uint64_t mag = ticks < 0 ? (uint64_t)0 - (uint64_t)ticks : (uint64_t)ticks;
    uint64_t whole = mag / 10000;
    unsigned frac = (unsigned)(mag % 10000);
    int n;
    if (frac == 0) {
        n = snprintf(tmp, sizeof(tmp), "%s%" PRIu64, ticks < 0 ? "-" : "", whole);
    } else {
        n = snprintf(tmp, sizeof(tmp), "%s%" PRIu64 ".%04u", ticks < 0 ? "-" : "",
                     whole, frac);
        while (tmp[n - 1] == '0') {
            tmp[--n] = '\0';
        }
    }
    before_value(w);
    put(w, tmp, (size_t)n);
}

void jsonw_kstr(struct jsonw *w, const char *k, const char *s)
{
    jsonw_key(w, k);
    jsonw_str(w, s);
}

void jsonw_kint(struct jsonw *w, const char *k, int64_t v)
{
    jsonw_key(w, k);
    jsonw_int(w, v);
}
