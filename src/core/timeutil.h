/*
 * timeutil.h - UTC timestamps as int64 microseconds since the Unix epoch,
 * ISO-8601 parsing and the one canonical text form rastro writes:
 * "YYYY-MM-DDTHH:MM:SS.ffffffZ". Pure functions; thread-safe.
 */
#ifndef RASTRO_CORE_TIMEUTIL_H
#define RASTRO_CORE_TIMEUTIL_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#define TS_STR_LEN 27   /* "2026-11-28T00:15:40.123456Z" without the NUL */

int64_t time_now_us(void);          /* wall clock, UTC */
int64_t time_mono_us(void);         /* monotonic, for durations */

/* *out = clock's now + ms: the absolute deadline pthread_cond_timedwait
 * takes (CLOCK_REALTIME for a default condition variable). */
void time_deadline(clockid_t clock, int ms, struct timespec *out);

/* A condition variable whose timed waits take CLOCK_MONOTONIC deadlines
 * (time_deadline(CLOCK_MONOTONIC, ...)): a wall-clock step cannot stretch
 * or cut a wait. */
void time_cond_init_mono(pthread_cond_t *cv);

/*
 * Parses an ISO-8601 date-time: "YYYY-MM-DD", optionally followed by 'T'
 * (or 't' or a space) and "HH:MM[:SS[.fraction]]", optionally followed by
 * 'Z' or an offset "+HH:MM", "+HHMM" or "+HH". Without an offset the time is
 * UTC. Fractions beyond microseconds are truncated. Years 1..9999.
 * Returns false on anything else, including impossible dates (Feb 30).
 */
bool time_parse_iso8601(const char *s, int64_t *out_us);

/* Writes the canonical form (TS_STR_LEN chars + NUL) into out. */
void time_format_iso8601(int64_t us, char *out);

#endif
