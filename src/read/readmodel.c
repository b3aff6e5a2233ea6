/*
 * readmodel.c - see readmodel.h.
 */
#include "read/readmodel.h"

#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/jsonw.h"
#include "core/timeutil.h"
#include "core/xmalloc.h"

#define SCHEMA_VERSION 1
#define K_CAMPANA "campa\xc3\xb1" "a_id"

enum stmt_id {
    S_CKPT_GET, S_CKPT_SET,
    S_INS_IMP, S_INS_CONV,
    S_STATS_ADD, S_VALOR_GET, S_VALOR_SET, S_SKIP,
    S_BYID_IMP, S_BYID_CONV,
    S_LIST_CAMP_IMP, S_LIST_CAMP_CONV, S_LIST_INFL_IMP, S_LIST_INFL_CONV,
    S_STATS_GET, S_VALOR_LIST, S_POSITION,
    S__COUNT
};

static const char *const stmt_sql[S__COUNT] = {
    [S_CKPT_GET] = "SELECT position FROM checkpoints WHERE projection=?",
    [S_CKPT_SET] = "INSERT INTO checkpoints(projection, position) VALUES(?,?)"
                   " ON CONFLICT(projection) DO UPDATE SET position=excluded.position",
    [S_INS_IMP] = "INSERT INTO impresiones(position, id, campana_id, influencer_id, usuario_id,"
                  " tipo_evento, user_agent, ip_address, referrer, timestamp, recorded_at)"
                  " VALUES(?,?,?,?,?,?,?,?,?,?,?)",
    [S_INS_CONV] = "INSERT INTO conversiones(position, id, campana_id, influencer_id, usuario_id,"
                   " tipo_evento, user_agent, ip_address, referrer, timestamp, recorded_at,"
                   " tipo_conversion, valor, moneda) VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
    [S_STATS_ADD] = "INSERT INTO stats(scope, key, impresiones, conversiones, ultima)"
                    " VALUES(?1,?2,?3,?4,?5) ON CONFLICT(scope, key) DO UPDATE SET"
                    " impresiones=impresiones+excluded.impresiones,"
                    " conversiones=conversiones+excluded.conversiones,"
                    " ultima=max(ultima, excluded.ultima)",
    [S_VALOR_GET] = "SELECT valor, conversiones FROM stats_valor WHERE scope=? AND key=? AND moneda=?",
    [S_VALOR_SET] = "INSERT OR REPLACE INTO stats_valor(scope, key, moneda, valor, conversiones)"
                    " VALUES(?,?,?,?,?)",
    [S_SKIP] = "INSERT INTO skipped(type, count) VALUES(?1,?2)"
               " ON CONFLICT(type) DO UPDATE SET count=count+excluded.count",
    [S_BYID_IMP] = "SELECT position, id, campana_id, influencer_id, usuario_id, tipo_evento,"
                   " user_agent, ip_address, referrer, timestamp, recorded_at"
                   " FROM impresiones WHERE id=?",
    [S_BYID_CONV] = "SELECT position, id, campana_id, influencer_id, usuario_id, tipo_evento,"
                    " user_agent, ip_address, referrer, timestamp, recorded_at,"
                    " tipo_conversion, valor, moneda FROM conversiones WHERE id=?",
    [S_LIST_CAMP_IMP] = "SELECT id, influencer_id, usuario_id, tipo_evento, timestamp"
                        " FROM impresiones WHERE campana_id=? ORDER BY position DESC LIMIT ? OFFSET ?",
    [S_LIST_CAMP_CONV] = "SELECT id, influencer_id, usuario_id, tipo_evento, timestamp,"
                         " tipo_conversion, valor, moneda FROM conversiones WHERE campana_id=?"
                         " ORDER BY position DESC LIMIT ? OFFSET ?",
    [S_LIST_INFL_IMP] = "SELECT id, campana_id, usuario_id, tipo_evento, timestamp"
                        " FROM impresiones WHERE influencer_id=? ORDER BY position DESC LIMIT ? OFFSET ?",
    [S_LIST_INFL_CONV] = "SELECT id, campana_id, usuario_id, tipo_evento, timestamp,"
                         " tipo_conversion, valor, moneda FROM conversiones WHERE influencer_id=?"
                         " ORDER BY position DESC LIMIT ? OFFSET ?",
    [S_STATS_GET] = "SELECT impresiones, conversiones, ultima FROM stats WHERE scope=? AND key=?",
    [S_VALOR_LIST] = "SELECT moneda, valor FROM stats_valor WHERE scope=? AND key=? ORDER BY moneda",
    [S_POSITION] = "SELECT coalesce(min(position), 0) FROM checkpoints",
};

