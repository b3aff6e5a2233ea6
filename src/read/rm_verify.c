/*
 * rm_verify.c - `rastro verify`: are the stored read models what the event
 * log says they should be?
 *
 * It opens the stored read models and holds one read transaction (one
 * snapshot) for the whole check, so a server may keep running; reads that
 * snapshot's checkpoint C; has the caller rebuild fresh read models from
 * the log up to exactly C; then walks every table of both in key order,
 * side by side, one row at a time (memory stays flat however big they
 * are), and reports each row missing, unexpected or different, plus a
 * row count and checksum per table.
 */
#include <sqlite3.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "read/readmodel.h"

struct table {
    const char *name;
    const char *order;      /* key columns, in SQLite's order */
    int nkey;
};

static const struct table tables[] = {
    { "checkpoints", "projection", 1 },
    { "impresiones", "position", 1 },
    { "conversiones", "position", 1 },
    { "stats", "scope, key", 2 },
    { "skipped", "type", 1 },
    { "counts", "name", 1 },
};

/* Orders two values as ORDER BY does for these keys (integers or text). */
static int cmp_value(sqlite3_stmt *a, sqlite3_stmt *b, int i)
{
    int ta = sqlite3_column_type(a, i), tb = sqlite3_column_type(b, i);
    if (ta == SQLITE_INTEGER && tb == SQLITE_INTEGER) {
        int64_t x = sqlite3_column_int64(a, i), y = sqlite3_column_int64(b, i);
        return x < y ? -1 : x > y;
    }
    if (ta != tb) {
        return ta < tb ? -1 : 1;
    }
    if (ta == SQLITE_NULL) {
        return 0;
    }
    const unsigned char *x = sqlite3_column_text(a, i), *y = sqlite3_column_text(b, i);
    int nx = sqlite3_column_bytes(a, i), ny = sqlite3_column_bytes(b, i);
    int c = memcmp(x, y, (size_t)(nx < ny ? nx : ny));
    return c != 0 ? c : (nx < ny ? -1 : nx > ny);
}

static void describe_key(sqlite3_stmt *st, int nkey, char *out, size_t max)
{
    size_t n = 0;
    out[0] = '\0';
    for (int i = 0; i < nkey && n < max; i++) {
        const char *v = (const char *)sqlite3_column_text(st, i);
        n += (size_t)snprintf(out + n, max - n, "%s%s", i ? "/" : "", v ? v : "NULL");
    }
}

static void describe_row(sqlite3_stmt *st, char *out, size_t max)
{
    size_t n = 0;
    out[0] = '\0';
    for (int i = 0; i < sqlite3_column_count(st) && n < max; i++) {
        const char *v = (const char *)sqlite3_column_text(st, i);
        n += (size_t)snprintf(out + n, max - n, "%s%s", i ? "|" : "", v ? v : "NULL");
    }
}

static uint64_t fold_row(uint64_t h, sqlite3_stmt *st)
{
    for (int i = 0; i < sqlite3_column_count(st); i++) {
        const unsigned char *v = sqlite3_column_text(st, i);
        int n = sqlite3_column_bytes(st, i);
        h = (h ^ (uint64_t)sqlite3_column_type(st, i)) * 0x100000001b3ULL;
        for (int k = 0; v != NULL && k < n; k++) {
            h = (h ^ v[k]) * 0x100000001b3ULL;
        }
    }
    return h;
}

static int prepare(sqlite3 *db, const char *name, const struct table *t, sqlite3_stmt **st,
                   struct err *e)
{
    char sql[256];
    snprintf(sql, sizeof(sql), "SELECT * FROM %s ORDER BY %s", name, t->order);
    if (sqlite3_prepare_v2(db, sql, -1, st, NULL) != SQLITE_OK) {
        return err_set(e, ERR_IO, "%s: %s", sql, sqlite3_errmsg(db));
    }
    return ERR_OK;
}

/* Walks one table of both files in key order (live_name of live: the
 * table itself, or a copy that adds what it has pending). */
