/*
 * evstore.c - picks a backend from the --store spec.
 */
#include "store/evstore.h"

#include <sqlite3.h>
#include <stdio.h>
#include <string.h>

bool evstore_is_postgres(const char *spec)
{
    return spec != NULL &&
           (strncmp(spec, "postgres://", 11) == 0 || strncmp(spec, "postgresql://", 13) == 0);
}

static int sqlite_path(const char *data_dir, char *path, size_t size, struct err *e)
{
    int n = snprintf(path, size, "%s/events.db", data_dir);
    if (n < 0 || (size_t)n >= size) {
        return err_set(e, ERR_INVALID, "data folder path too long");
    }
    return ERR_OK;
}

static bool is_sqlite(const char *spec)
{
    return spec == NULL || spec[0] == '\0' || strcmp(spec, "sqlite") == 0;
}

static int unknown(const char *spec, struct err *e)
{
    return err_set(e, ERR_INVALID,
                   "unknown store '%s' (expected sqlite or postgres://USER@HOST:PORT/DB)", spec);
}

int evstore_open(const char *spec, const char *data_dir, int flags, struct evstore **out,
                 struct err *e)
{
    if (is_sqlite(spec)) {
        char path[4096];
        int rc = sqlite_path(data_dir, path, sizeof(path), e);
        return rc != ERR_OK ? rc : evstore_sqlite_open(path, flags, out, e);
    }
    if (evstore_is_postgres(spec)) {
        return evstore_pg_open(spec, flags, out, e);
    }
    return unknown(spec, e);
}

int evstore_migrate(const char *spec, const char *data_dir, int *from, int *to, struct err *e)
{
    if (evstore_is_postgres(spec)) {
        return evstore_pg_migrate(spec, from, to, e);
    }
    if (!is_sqlite(spec)) {
        return unknown(spec, e);
    }
    /* the embedded file creates (or checks) its schema when opened */
    struct evstore *s = NULL;
    int rc = evstore_open(spec, data_dir, 0, &s, e);
    evstore_close(s);
    *from = *to = 1;
    return rc;
}

void evstore_global_init(void)
{
    sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0);
}