static const char *tables_sql =
    "CREATE TABLE IF NOT EXISTS checkpoints(projection TEXT PRIMARY KEY, position INTEGER NOT NULL);"
    "CREATE TABLE IF NOT EXISTS impresiones("
    " position INTEGER PRIMARY KEY, id TEXT NOT NULL, campana_id TEXT NOT NULL,"
    " influencer_id TEXT, usuario_id TEXT, tipo_evento TEXT NOT NULL, user_agent TEXT,"
    " ip_address TEXT, referrer TEXT, timestamp INTEGER NOT NULL, recorded_at INTEGER NOT NULL);"
    "CREATE TABLE IF NOT EXISTS conversiones("
    " position INTEGER PRIMARY KEY, id TEXT NOT NULL, campana_id TEXT NOT NULL,"
    " influencer_id TEXT, usuario_id TEXT, tipo_evento TEXT NOT NULL, user_agent TEXT,"
    " ip_address TEXT, referrer TEXT, timestamp INTEGER NOT NULL, recorded_at INTEGER NOT NULL,"
    " tipo_conversion TEXT NOT NULL, valor INTEGER NOT NULL, moneda TEXT NOT NULL);"
    "CREATE TABLE IF NOT EXISTS stats(scope INTEGER NOT NULL, key TEXT NOT NULL,"
    " impresiones INTEGER NOT NULL, conversiones INTEGER NOT NULL, ultima INTEGER NOT NULL,"
    " PRIMARY KEY(scope, key)) WITHOUT ROWID;"
    /* valor: exact ten-thousandths as decimal text, summed in 128 bits */
    "CREATE TABLE IF NOT EXISTS stats_valor(scope INTEGER NOT NULL, key TEXT NOT NULL,"
    " moneda TEXT NOT NULL, valor TEXT NOT NULL, conversiones INTEGER NOT NULL,"
    " PRIMARY KEY(scope, key, moneda)) WITHOUT ROWID;"
    "CREATE TABLE IF NOT EXISTS skipped(type TEXT PRIMARY KEY, count INTEGER NOT NULL);";

/* Secondary indexes: created with the tables for live projection, and only
 * at the end of a bulk rebuild (one sort instead of millions of random
 * B-tree inserts). */
static const char *indexes_sql =
    "CREATE UNIQUE INDEX IF NOT EXISTS impresiones_id ON impresiones(id);"
    "CREATE INDEX IF NOT EXISTS impresiones_campana ON impresiones(campana_id, position);"
    "CREATE INDEX IF NOT EXISTS impresiones_influencer ON impresiones(influencer_id, position)"
    " WHERE influencer_id IS NOT NULL;"
    "CREATE UNIQUE INDEX IF NOT EXISTS conversiones_id ON conversiones(id);"
    "CREATE INDEX IF NOT EXISTS conversiones_campana ON conversiones(campana_id, position);"
    "CREATE INDEX IF NOT EXISTS conversiones_influencer ON conversiones(influencer_id, position)"
    " WHERE influencer_id IS NOT NULL;";

struct readmodel {
    sqlite3 *db;
    char *path;
    int mode;
    sqlite3_stmt *st[S__COUNT];
};

static int db_err(struct readmodel *rm, struct err *e, const char *what)
{
    return err_set(e, ERR_IO, "%s: %s (%s)", what, sqlite3_errmsg(rm->db), rm->path);
}