static int compare_table(sqlite3 *live, const char *live_name, sqlite3 *fresh,
                         const struct table *t, FILE *out, int64_t *diffs, struct err *e)
{
    sqlite3_stmt *a = NULL, *b = NULL;
    int rc = prepare(live, live_name, t, &a, e);
    if (rc == ERR_OK) {
        rc = prepare(fresh, t->name, t, &b, e);
    }
    int64_t na = 0, nb = 0, nd = 0;
    uint64_t ha = 0xcbf29ce484222325ULL, hb = ha;
    int ra = rc == ERR_OK ? sqlite3_step(a) : SQLITE_DONE;
    int rb = rc == ERR_OK ? sqlite3_step(b) : SQLITE_DONE;
    char key[256], row[1024], row2[1024];
    while (rc == ERR_OK && (ra == SQLITE_ROW || rb == SQLITE_ROW)) {
        int c;
        if (ra != SQLITE_ROW) {
            c = 1;
        } else if (rb != SQLITE_ROW) {
            c = -1;
        } else {
            c = 0;
            for (int i = 0; i < t->nkey && c == 0; i++) {
                c = cmp_value(a, b, i);
            }
        }
        if (c < 0) {            /* stored, but the log does not produce it */
            if (nd++ < 20) {
                describe_key(a, t->nkey, key, sizeof(key));
                describe_row(a, row, sizeof(row));
                fprintf(out, "%s %s: unexpected row (stored %s)\n", t->name, key, row);
            }
        } else if (c > 0) {     /* produced by the log, not stored */
            if (nd++ < 20) {
                describe_key(b, t->nkey, key, sizeof(key));
                describe_row(b, row, sizeof(row));
                fprintf(out, "%s %s: missing row (recomputed %s)\n", t->name, key, row);
            }
        } else {
            bool same = sqlite3_column_count(a) == sqlite3_column_count(b);
            for (int i = t->nkey; same && i < sqlite3_column_count(a); i++) {
                same = cmp_value(a, b, i) == 0;
            }
            if (!same && nd++ < 20) {
                describe_key(a, t->nkey, key, sizeof(key));
                describe_row(a, row, sizeof(row));
                describe_row(b, row2, sizeof(row2));
                fprintf(out, "%s %s: differs (stored %s, recomputed %s)\n", t->name, key, row,
                        row2);
            }
        }
        if (c <= 0) {
            ha = fold_row(ha, a);
            na++;
            ra = sqlite3_step(a);
        }
        if (c >= 0) {
            hb = fold_row(hb, b);
            nb++;
            rb = sqlite3_step(b);
        }
    }
    if (rc == ERR_OK && (ra != SQLITE_DONE || rb != SQLITE_DONE)) {
        rc = err_set(e, ERR_IO, "reading %s: %s", t->name,
                     sqlite3_errmsg(ra != SQLITE_DONE ? live : fresh));
    }
    sqlite3_finalize(a);
    sqlite3_finalize(b);
    if (rc == ERR_OK) {
        fprintf(out, "%-13s stored %lld rows checksum %016llx, recomputed %lld rows checksum "
                     "%016llx: %s\n", t->name, (long long)na, (unsigned long long)ha,
                (long long)nb, (unsigned long long)hb,
                nd == 0 ? "ok" : "DIFFERENT");
        if (nd > 20) {
            fprintf(out, "%s: %lld more differences not shown\n", t->name, (long long)(nd - 20));
        }
        *diffs += nd;
    }
    return rc;
}

int rm_verify(const char *live_path,
              int (*build)(int64_t upto, char *fresh_path, size_t max, void *arg, struct err *e),
              void *arg, FILE *out, int64_t *diffs, struct err *e)
{
    sqlite3 *live = NULL, *fresh = NULL;
    char fresh_path[4200];
    int rc = ERR_OK;
    *diffs = 0;
    if (sqlite3_open_v2(live_path, &live, SQLITE_OPEN_READWRITE, NULL) != SQLITE_OK) {
        rc = err_set(e, ERR_IO, "opening %s: %s", live_path, sqlite3_errmsg(live));
        goto out;
    }
    sqlite3_busy_timeout(live, 5000);
    sqlite3_stmt *st = NULL;
    int64_t upto = 0;
    /* one snapshot for the whole check; its checkpoint says how far to rebuild */
    if (sqlite3_exec(live, "PRAGMA query_only=1; BEGIN", NULL, NULL, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(live, "SELECT coalesce(min(position), 0) FROM checkpoints", -1, &st,
                           NULL) != SQLITE_OK ||
        sqlite3_step(st) != SQLITE_ROW) {
        rc = err_set(e, ERR_IO, "reading %s: %s", live_path, sqlite3_errmsg(live));
        sqlite3_finalize(st);
        goto out;
    }
    upto = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    fprintf(out, "verifying read models at position %lld\n", (long long)upto);
    rc = build(upto, fresh_path, sizeof(fresh_path), arg, e);
    if (rc != ERR_OK) {
        goto out;
    }
    /* read-write: a temporary table may hold the live statistics with
     * what they have pending (the fresh file itself is not written) */
    if (sqlite3_open_v2(fresh_path, &fresh, SQLITE_OPEN_READWRITE, NULL) != SQLITE_OK) {
        rc = err_set(e, ERR_IO, "opening %s: %s", fresh_path, sqlite3_errmsg(fresh));
        goto out;
    }
    int64_t pending = 0;
    rc = rm_stats_with_pending(live, fresh, &pending, e);
    if (rc == ERR_OK && pending > 0) {
        fprintf(out, "stats: with %lld batches' deltas not folded yet\n", (long long)pending);
    }
    for (size_t i = 0; i < sizeof(tables) / sizeof(tables[0]) && rc == ERR_OK; i++) {
        bool both = pending > 0 && strcmp(tables[i].name, "stats") == 0;
        rc = compare_table(both ? fresh : live, both ? "live_stats" : tables[i].name, fresh,
                           &tables[i], out, diffs, e);
    }
out:
    if (live != NULL) {
        sqlite3_exec(live, "COMMIT", NULL, NULL, NULL);
    }
    sqlite3_close(live);
    sqlite3_close(fresh);
    return rc;
}
