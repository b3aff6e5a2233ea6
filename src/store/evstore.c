/*
 * evstore.c - picks a backend from the --store spec.
 */
#include "store/evstore.h"

#include <sqlite3.h>
#include <stdio.h>
#include <string.h>

int evstore_open(const char *spec, const char *data_dir, int flags, struct evstore **out,
                 struct err *e)
{
    if (spec == NULL || spec[0] == '\0' || strcmp(spec, "sqlite") == 0) {
        char path[4096];
        int n = snprintf(path, sizeof(path), "%s/events.db", data_dir);
        if (n < 0 || (size_t)n >= sizeof(path)) {
            return err_set(e, ERR_INVALID, "data folder path too long");
        }
        return evstore_sqlite_open(path, flags, out, e);
    }
    return err_set(e, ERR_INVALID, "unknown store '%s' (this build knows: sqlite)", spec);
}

void evstore_global_init(void)
{
    sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0);
}