static int exec(struct readmodel *rm, const char *sql, struct err *e)
{
    char *msg = NULL;
    if (sqlite3_exec(rm->db, sql, NULL, NULL, &msg) != SQLITE_OK) {
        int rc = err_set(e, ERR_IO, "%.80s: %s (%s)", sql, msg ? msg : "?", rm->path);
        sqlite3_free(msg);
        return rc;
    }
    return ERR_OK;
}

/* Prepared lazily, so a reader never compiles writer statements. */
static sqlite3_stmt *stmt(struct readmodel *rm, enum stmt_id id, struct err *e)
{
    if (rm->st[id] == NULL &&
        sqlite3_prepare_v3(rm->db, stmt_sql[id], -1, SQLITE_PREPARE_PERSISTENT, &rm->st[id],
                           NULL) != SQLITE_OK) {
        db_err(rm, e, "preparing statement");
        return NULL;
    }
    return rm->st[id];
}

void readmodel_close(struct readmodel *rm)
{
    if (rm == NULL) {
        return;
    }
    for (int i = 0; i < S__COUNT; i++) {
        sqlite3_finalize(rm->st[i]);
    }
    sqlite3_close(rm->db);
    free(rm->path);
    free(rm);
}

int readmodel_open(const char *path, int mode, struct readmodel **out, struct err *e)
{
    struct readmodel *rm = xcalloc(1, sizeof(*rm));
    rm->path = xstrdup(path);
    rm->mode = mode;
    int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX;
    if (mode == RM_WRITER || mode == RM_BULK) {
        flags |= SQLITE_OPEN_CREATE;
    }
    int rc = ERR_OK;
    if (sqlite3_open_v2(path, &rm->db, flags, NULL) != SQLITE_OK) {
        rc = db_err(rm, e, "opening read models");
        goto fail;
    }
    sqlite3_busy_timeout(rm->db, 5000);
    if (mode == RM_WRITER || mode == RM_BULK) {
        /* Bulk (rebuild into a fresh file that is discarded on failure):
         * no journal, no fsync until the end. Live: WAL, fsync at
         * checkpoints; the checkpoint row makes any crash safe. */
        rc = exec(rm, mode == RM_BULK ? "PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;"
                                        " PRAGMA cache_size=-131072"
                                      : "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"
                                        " PRAGMA cache_size=-65536; PRAGMA wal_autocheckpoint=8192",
                  e);
        if (rc != ERR_OK) {
            goto fail;
        }
        sqlite3_stmt *st = NULL;
        sqlite3_prepare_v2(rm->db, "PRAGMA user_version", -1, &st, NULL);
        int ver = st != NULL && sqlite3_step(st) == SQLITE_ROW ? sqlite3_column_int(st, 0) : -1;
        sqlite3_finalize(st);
        if (ver == 0) {
            rc = exec(rm, "BEGIN", e);
            if (rc == ERR_OK) {
                rc = exec(rm, tables_sql, e);
            }
            if (rc == ERR_OK && mode == RM_WRITER) {
                rc = exec(rm, indexes_sql, e);
            }
            if (rc == ERR_OK) {
                rc = exec(rm, "PRAGMA user_version=1; COMMIT", e);
            }
        } else if (ver != SCHEMA_VERSION) {
            rc = err_set(e, ERR_STATE,
                         "read models %s have schema version %d; this build knows %d"
                         " (run `rastro rebuild`)", path, ver, SCHEMA_VERSION);
        }
        if (rc != ERR_OK) {
            goto fail;
        }
    } else {
        rc = exec(rm, "PRAGMA query_only=1; PRAGMA cache_size=-16384", e);
        if (rc != ERR_OK) {
            goto fail;
        }
    }
    *out = rm;
    return ERR_OK;
fail:
    readmodel_close(rm);
    return rc;
}

int rm_bulk_finish(struct readmodel *rm, struct err *e)
{
    int rc = exec(rm, indexes_sql, e);
    if (rc == ERR_OK) {
        rc = exec(rm, "PRAGMA journal_mode=DELETE", e);
    }
    return rc;
}

int rm_begin(struct readmodel *rm, struct err *e)
{
    return exec(rm, "BEGIN IMMEDIATE", e);
}

