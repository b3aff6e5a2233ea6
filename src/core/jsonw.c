/*
 * jsonw.c - see jsonw.h.
 */
#include "core/jsonw.h"

#include <inttypes.h>
#include <math.h>
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

int json_escape(struct buf *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    int rc = buf_putc(b, '"');
    size_t start = 0;
    for (size_t i = 0; i < n && rc == ERR_OK; i++) {
        unsigned char c = (unsigned char)s[i];
        char esc[7];
        size_t elen = 0;
        if (c == '"' || c == '\\') {
            esc[0] = '\\';
            esc[1] = (char)c;
            elen = 2;
        } else if (c < 0x20) {
            esc[0] = '\\';
            switch (c) {
            case '\n': esc[1] = 'n'; elen = 2; break;
            case '\r': esc[1] = 'r'; elen = 2; break;
            case '\t': esc[1] = 't'; elen = 2; break;
            case '\b': esc[1] = 'b'; elen = 2; break;
            case '\f': esc[1] = 'f'; elen = 2; break;
            default:
                esc[1] = 'u';
                esc[2] = '0';
                esc[3] = '0';
                esc[4] = hex[c >> 4];
                esc[5] = hex[c & 15];
                elen = 6;
            }
        } else {
            continue;
        }
        rc = buf_append(b, s + start, i - start);
        if (rc == ERR_OK) {
            rc = buf_append(b, esc, elen);
        }
        start = i + 1;
    }
    if (rc == ERR_OK) {
        rc = buf_append(b, s + start, n - start);
    }
    if (rc == ERR_OK) {
        rc = buf_putc(b, '"');
    }
    return rc;
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
