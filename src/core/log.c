/*
 * log.c - see log.h.
 */
#include "core/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "core/timeutil.h"

static int min_level = LOG_INFO;

void log_set_level(enum log_level lvl)
{
    min_level = (int)lvl;
}

int log_parse_level(const char *s, enum log_level *out)
{
    static const char *names[] = { "debug", "info", "warn", "error" };
    for (size_t i = 0; i < ARRAY_LEN(names); i++) {
        if (strcmp(s, names[i]) == 0) {
            *out = (enum log_level)i;
            return 1;
        }
    }
    return 0;
}

int log_enabled(enum log_level lvl)
{
    return (int)lvl >= min_level;
}

void log_write(enum log_level lvl, const char *msg, const char *fmt, ...)
{
    static const char *names[] = { "debug", "info", "warn", "error" };
    if (!log_enabled(lvl)) {
        return;
    }
    char line[1024];
    char ts[TS_STR_LEN + 1];
    time_format_iso8601(time_now_us(), ts);
    int n = snprintf(line, sizeof(line), "ts=%s level=%s msg=\"", ts, names[lvl]);
    for (const char *m = msg; *m != '\0' && n < (int)sizeof(line) - 4; m++) {
        if (*m == '"' || *m == '\\') {
            line[n++] = '\\';
        }
        line[n++] = *m == '\n' ? ' ' : *m;
    }
    line[n++] = '"';
    if (fmt != NULL && n < (int)sizeof(line) - 2) {
        line[n++] = ' ';
        va_list ap;
        va_start(ap, fmt);
        int k = vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
        va_end(ap);
        if (k > 0) {
            n += k < (int)sizeof(line) - n - 1 ? k : (int)sizeof(line) - n - 2;
        }
    }
    line[n++] = '\n';
    ssize_t w = write(STDERR_FILENO, line, (size_t)n);
    (void)w;
}