int rm_commit(struct readmodel *rm, struct err *e)
{
    return exec(rm, "COMMIT", e);
}

void rm_rollback(struct readmodel *rm)
{
    sqlite3_exec(rm->db, "ROLLBACK", NULL, NULL, NULL);
}

/* Steps a write statement once and resets it. */
static int step_done(struct readmodel *rm, sqlite3_stmt *st, struct err *e, const char *what)
{
    int r = sqlite3_step(st);
    int rc = r == SQLITE_DONE || r == SQLITE_ROW ? ERR_OK : db_err(rm, e, what);
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return rc;
}

int rm_get_checkpoint(struct readmodel *rm, const char *projection, int64_t *pos, struct err *e)
{
    sqlite3_stmt *st = stmt(rm, S_CKPT_GET, e);
    if (st == NULL) {
        return ERR_IO;
    }
    sqlite3_bind_text(st, 1, projection, -1, SQLITE_STATIC);
    int r = sqlite3_step(st);
    int rc = ERR_OK;
    if (r == SQLITE_ROW) {
        *pos = sqlite3_column_int64(st, 0);
    } else if (r == SQLITE_DONE) {
        *pos = 0;
    } else {
        rc = db_err(rm, e, "reading checkpoint");
    }
    sqlite3_reset(st);
    return rc;
}

int rm_set_checkpoint(struct readmodel *rm, const char *projection, int64_t pos, struct err *e)
{
    sqlite3_stmt *st = stmt(rm, S_CKPT_SET, e);
    if (st == NULL) {
        return ERR_IO;
    }
    sqlite3_bind_text(st, 1, projection, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, pos);
    return step_done(rm, st, e, "writing checkpoint");
}

static void bind_opt(sqlite3_stmt *st, int i, const char *s)
{
    if (s[0] == '\0') {
        sqlite3_bind_null(st, i);
    } else {
        sqlite3_bind_text(st, i, s, -1, SQLITE_STATIC);
    }
}

int rm_insert_tracking(struct readmodel *rm, const struct tracking *t, int64_t position,
                       int64_t recorded_at_us, struct err *e)
{
    bool conv = t->kind == KIND_CONVERSION;
    sqlite3_stmt *st = stmt(rm, conv ? S_INS_CONV : S_INS_IMP, e);
    if (st == NULL) {
        return ERR_IO;
    }
    sqlite3_bind_int64(st, 1, position);
    sqlite3_bind_text(st, 2, t->id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, t->campana_id, -1, SQLITE_STATIC);
    bind_opt(st, 4, t->influencer_id);
    bind_opt(st, 5, t->usuario_id);
    sqlite3_bind_text(st, 6, t->tipo_evento, -1, SQLITE_STATIC);
    bind_opt(st, 7, t->user_agent);
    bind_opt(st, 8, t->ip_address);
    bind_opt(st, 9, t->referrer);
    sqlite3_bind_int64(st, 10, t->timestamp_us);
    sqlite3_bind_int64(st, 11, recorded_at_us);
    if (conv) {
        sqlite3_bind_text(st, 12, conv_type_name(t->tipo_conversion), -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 13, t->valor);
        sqlite3_bind_text(st, 14, t->moneda, -1, SQLITE_STATIC);
    }
    return step_done(rm, st, e, conv ? "inserting conversion" : "inserting impression");
}

int rm_stats_add(struct readmodel *rm, enum rm_scope scope, const char *key, int64_t d_imp,
                 int64_t d_conv, int64_t last_us, struct err *e)
{
    sqlite3_stmt *st = stmt(rm, S_STATS_ADD, e);
    if (st == NULL) {
        return ERR_IO;
    }
    sqlite3_bind_int(st, 1, (int)scope);
    sqlite3_bind_text(st, 2, key, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, d_imp);
    sqlite3_bind_int64(st, 4, d_conv);
    sqlite3_bind_int64(st, 5, last_us);
    return step_done(rm, st, e, "updating statistics");
}

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

