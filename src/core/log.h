/*
 * log.h - one line per event worth logging, logfmt on stderr:
 *   ts=2026-11-28T00:15:40.123456Z level=info msg="listening" addr=127.0.0.1:8000
 * Callers pass the key=value tail already formatted. Thread-safe (one
 * write(2) per line). Nothing on the hot path logs at info.
 */
#ifndef RASTRO_CORE_LOG_H
#define RASTRO_CORE_LOG_H

#include "core/err.h"

enum log_level { LOG_DEBUG = 0, LOG_INFO, LOG_WARN, LOG_ERROR };

void log_set_level(enum log_level lvl);
/* Parses "debug", "info", "warn", "error"; false if unknown. */
int log_parse_level(const char *s, enum log_level *out);
int log_enabled(enum log_level lvl);

/* msg is quoted for you; fmt (may be NULL) formats the key=value tail. */
void log_write(enum log_level lvl, const char *msg, const char *fmt, ...) PRINTF_LIKE(3, 4);

#define log_debug(...) do { if (log_enabled(LOG_DEBUG)) log_write(LOG_DEBUG, __VA_ARGS__); } while (0)
#define log_info(...) log_write(LOG_INFO, __VA_ARGS__)
#define log_warn(...) log_write(LOG_WARN, __VA_ARGS__)
#define log_error(...) log_write(LOG_ERROR, __VA_ARGS__)

#endif
