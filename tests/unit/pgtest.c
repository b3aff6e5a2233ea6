/*
 * pgtest.c - see pgtest.h.
 */
#include "pgtest.h"

#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"

static void quiet(void *arg, const char *msg)
{
    (void)arg;
    (void)msg;
}

int pgtest_exec(const char *url, const char *sql, char *msg, size_t max)
{
    PGconn *c = PQconnectdb(url);
    PQsetNoticeProcessor(c, quiet, NULL);
    int rc = -1;
    if (PQstatus(c) == CONNECTION_OK) {
        PGresult *r = PQexec(c, sql);
        ExecStatusType st = PQresultStatus(r);
        rc = st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK ? 0 : -1;
        PQclear(r);
    }
    if (msg != NULL && max > 0) {
        snprintf(msg, max, "%s", rc == 0 ? "" : PQerrorMessage(c));
    }
    PQfinish(c);
    return rc;
}

int pgtest_db(const char *name, char *url, size_t max)
{
    const char *dir = getenv("RASTRO_TEST_PG_DIR");
    if (dir == NULL || dir[0] == '\0') {
        return 1;
    }
    char path[4096], base[512] = "";
    snprintf(path, sizeof(path), "%s/url", dir);
    FILE *f = fopen(path, "r");
    if (f == NULL || fgets(base, sizeof(base), f) == NULL) {
        CHECKF(0, "no test cluster URL in %.200s (did tools/testpg.sh start run?)", path);
        if (f != NULL) {
            fclose(f);
        }
        return -1;
    }
    fclose(f);
    base[strcspn(base, "\r\n")] = '\0';
    char sql[256], msg[256];
    snprintf(sql, sizeof(sql), "DROP DATABASE IF EXISTS %s WITH (FORCE)", name);
    int rc = pgtest_exec(base, sql, msg, sizeof(msg));
    snprintf(sql, sizeof(sql), "CREATE DATABASE %s", name);
    rc = rc == 0 ? pgtest_exec(base, sql, msg, sizeof(msg)) : rc;
    CHECKF(rc == 0, "creating database %s: %s", name, msg);
    /* the base URL ends in /postgres: swap the database name */
    char *slash = strrchr(base, '/');
    if (slash == NULL || rc != 0) {
        return -1;
    }
    *slash = '\0';
    snprintf(url, max, "%s/%s", base, name);
    return 0;
}