int money_parse_ticks(const char *s, __int128 *out)
{
    __int128 v = 0;
    bool neg = *s == '-';
    if (neg) {
        s++;
    }
    if (*s == '\0') {
        return ERR_INVALID;
    }
    for (; *s != '\0'; s++) {
        if (*s < '0' || *s > '9') {
            return ERR_INVALID;
        }
        v = v * 10 + (*s - '0');
    }
    *out = neg ? -v : v;
    return ERR_OK;
}

void money_format(__int128 ticks, char *out, size_t max)
{
    char digits[48];
    bool neg = ticks < 0;
    money_ticks_text(neg ? -ticks : ticks, digits, sizeof(digits));
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

int rm_stats_add_valor(struct readmodel *rm, enum rm_scope scope, const char *key,
                       const char *moneda, __int128 ticks, int64_t d_conv, struct err *e)
{
    sqlite3_stmt *get = stmt(rm, S_VALOR_GET, e);
    sqlite3_stmt *set = stmt(rm, S_VALOR_SET, e);
    if (get == NULL || set == NULL) {
        return ERR_IO;
    }
    __int128 cur = 0;
    int64_t conv = 0;
    sqlite3_bind_int(get, 1, (int)scope);
    sqlite3_bind_text(get, 2, key, -1, SQLITE_STATIC);
    sqlite3_bind_text(get, 3, moneda, -1, SQLITE_STATIC);
    int r = sqlite3_step(get);
    int rc = ERR_OK;
    if (r == SQLITE_ROW) {
        const char *txt = (const char *)sqlite3_column_text(get, 0);
        conv = sqlite3_column_int64(get, 1);
        if (txt == NULL || money_parse_ticks(txt, &cur) != ERR_OK) {
            rc = err_set(e, ERR_IO, "corrupt money total for %s %s", key, moneda);
        }
    } else if (r != SQLITE_DONE) {
        rc = db_err(rm, e, "reading money total");
    }
    sqlite3_reset(get);
    sqlite3_clear_bindings(get);
    if (rc != ERR_OK) {
        return rc;
    }
    char txt[48];
    money_ticks_text(cur + ticks, txt, sizeof(txt));
    sqlite3_bind_int(set, 1, (int)scope);
    sqlite3_bind_text(set, 2, key, -1, SQLITE_STATIC);
    sqlite3_bind_text(set, 3, moneda, -1, SQLITE_STATIC);
    sqlite3_bind_text(set, 4, txt, -1, SQLITE_STATIC);
    sqlite3_bind_int64(set, 5, conv + d_conv);
    return step_done(rm, set, e, "writing money total");
}

int rm_count_skipped(struct readmodel *rm, const char *type, int64_t n, struct err *e)
{
    sqlite3_stmt *st = stmt(rm, S_SKIP, e);
    if (st == NULL) {
        return ERR_IO;
    }
    sqlite3_bind_text(st, 1, type, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, n);
    return step_done(rm, st, e, "counting skipped event");
}

/* ---- queries ---- */

static void col_str(struct jsonw *w, const char *k, sqlite3_stmt *st, int i)
{
    jsonw_key(w, k);
    if (sqlite3_column_type(st, i) == SQLITE_NULL) {
        jsonw_null(w);
    } else {
        jsonw_strn(w, (const char *)sqlite3_column_text(st, i), (size_t)sqlite3_column_bytes(st, i));
    }
}

static void col_ts(struct jsonw *w, const char *k, sqlite3_stmt *st, int i)
{
    char ts[TS_STR_LEN + 1];
    time_format_iso8601(sqlite3_column_int64(st, i), ts);
    jsonw_kstr(w, k, ts);
}

static void col_money(struct jsonw *w, const char *k, sqlite3_stmt *st, int i)
{
    char txt[64];
    money_format(sqlite3_column_int64(st, i), txt, sizeof(txt));
    jsonw_key(w, k);
    jsonw_raw(w, txt);
}

int rm_query_by_id(struct readmodel *rm, enum tracking_kind kind, const char *id,
                   struct buf *out, struct err *e)
{
    bool conv = kind == KIND_CONVERSION;
    sqlite3_stmt *st = stmt(rm, conv ? S_BYID_CONV : S_BYID_IMP, e);
    if (st == NULL) {
        return ERR_IO;
    }
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    int r = sqlite3_step(st);
    int rc = ERR_OK;
    if (r == SQLITE_ROW) {
        struct jsonw w;
        jsonw_init(&w, out);
        jsonw_obj_open(&w);
        col_str(&w, "id", st, 1);
        col_str(&w, K_CAMPANA, st, 2);
        col_str(&w, "influencer_id", st, 3);
        col_str(&w, "usuario_id", st, 4);
        col_str(&w, "tipo_evento", st, 5);
        col_str(&w, "user_agent", st, 6);
        col_str(&w, "ip_address", st, 7);
        col_str(&w, "referrer", st, 8);
        col_ts(&w, "timestamp", st, 9);
        if (conv) {
            col_str(&w, "tipo_conversion", st, 11);
            col_money(&w, "valor", st, 12);
            col_str(&w, "moneda", st, 13);
        }
        col_ts(&w, "recorded_at", st, 10);
        jsonw_kint(&w, "position", sqlite3_column_int64(st, 0));
        jsonw_obj_close(&w);
        rc = jsonw_status(&w);
    } else if (r == SQLITE_DONE) {
        rc = err_set(e, ERR_NOTFOUND, "%s '%s' not found", conv ? "conversion" : "impression", id);
    } else {
        rc = db_err(rm, e, "reading by id");
    }
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return rc;
}

/* Counters of one campaign or influencer; zeros when unknown. */
static int stats_counts(struct readmodel *rm, enum rm_scope scope, const char *key,
                        int64_t *imp, int64_t *conv, int64_t *last, struct err *e)
{
    sqlite3_stmt *st = stmt(rm, S_STATS_GET, e);
    if (st == NULL) {
        return ERR_IO;
    }
    sqlite3_bind_int(st, 1, (int)scope);
    sqlite3_bind_text(st, 2, key, -1, SQLITE_STATIC);
    int r = sqlite3_step(st);
    int rc = ERR_OK;
    *imp = *conv = *last = 0;
    if (r == SQLITE_ROW) {
        *imp = sqlite3_column_int64(st, 0);
        *conv = sqlite3_column_int64(st, 1);
        *last = sqlite3_column_int64(st, 2);
    } else if (r != SQLITE_DONE) {
        rc = db_err(rm, e, "reading statistics");
    }
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return rc;
}

int rm_query_list(struct readmodel *rm, enum rm_scope scope, const char *key,
                  enum tracking_kind kind, int64_t limit, int64_t offset, struct buf *out,
                  struct err *e)
{
    bool conv = kind == KIND_CONVERSION;
    enum stmt_id sid = scope == SCOPE_CAMPANA ? (conv ? S_LIST_CAMP_CONV : S_LIST_CAMP_IMP)
                                              : (conv ? S_LIST_INFL_CONV : S_LIST_INFL_IMP);
    int64_t imp, nconv, last;
    int rc = stats_counts(rm, scope, key, &imp, &nconv, &last, e);
    if (rc != ERR_OK) {
        return rc;
    }
    sqlite3_stmt *st = stmt(rm, sid, e);
    if (st == NULL) {
        return ERR_IO;
    }
    struct jsonw w;
    jsonw_init(&w, out);
    jsonw_obj_open(&w);
    jsonw_kstr(&w, scope == SCOPE_CAMPANA ? K_CAMPANA : "influencer_id", key);
    jsonw_kint(&w, "total", conv ? nconv : imp);
    jsonw_kint(&w, "limit", limit);
    jsonw_kint(&w, "offset", offset);
    jsonw_key(&w, conv ? "conversiones" : "impresiones");
    jsonw_arr_open(&w);
    sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, limit);
    sqlite3_bind_int64(st, 3, offset);
    int r;
    while ((r = sqlite3_step(st)) == SQLITE_ROW) {
        jsonw_obj_open(&w);
        col_str(&w, "id", st, 0);
        col_str(&w, scope == SCOPE_CAMPANA ? "influencer_id" : K_CAMPANA, st, 1);
        col_str(&w, "usuario_id", st, 2);
        col_str(&w, "tipo_evento", st, 3);
        if (conv) {
            col_str(&w, "tipo_conversion", st, 5);
            col_money(&w, "valor", st, 6);
            col_str(&w, "moneda", st, 7);
        }
        col_ts(&w, "timestamp", st, 4);
        jsonw_obj_close(&w);
    }
    if (r != SQLITE_DONE) {
        rc = db_err(rm, e, "listing");
    }
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    jsonw_arr_close(&w);
    jsonw_obj_close(&w);
    return rc != ERR_OK ? rc : jsonw_status(&w);
}

