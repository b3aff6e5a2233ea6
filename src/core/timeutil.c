/*
 * timeutil.c - see timeutil.h. Civil-date arithmetic after Howard Hinnant's
 * days_from_civil, so nothing depends on the TZ environment or on timegm.
 */
#include "core/timeutil.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

int64_t time_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

int64_t time_mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

void time_deadline(clockid_t clock, int ms, struct timespec *out)
{
    clock_gettime(clock, out);
    out->tv_sec += ms / 1000;
    out->tv_nsec += (long)(ms % 1000) * 1000000L;
    if (out->tv_nsec >= 1000000000L) {
        out->tv_sec++;
        out->tv_nsec -= 1000000000L;
    }
}

static int64_t days_from_civil(int64_t y, unsigned m, unsigned d)
{
    y -= m <= 2;
    const int64_t era = (y >= 0 ? y : y - 399) / 400;
    const unsigned yoe = (unsigned)(y - era * 400);
    const unsigned doy = (153 * (m + (m > 2 ? (unsigned)-3 : 9)) + 2) / 5 + d - 1;
    const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (int64_t)doe - 719468;
}

static void civil_from_days(int64_t z, int64_t *y, unsigned *m, unsigned *d)
{
    z += 719468;
    const int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    const unsigned doe = (unsigned)(z - era * 146097);
    const unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    const unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    const unsigned mp = (5 * doy + 2) / 153;
    *d = doy - (153 * mp + 2) / 5 + 1;
    *m = mp < 10 ? mp + 3 : mp - 9;
    *y = (int64_t)yoe + era * 400 + (*m <= 2);
}

static bool is_leap(int64_t y)
{
    return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

static unsigned days_in_month(int64_t y, unsigned m)
{
    static const unsigned dm[] = { 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 };
    return m == 2 && is_leap(y) ? 29 : dm[m - 1];
}

/* Reads exactly n digits. */
static bool digits(const char **p, int n, int *out)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        char c = (*p)[i];
        if (c < '0' || c > '9') {
            return false;
        }
        v = v * 10 + (c - '0');
    }
    *p += n;
    *out = v;
    return true;
}

bool time_parse_iso8601(const char *s, int64_t *out_us)
{
    const char *p = s;
    int y, mo, d, h = 0, mi = 0, sec = 0;
    int64_t frac_us = 0;
    int off_min = 0;

    if (!digits(&p, 4, &y) || *p++ != '-' || !digits(&p, 2, &mo) || *p++ != '-' ||
        !digits(&p, 2, &d)) {
        return false;
    }
    if (y < 1 || mo < 1 || mo > 12 || d < 1 || (unsigned)d > days_in_month(y, (unsigned)mo)) {
        return false;
    }
    if (*p == 'T' || *p == 't' || *p == ' ') {
        p++;
        if (!digits(&p, 2, &h) || *p++ != ':' || !digits(&p, 2, &mi)) {
            return false;
        }
        if (*p == ':') {
            p++;
            if (!digits(&p, 2, &sec)) {
                return false;
            }
            if (*p == '.' || *p == ',') {
                p++;
                int nd = 0;
                while (*p >= '0' && *p <= '9') {
                    if (nd < 6) {
                        frac_us = frac_us * 10 + (*p - '0');
                    }
                    nd++;
                    p++;
                }
                if (nd == 0 || nd > 9) {
                    return false;
                }
                for (int i = nd; i < 6; i++) {
                    frac_us *= 10;
                }
            }
        }
        if (h > 23 || mi > 59 || sec > 59) {
            return false;
        }
        if (*p == 'Z' || *p == 'z') {
            p++;
        } else if (*p == '+' || *p == '-') {
            int sign = *p++ == '-' ? -1 : 1;
            int oh, om = 0;
            if (!digits(&p, 2, &oh)) {
                return false;
            }
            if (*p == ':') {
                p++;
                if (!digits(&p, 2, &om)) {
                    return false;
                }
            } else if (*p >= '0' && *p <= '9') {
                if (!digits(&p, 2, &om)) {
                    return false;
                }
            }
            if (oh > 23 || om > 59) {
                return false;
            }
            off_min = sign * (oh * 60 + om);
        }
    }
    if (*p != '\0') {
        return false;
    }
    int64_t days = days_from_civil(y, (unsigned)mo, (unsigned)d);
    int64_t secs = days * 86400 + h * 3600 + mi * 60 + sec - (int64_t)off_min * 60;
    *out_us = secs * 1000000 + frac_us;
    return true;
}

void time_format_iso8601(int64_t us, char *out)
{
    int64_t secs = us / 1000000;
    int64_t rem = us % 1000000;
    if (rem < 0) {
        rem += 1000000;
        secs--;
    }
    int64_t days = secs / 86400;
    int64_t sod = secs % 86400;
    if (sod < 0) {
        sod += 86400;
        days--;
    }
    int64_t y;
    unsigned m, d;
    civil_from_days(days, &y, &m, &d);
    if (y < 0 || y > 9999) {
        /* the ranges are known for these, which the compiler cannot see:
         * format into a roomy buffer, then copy what fits */
        char tmp[64];
        snprintf(tmp, sizeof(tmp), "%04d-%02u-%02uT%02d:%02d:%02d.%06dZ", (int)y, m % 100u,
                 d % 100u, (int)(sod / 3600), (int)(sod / 60 % 60), (int)(sod % 60), (int)rem);
        memcpy(out, tmp, TS_STR_LEN);
        out[TS_STR_LEN] = '\0';
        return;
    }
    /* digits by hand: this runs for every event written and every answer
     * rendered, and snprintf was most of its cost */
    static const struct { unsigned char at, width; } fields[] = {
        { 0, 4 }, { 5, 2 }, { 8, 2 }, { 11, 2 }, { 14, 2 }, { 17, 2 }, { 20, 6 },
    };
    const int64_t vals[] = { y, m, d, sod / 3600, sod / 60 % 60, sod % 60, rem };
    memcpy(out, "0000-00-00T00:00:00.000000Z", TS_STR_LEN);
    for (size_t f = 0; f < sizeof(fields) / sizeof(fields[0]); f++) {
        int64_t v = vals[f];
        for (int i = fields[f].width - 1; i >= 0; i--) {
            out[fields[f].at + i] = (char)('0' + v % 10);
            v /= 10;
        }
    }
    out[TS_STR_LEN] = '\0';
}

void time_cond_init_mono(pthread_cond_t *cv)
{
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(cv, &ca);
    pthread_condattr_destroy(&ca);
}
