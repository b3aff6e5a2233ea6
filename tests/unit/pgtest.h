/*
 * pgtest.h - databases on the throwaway PostgreSQL cluster that ctest
 * starts (tools/testpg.sh; fixture "pg" in tests/CMakeLists.txt).
 */
#ifndef RASTRO_TEST_PGTEST_H
#define RASTRO_TEST_PGTEST_H

#include <stddef.h>

/* Creates database name afresh (dropped first) and writes its URL into
 * url. Returns 0; 1 when no cluster was given (RASTRO_TEST_PG_DIR unset:
 * a hand run of the binary, the caller skips); -1 on failure (recorded as
 * a failed check). */
int pgtest_db(const char *name, char *url, size_t max);

/* Runs sql on url; returns 0 if it succeeded, -1 if not (error in msg). */
int pgtest_exec(const char *url, const char *sql, char *msg, size_t max);

#endif