int rm_query_stats(struct readmodel *rm, enum rm_scope scope, const char *key,
                   struct buf *out, struct err *e)
{
    int64_t imp, conv, last;
    int rc = stats_counts(rm, scope, key, &imp, &conv, &last, e);
    if (rc != ERR_OK) {
        return rc;
    }
    sqlite3_stmt *st = stmt(rm, S_VALOR_LIST, e);
    if (st == NULL) {
        return ERR_IO;
    }
    /* per-currency totals first, into a side buffer */
    struct buf per;
    buf_init(&per, 0);
    struct jsonw pw;
    jsonw_init(&pw, &per);
    jsonw_obj_open(&pw);
    int ncur = 0;
    char single[64] = "0";
    sqlite3_bind_int(st, 1, (int)scope);
    sqlite3_bind_text(st, 2, key, -1, SQLITE_STATIC);
    int r;
    while ((r = sqlite3_step(st)) == SQLITE_ROW) {
        __int128 ticks = 0;
        const char *txt = (const char *)sqlite3_column_text(st, 1);
        if (txt == NULL || money_parse_ticks(txt, &ticks) != ERR_OK) {
            rc = err_set(e, ERR_IO, "corrupt money total for %s", key);
            break;
        }
        money_format(ticks, single, sizeof(single));
        jsonw_key(&pw, (const char *)sqlite3_column_text(st, 0));
        jsonw_raw(&pw, single);
        ncur++;
    }
    if (rc == ERR_OK && r != SQLITE_DONE) {
        rc = db_err(rm, e, "reading money totals");
    }
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    jsonw_obj_close(&pw);
    if (rc == ERR_OK) {
        struct jsonw w;
        jsonw_init(&w, out);
        jsonw_obj_open(&w);
        jsonw_kstr(&w, scope == SCOPE_CAMPANA ? K_CAMPANA : "influencer_id", key);
        jsonw_kint(&w, "total_impresiones", imp);
        jsonw_kint(&w, "total_conversiones", conv);
        jsonw_key(&w, "valor_total_conversiones");
        if (ncur <= 1) {
            jsonw_raw(&w, single);      /* "0" when there is no currency at all */
        } else {
            jsonw_null(&w);             /* never summed across currencies */
        }
        jsonw_key(&w, "tasa_conversion");
        jsonw_double(&w, imp > 0 ? (double)conv * 100.0 / (double)imp : 0.0);
        jsonw_key(&w, "ultima_actualizacion");
        if (last > 0) {
            char ts[TS_STR_LEN + 1];
            time_format_iso8601(last, ts);
            jsonw_str(&w, ts);
        } else {
            jsonw_null(&w);
        }
        jsonw_key(&w, "valor_por_moneda");
        jsonw_raw(&w, per.p);
        jsonw_obj_close(&w);
        rc = jsonw_status(&w);
    }
    buf_fini(&per);
    return rc;
}

int rm_query_position(struct readmodel *rm, int64_t *pos, struct err *e)
{
    sqlite3_stmt *st = stmt(rm, S_POSITION, e);
    if (st == NULL) {
        return ERR_IO;
    }
    int rc = ERR_OK;
    if (sqlite3_step(st) == SQLITE_ROW) {
        *pos = sqlite3_column_int64(st, 0);
    } else {
        rc = db_err(rm, e, "reading position");
    }
    sqlite3_reset(st);
    return rc;
}
