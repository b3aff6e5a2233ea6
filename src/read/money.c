/*
 * money.c - see money.h.
 */
#include "read/money.h"

#include <stdio.h>
#include <string.h>

void money_ticks_text(__int128 v, char *out, size_t max)
{
    char tmp[48];
    size_t n = 0;
    bool neg = v < 0;
    unsigned __int128 m = neg ? (unsigned __int128)0 - (unsigned __int128)v : (unsigned __int128)v;
    do {
        tmp[n++] = (char)('0' + (int)(m % 10));
        m /= 10;
    } while (m != 0);
    size_t j = 0;
    if (neg && j + 1 < max) {
        out[j++] = '-';
    }
    while (n > 0 && j + 1 < max) {
        out[j++] = tmp[--n];
    }
    out[j] = '\0';
}

/* Digits [s, end) as a 128-bit integer with an optional '-'. */
static int parse_ticks_n(const char *s, const char *end, __int128 *out)
{
    bool neg = s < end && *s == '-';
    if (neg) {
        s++;
    }
    if (s == end || end - s > 38) {     /* 38 digits fit 127 bits */
        return ERR_INVALID;
    }
    __int128 v = 0;
    for (; s < end; s++) {
        if (*s < '0' || *s > '9') {
            return ERR_INVALID;
        }
        v = v * 10 + (*s - '0');
    }
    *out = neg ? -v : v;
    return ERR_OK;
}

int money_parse_ticks(const char *s, __int128 *out)
{
    return parse_ticks_n(s, s + strlen(s), out);
}

void money_format(__int128 ticks, char *out, size_t max)
{
    char text[48];
    money_ticks_text(ticks, text, sizeof(text));    /* no negation here: -INT128_MIN is UB */
    bool neg = text[0] == '-';
    const char *digits = text + neg;
    size_t n = strlen(digits);
    char whole[48], frac[8];
    if (n > 4) {
        memcpy(whole, digits, n - 4);
        whole[n - 4] = '\0';
        memcpy(frac, digits + n - 4, 5);
    } else {
        strcpy(whole, "0");
        memset(frac, '0', 4 - n);
        memcpy(frac + 4 - n, digits, n + 1);
    }
    size_t fl = strlen(frac);
    while (fl > 0 && frac[fl - 1] == '0') {
        frac[--fl] = '\0';
    }
    snprintf(out, max, "%s%s%s%s", neg ? "-" : "", whole, fl ? "." : "", frac);
}

int money_totals_next(const char **pp, const char *end, struct money_total *t)
{
    const char *p = *pp;
    if (p == end) {
        return 0;
    }
    /* "XYZ=" */
    if (end - p < 4 || p[3] != '=') {
        return ERR_INVALID;
    }
    for (int i = 0; i < 3; i++) {
        if (p[i] < 'A' || p[i] > 'Z') {
            return ERR_INVALID;
        }
        t->moneda[i] = p[i];
    }
    t->moneda[3] = '\0';
    p += 4;
    const char *slash = memchr(p, '/', (size_t)(end - p));
    if (slash == NULL || parse_ticks_n(p, slash, &t->ticks) != ERR_OK) {
        return ERR_INVALID;
    }
    p = slash + 1;
    const char *q = p;
    int64_t c = 0;
    while (q < end && *q != ',') {
        if (*q < '0' || *q > '9' || q - p >= 18) {     /* 18 digits fit 63 bits */
            return ERR_INVALID;
        }
        c = c * 10 + (*q - '0');
        q++;
    }
    if (q == p) {
        return ERR_INVALID;
    }
    if (q < end) {              /* a ',' must be followed by another entry */
        q++;
        if (q == end) {
            return ERR_INVALID;
        }
    }
    t->conv = c;
    *pp = q;
    return 1;
}

int money_totals_put(struct buf *b, const struct money_total *t)
{
    /* by hand: vsnprintf was a tenth of the projector's time on conversions */
    char e[4 + 1 + 48 + 1 + 24];
    size_t n = 0;
    if (b->len > 0) {
        e[n++] = ',';
    }
    memcpy(e + n, t->moneda, 3);
    n += 3;
    e[n++] = '=';
    money_ticks_text(t->ticks, e + n, 48);
    n += strlen(e + n);
    e[n++] = '/';
    money_ticks_text(t->conv, e + n, 24);
    n += strlen(e + n);
    return buf_append(b, e, n);
}

/* The next entry of one side, checking it comes after the previous one. */
static int next_in_order(const char **p, const char *end, struct money_total *t, bool *have,
                         char prev[4])
{
    int r = money_totals_next(p, end, t);
    if (r < 0) {
        return r;
    }
    *have = r == 1;
    if (*have) {
        if (prev[0] != '\0' && memcmp(prev, t->moneda, 3) >= 0) {
            return ERR_INVALID;
        }
        memcpy(prev, t->moneda, 4);
    }
    return ERR_OK;
}

int money_totals_merge(const char *a, size_t na, const char *b, size_t nb, struct buf *out)
{
    const char *pa = a, *ea = a + na, *pb = b, *eb = b + nb;
    struct money_total x, y;
    bool hx, hy;
    char prev_a[4] = "", prev_b[4] = "";
    int rc = next_in_order(&pa, ea, &x, &hx, prev_a);
    if (rc == ERR_OK) {
        rc = next_in_order(&pb, eb, &y, &hy, prev_b);
    }
    while (rc == ERR_OK && (hx || hy)) {
        int c = !hx ? 1 : !hy ? -1 : memcmp(x.moneda, y.moneda, 3);
        if (c < 0) {
            rc = money_totals_put(out, &x);
            if (rc == ERR_OK) {
                rc = next_in_order(&pa, ea, &x, &hx, prev_a);
            }
        } else if (c > 0) {
            rc = money_totals_put(out, &y);
            if (rc == ERR_OK) {
                rc = next_in_order(&pb, eb, &y, &hy, prev_b);
            }
        } else {
            struct money_total s;
            memcpy(s.moneda, x.moneda, 4);
            if (__builtin_add_overflow(x.ticks, y.ticks, &s.ticks) ||
                __builtin_add_overflow(x.conv, y.conv, &s.conv)) {
                return ERR_TOOBIG;
            }
            rc = money_totals_put(out, &s);
            if (rc == ERR_OK) {
                rc = next_in_order(&pa, ea, &x, &hx, prev_a);
            }
            if (rc == ERR_OK) {
                rc = next_in_order(&pb, eb, &y, &hy, prev_b);
            }
        }
    }
    return rc;
}
