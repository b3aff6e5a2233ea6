/*
 * readmodel.c - see readmodel.h.
 */
#include "read/readmodel.h"

#include <dirent.h>
#include <libgen.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/hash.h"
#include "core/jsonw.h"
#include "core/log.h"
#include "core/uuid.h"
#include "index/lsmidx.h"
#include "index/sqlerr.h"
#include "index/walpace.h"
#include "read/money.h"
#include "read/statsdelta.h"
#include "core/timeutil.h"
#include "core/xmalloc.h"

/* the read models' file written out this much at a time (walpace.h) */
#define WRITE_OUT_STEP (2 * 1024 * 1024)

#define K_CAMPANA "campa\xc3\xb1" "a_id"

/* Adds a delta to a statistics row (of stats, or of a copy: rm_verify). */
#define STATS_UPSERT_SQL(table) \
    "INSERT INTO " table "(scope, key, impresiones, conversiones, ultima, valores)" \
    " VALUES(?1,?2,?3,?4,?5,?6) ON CONFLICT(scope, key) DO UPDATE SET" \
    " impresiones=impresiones+excluded.impresiones," \
    " conversiones=conversiones+excluded.conversiones," \
    " ultima=max(ultima, excluded.ultima)," \
    " valores=rastro_merge_valores(valores, excluded.valores)"

enum stmt_id {
    S_CKPT_GET, S_CKPT_SET,
    S_INS_IMP, S_INS_CONV,
    S_STATS_ADD, S_SKIP,
    S_ROW_IMP, S_ROW_CONV, S_META_GET, S_UNINDEXED, S_COUNT_ADD, S_COUNTS, S_STATS_ROWS,
    S_STATS_GET, S_POSITION, S_BEGIN, S_COMMIT, S_PEND_ADD, S_PEND_ALL, S_PEND_DROP,
    S_FOLD_GET, S_FOLD_SET, S_FOLD_CLEAR,
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
    /* one seek and an update in place: counters and the per-currency
     * totals of a key share a row (rastro_merge_valores: writer only) */
    [S_STATS_ADD] = STATS_UPSERT_SQL("stats"),
    [S_SKIP] = "INSERT INTO skipped(type, count) VALUES(?1,?2)"
               " ON CONFLICT(type) DO UPDATE SET count=count+excluded.count",
    [S_ROW_IMP] = "SELECT position, id, campana_id, influencer_id, usuario_id, tipo_evento,"
                  " user_agent, ip_address, referrer, timestamp, recorded_at"
                  " FROM impresiones WHERE position=?",
    [S_ROW_CONV] = "SELECT position, id, campana_id, influencer_id, usuario_id, tipo_evento,"
                   " user_agent, ip_address, referrer, timestamp, recorded_at,"
                   " tipo_conversion, valor, moneda FROM conversiones WHERE position=?",
    [S_META_GET] = "SELECT v FROM meta WHERE k=?",
    [S_COUNT_ADD] = "INSERT INTO counts(name, n) VALUES(?1, ?2)"
                    " ON CONFLICT(name) DO UPDATE SET n = n + excluded.n",
    [S_COUNTS] = "SELECT coalesce((SELECT n FROM counts WHERE name='impresiones'), 0),"
                 " coalesce((SELECT n FROM counts WHERE name='conversiones'), 0)",
    [S_STATS_ROWS] = "SELECT count(*) FROM stats",
    [S_UNINDEXED] = "SELECT position, 0, id, campana_id, influencer_id FROM impresiones"
                    " WHERE position > ?1 UNION ALL"
                    " SELECT position, 1, id, campana_id, influencer_id FROM conversiones"
                    " WHERE position > ?1 ORDER BY 1",
    [S_STATS_GET] = "SELECT impresiones, conversiones, ultima, valores FROM stats"
                    " WHERE scope=? AND key=?",
    [S_POSITION] = "SELECT coalesce(min(position), 0) FROM checkpoints",
    /* a query's read transaction: prepared once, not parsed per query
     * (sqlite3_exec was 10 % of a by-id miss) */
    [S_PEND_ADD] = "INSERT INTO stats_pending(rec) VALUES(?)",
    [S_PEND_ALL] = "SELECT seq, rec FROM stats_pending ORDER BY seq",
    [S_PEND_DROP] = "DELETE FROM stats_pending WHERE seq <= ?",
    [S_FOLD_GET] = "SELECT seq, scope, key FROM stats_fold",
    [S_FOLD_SET] = "INSERT INTO stats_fold(id, seq, scope, key) VALUES(1,?1,?2,?3)"
                   " ON CONFLICT(id) DO UPDATE SET seq=excluded.seq, scope=excluded.scope,"
                   " key=excluded.key",
    [S_FOLD_CLEAR] = "DELETE FROM stats_fold",
    [S_BEGIN] = "BEGIN",
    [S_COMMIT] = "COMMIT",
};

/* The statistics table's layout (stats, or rm_verify's copy of it). */
#define STATS_COLUMNS_SQL(table) \
    table "(scope INTEGER NOT NULL, key TEXT NOT NULL," \
    " impresiones INTEGER NOT NULL, conversiones INTEGER NOT NULL, ultima INTEGER NOT NULL," \
    /* valores: per-currency totals, "COP=12345000/3,USD=5000/1" (money.h) */ \
    " valores TEXT NOT NULL DEFAULT ''," \
    " PRIMARY KEY(scope, key)) WITHOUT ROWID"

/* A batch's statistics deltas, one record list a batch (statsdelta.h),
 * until the writer folds them into stats. */
#define STATS_PENDING_SQL \
    "CREATE TABLE IF NOT EXISTS stats_pending(seq INTEGER PRIMARY KEY, rec BLOB NOT NULL);" \
    STATS_FOLD_SQL
/* A fold under way (at most one row): stats_pending's records up to seq
 * of keys up to (scope, key), in key order, are already in stats. */
#define STATS_FOLD_SQL \
    "CREATE TABLE IF NOT EXISTS stats_fold(id INTEGER PRIMARY KEY CHECK(id = 1)," \
    " seq INTEGER NOT NULL, scope INTEGER NOT NULL, key TEXT NOT NULL);"

static const char *tables_sql =
    "CREATE TABLE IF NOT EXISTS meta(k TEXT PRIMARY KEY, v TEXT NOT NULL);"
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
    "CREATE TABLE IF NOT EXISTS " STATS_COLUMNS_SQL("stats") ";"
    "CREATE TABLE IF NOT EXISTS skipped(type TEXT PRIMARY KEY, count INTEGER NOT NULL);"
    /* rows per read model, kept with each batch (a count(*) would scan) */
    "CREATE TABLE IF NOT EXISTS counts(name TEXT PRIMARY KEY, n INTEGER NOT NULL);"
    STATS_PENDING_SQL;

/* A rebuild's index memtables, in entries (the default is lsmidx's 256K).
 * A rebuild adds three entries an event; each flush is a run that merges
 * rewrite. Since runs are blocks merged in C (lsmidx.c), merging is cheap
 * and memtable size is mostly memory: on 10M events, 256K 315k/s peak 149
 * MiB, 512K 346-360k/s 177 MiB, 1M (and 2M for the lists) 350k/s 281 MiB. */
#define BULK_MEMTABLE (512u * 1024)

struct rm_index {
    struct lsmidx *ids;         /* hash(kind, id) -> position */
    struct lsmidx *lists;       /* hash(kind, scope, key) -> positions */
    /* The statistics deltas committed but not folded into stats (copies of
     * stats_pending's records; statsdelta.h): ps since the last fold
     * began, fs what a fold under way has not folded yet. Readers hold
     * ps_lock for reading from before their snapshot starts until they
     * have added their key's deltas; the writer holds it for writing
     * across each COMMIT and the change to ps or fs that goes with it, so
     * a reader sees stats and the maps as of one commit: a fold slice's
     * rows exactly when their keys are gone from fs. */
    pthread_rwlock_t ps_lock;
    struct sdelta *ps;
    struct sdelta *fs;          /* a fold under way: what it has not folded yet */
    char ids_path[4400];
    char lists_path[4400];
};

/* Index entries waiting for their batch to commit. */
struct pending {
    struct lsmidx_entry *v;
    size_t n, cap;
};

struct readmodel {
    sqlite3 *db;
    char *path;
    int mode;
    sqlite3_stmt *st[S__COUNT];
    struct rm_index *ix;
    bool owns_ix;
    struct lsmidx_reader *ids_r, *lists_r;
    struct pending pend_ids, pend_lists;
    int64_t batch_pos;          /* the checkpoint the open batch will commit */
    int64_t batch_rows[2];      /* rows the open batch added, by kind */
    struct buf batch_stats;     /* writer: the open batch's statistics deltas (records) */
    int64_t folded_us;          /* writer: when pending statistics were last folded */
    int64_t wal_frames;         /* writer: frames in the WAL after the last commit */
    int64_t batch_seq;          /* writer: stats_pending row the open batch wrote */
    int64_t last_seq;           /* writer: stats_pending's last committed row */
    /* writer: a fold under way: fs's keys in key order, folded up to
     * fold_i; the open transaction, when slicing, folds up to slice_end */
    const struct sdelta_rec **fold_keys;
    size_t fold_n, fold_i, slice_end;
    bool slicing;
    int64_t fold_seq;           /* the last stats_pending row the fold covers */
    struct walpace pace;        /* live writer: checkpoints at a pace; off otherwise */
};

static int db_err(struct readmodel *rm, struct err *e, const char *what)
{
    return err_set(e, ERR_IO, "%s: %s (%s)", what, sql_err(rm->db), rm->path);
}

static int exec(struct readmodel *rm, const char *sql, struct err *e)
{
    char *msg = NULL;
    if (sqlite3_exec(rm->db, sql, NULL, NULL, &msg) != SQLITE_OK) {
        int rc = err_set(e, ERR_IO, "%.80s: %s (%s)", sql, sql_err(rm->db), rm->path);
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

static void index_close(struct rm_index *ix)
{
    if (ix != NULL) {
        lsmidx_close(ix->ids);
        lsmidx_close(ix->lists);
        sdelta_free(ix->ps);
        sdelta_free(ix->fs);
        pthread_rwlock_destroy(&ix->ps_lock);
        free(ix);
    }
}

void readmodel_close(struct readmodel *rm)
{
    if (rm == NULL) {
        return;
    }
    if (rm->mode == RM_WRITER && rm->owns_ix && rm->ix->ps != NULL &&
        sqlite3_get_autocommit(rm->db)) {
        /* a stopped server leaves its statistics folded (nothing is lost
         * either way: stats_pending holds them until a fold) */
        struct err e;
        err_clear(&e);
        if (rm_fold(rm, &e) != ERR_OK) {
            log_warn("statistics left pending in the read models; the next start folds them",
                     "err=\"%s\"", e.msg);
        }
    }
    for (int i = 0; i < S__COUNT; i++) {
        sqlite3_finalize(rm->st[i]);
    }
    lsmidx_reader_close(rm->ids_r);
    lsmidx_reader_close(rm->lists_r);
    if (rm->owns_ix) {
        index_close(rm->ix);
    }
    walpace_close(&rm->pace, rm->db);
    sqlite3_close(rm->db);
    free(rm->pend_ids.v);
    free(rm->pend_lists.v);
    buf_fini(&rm->batch_stats);
    free(rm->fold_keys);
    free(rm->path);
    free(rm);
}

struct rm_index *readmodel_index(struct readmodel *writer)
{
    return writer->ix;
}

void readmodel_index_quiesce(struct readmodel *writer)
{
    lsmidx_quiesce(writer->ix->ids);
    lsmidx_quiesce(writer->ix->lists);
}

/* hash(kind, id) for the ids index. */
static uint64_t id_hash(const struct lsmidx *ix, enum tracking_kind kind, const char *id)
{
    char buf[ID_MAX * 2 + 4];
    size_t n = strlen(id);
    if (n > sizeof(buf) - 2) {
        n = sizeof(buf) - 2;
    }
    buf[0] = kind == KIND_IMPRESION ? 'i' : 'c';
    buf[1] = ':';
    memcpy(buf + 2, id, n);
    return lsmidx_hash(ix, buf, n + 2);
}

/* hash(kind, scope, key) for the lists index. */
static uint64_t list_hash(const struct lsmidx *ix, enum tracking_kind kind, enum rm_scope scope,
                          const char *key)
{
    char buf[ID_MAX * 2 + 4];
    size_t n = strlen(key);
    if (n > sizeof(buf) - 3) {
        n = sizeof(buf) - 3;
    }
    buf[0] = kind == KIND_IMPRESION ? 'i' : 'c';
    buf[1] = scope == SCOPE_CAMPANA ? 'C' : 'I';
    buf[2] = ':';
    memcpy(buf + 3, key, n);
    return lsmidx_hash(ix, buf, n + 3);
}

/* The generation ties index files to this read-model file. */
static int generation(struct readmodel *rm, char *out, size_t max, struct err *e)
{
    sqlite3_stmt *st = stmt(rm, S_META_GET, e);
    if (st == NULL) {
        return ERR_IO;
    }
    sqlite3_bind_text(st, 1, "generation", -1, SQLITE_STATIC);
    int rc = ERR_NOTFOUND;
    if (sqlite3_step(st) == SQLITE_ROW) {
        snprintf(out, max, "%s", (const char *)sqlite3_column_text(st, 0));
        rc = ERR_OK;
    }
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    if (rc == ERR_OK) {
        return ERR_OK;
    }
    struct uuid u;
    uuid_v4(&u);
    uuid_format(&u, out);
    char sql[128];
    snprintf(sql, sizeof(sql), "INSERT INTO meta(k, v) VALUES('generation', '%s')", out);
    return exec(rm, sql, e);
}

/* Removes index files of other generations (left by a rebuild). */
static void remove_stale(const char *dir, const char *gen)
{
    DIR *d = opendir(dir);
    if (d == NULL) {
        return;
    }
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (strncmp(de->d_name, "rm-", 3) == 0 && strstr(de->d_name, gen) == NULL &&
            (strstr(de->d_name, ".ids") != NULL || strstr(de->d_name, ".lists") != NULL)) {
            char p[4400];
            snprintf(p, sizeof(p), "%s/%s", dir, de->d_name);
            if (unlink(p) == 0) {
                log_info("removed index file of an older generation", "path=%s", p);
            }
        }
    }
    closedir(d);
}

/* The first column of the one row sql gives, read from the file at path
 * without opening it as read models (no index files, no threads). */
static int peek_text(const char *path, const char *sql, char *out, size_t max, struct err *e)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    int rc = ERR_OK;
    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK ||
        sqlite3_step(st) != SQLITE_ROW || sqlite3_column_text(st, 0) == NULL) {
        rc = err_set(e, ERR_IO, "reading %s: %s", path,
                     db != NULL ? sqlite3_errmsg(db) : "cannot open");
    } else {
        snprintf(out, max, "%s", (const char *)sqlite3_column_text(st, 0));
    }
    sqlite3_finalize(st);
    sqlite3_close(db);
    return rc;
}

int rm_file_generation(const char *path, char *out, size_t max, struct err *e)
{
    return peek_text(path, "SELECT v FROM meta WHERE k='generation'", out, max, e);
}

int rm_remove_stale_indexes(const char *path, struct err *e)
{
    char gen[64] = "";
    int rc = rm_file_generation(path, gen, sizeof(gen), e);
    if (rc == ERR_OK) {
        char dir[4096];
        snprintf(dir, sizeof(dir), "%s", path);
        remove_stale(dirname(dir), gen);
    }
    return rc;
}

static void pend(struct pending *p, uint64_t h, int64_t pos)
{
    if (p->n == p->cap) {
        p->cap = p->cap ? p->cap * 2 : 1024;
        p->v = xrealloc(p->v, p->cap * sizeof(*p->v));
    }
    p->v[p->n].h = h;
    p->v[p->n].pos = pos;
    p->n++;
}

/* The index entries of one row (by id, campaign list, influencer list). */
static void index_row(struct readmodel *rm, enum tracking_kind kind, const char *id,
                      const char *camp, const char *infl, int64_t pos)
{
    pend(&rm->pend_ids, id_hash(rm->ix->ids, kind, id), pos);
    pend(&rm->pend_lists, list_hash(rm->ix->lists, kind, SCOPE_CAMPANA, camp), pos);
    if (infl != NULL && infl[0] != '\0') {
        pend(&rm->pend_lists, list_hash(rm->ix->lists, kind, SCOPE_INFLUENCER, infl), pos);
    }
}

static void apply_pending(struct readmodel *rm, int64_t upto)
{
    lsmidx_add_many(rm->ix->ids, rm->pend_ids.v, rm->pend_ids.n);
    lsmidx_add_many(rm->ix->lists, rm->pend_lists.v, rm->pend_lists.n);
    rm->pend_ids.n = rm->pend_lists.n = 0;
    lsmidx_commit(rm->ix->ids, upto);
    lsmidx_commit(rm->ix->lists, upto);
}

/*
 * Writer: opens the index files of this file's generation and re-adds the
 * rows after the lower of their flushed marks (a file found ahead of the
 * read models, say from another copy, is reset and rebuilt).
 */
static int open_index(struct readmodel *rm, struct err *e)
{
    char gen[64], dir[4096];
    int rc = generation(rm, gen, sizeof(gen), e);
    if (rc != ERR_OK) {
        return rc;
    }
    snprintf(dir, sizeof(dir), "%s", rm->path);
    char *d = dirname(dir);
    const char *mt = getenv("RASTRO_INDEX_MEMTABLE");
    size_t memtable = mt != NULL ? (size_t)strtoull(mt, NULL, 10)
                      : rm->mode == RM_BULK ? BULK_MEMTABLE : 0;
    rm->ix = xcalloc(1, sizeof(*rm->ix));
    rm->owns_ix = true;
    pthread_rwlockattr_t la;
    pthread_rwlockattr_init(&la);
    /* readers come back to back from the HTTP threads: never starve the
     * writer's commit */
    pthread_rwlockattr_setkind_np(&la, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    pthread_rwlock_init(&rm->ix->ps_lock, &la);
    pthread_rwlockattr_destroy(&la);
    rm->ix->ps = sdelta_new();
    rm->ix->fs = sdelta_new();
    snprintf(rm->ix->ids_path, sizeof(rm->ix->ids_path), "%s/rm-%s.ids", d, gen);
    snprintf(rm->ix->lists_path, sizeof(rm->ix->lists_path), "%s/rm-%s.lists", d, gen);
    int bulk = rm->mode == RM_BULK ? LSMIDX_BULK : 0;
    rc = lsmidx_open(rm->ix->ids_path, memtable, bulk, &rm->ix->ids, e);
    if (rc == ERR_OK) {
        rc = lsmidx_open(rm->ix->lists_path, memtable, LSMIDX_NO_BLOOM | bulk, &rm->ix->lists,
                         e);
    }
    if (rc != ERR_OK) {
        return rc;
    }
    if (rm->mode == RM_WRITER) {
        remove_stale(d, gen);   /* not while rebuilding: those still serve the old file */
    }
    int64_t ckpt = 0;
    sqlite3_stmt *st = stmt(rm, S_POSITION, e);
    if (st == NULL) {
        return ERR_IO;
    }
    if (sqlite3_step(st) == SQLITE_ROW) {
        ckpt = sqlite3_column_int64(st, 0);
    }
    sqlite3_reset(st);
    struct lsmidx *both[2] = { rm->ix->ids, rm->ix->lists };
    int64_t from = INT64_MAX;
    for (int i = 0; i < 2; i++) {
        int64_t f = lsmidx_flushed(both[i]);
        if (f > ckpt) {
            log_warn("read-model index ahead of the read models; rebuilding it", "ckpt=%lld",
                     (long long)ckpt);
            rc = lsmidx_reset(both[i], e);
            if (rc != ERR_OK) {
                return rc;
            }
            f = 0;
        }
        if (f < from) {
            from = f;
        }
    }
    int64_t flushed[2] = { lsmidx_flushed(both[0]), lsmidx_flushed(both[1]) };
    st = stmt(rm, S_UNINDEXED, e);
    if (st == NULL) {
        return ERR_IO;
    }
    sqlite3_bind_int64(st, 1, from);
    int r;
    int64_t n = 0;
    while ((r = sqlite3_step(st)) == SQLITE_ROW) {
        int64_t pos = sqlite3_column_int64(st, 0);
        enum tracking_kind kind = sqlite3_column_int(st, 1) ? KIND_CONVERSION : KIND_IMPRESION;
        const char *id = (const char *)sqlite3_column_text(st, 2);
        const char *camp = (const char *)sqlite3_column_text(st, 3);
        const char *infl = (const char *)sqlite3_column_text(st, 4);
        if (pos > flushed[0]) {
            lsmidx_add(rm->ix->ids, id_hash(rm->ix->ids, kind, id), pos);
        }
        if (pos > flushed[1]) {
            lsmidx_add(rm->ix->lists, list_hash(rm->ix->lists, kind, SCOPE_CAMPANA, camp), pos);
            if (infl != NULL) {
                lsmidx_add(rm->ix->lists, list_hash(rm->ix->lists, kind, SCOPE_INFLUENCER, infl),
                           pos);
            }
        }
        if (++n % 65536 == 0) {
            lsmidx_commit(rm->ix->ids, pos);
            lsmidx_commit(rm->ix->lists, pos);
        }
    }
    sqlite3_reset(st);
    if (r != SQLITE_DONE) {
        return db_err(rm, e, "re-indexing read models");
    }
    lsmidx_commit(rm->ix->ids, ckpt);
    lsmidx_commit(rm->ix->lists, ckpt);
    return ERR_OK;
}

static int on_wal(void *arg, sqlite3 *db, const char *name, int frames);

/* Walking stats_pending's records that are not in stats yet: those of a
 * fold under way (stats_fold) up to its cursor are. */
struct pending_walk {
    bool fold_on;               /* stats_fold has its row */
    int64_t fold_seq;
    int fold_scope;
    char *fold_key;
    size_t fold_klen;
    int64_t seq, last_seq;      /* the row being walked, the last one */
    int (*fn)(void *arg, const struct pending_walk *w, const struct sdelta_rec *r);
    void *arg;
};

static int walk_rec(void *arg, const struct sdelta_rec *r)
{
    const struct pending_walk *w = arg;
    if (w->fold_on && w->seq <= w->fold_seq &&
        sdelta_key_cmp(r->scope, r->key, r->klen, w->fold_scope, w->fold_key, w->fold_klen) <= 0) {
        return ERR_OK;      /* folded already */
    }
    return w->fn(w->arg, w, r);
}

/* On any connection to the read models (the writer's, or rm_verify's
 * inside its snapshot). */
static int walk_pending(sqlite3 *db, struct pending_walk *w, struct err *e)
{
    sqlite3_stmt *st = NULL;
    int rc = ERR_OK;
    w->fold_on = false;
    w->fold_key = NULL;
    w->last_seq = 0;
    if (sqlite3_prepare_v2(db, stmt_sql[S_FOLD_GET], -1, &st, NULL) != SQLITE_OK) {
        return err_set(e, ERR_IO, "reading the fold cursor: %s", sqlite3_errmsg(db));
    }
    int r = sqlite3_step(st);
    if (r == SQLITE_ROW) {
        w->fold_on = true;
        w->fold_seq = sqlite3_column_int64(st, 0);
        w->fold_scope = sqlite3_column_int(st, 1);
        w->fold_klen = (size_t)sqlite3_column_bytes(st, 2);
        w->fold_key = xmalloc(w->fold_klen + 1);
        memcpy(w->fold_key, sqlite3_column_text(st, 2), w->fold_klen + 1);
    } else if (r != SQLITE_DONE) {
        rc = err_set(e, ERR_IO, "reading the fold cursor: %s", sqlite3_errmsg(db));
    }
    sqlite3_finalize(st);
    st = NULL;
    if (rc == ERR_OK && sqlite3_prepare_v2(db, stmt_sql[S_PEND_ALL], -1, &st, NULL) != SQLITE_OK) {
        rc = err_set(e, ERR_IO, "reading pending statistics: %s", sqlite3_errmsg(db));
    }
    while (rc == ERR_OK && (r = sqlite3_step(st)) == SQLITE_ROW) {
        w->seq = w->last_seq = sqlite3_column_int64(st, 0);
        int x = sdelta_rec_each(sqlite3_column_blob(st, 1), (size_t)sqlite3_column_bytes(st, 1),
                                walk_rec, w);
        if (x != ERR_OK) {
            rc = err_set(e, ERR_IO, "corrupt pending statistics (row %lld): `rastro rebuild`",
                         (long long)w->seq);
        }
    }
    if (rc == ERR_OK && r != SQLITE_DONE) {
        rc = err_set(e, ERR_IO, "reading pending statistics: %s", sqlite3_errmsg(db));
    }
    sqlite3_finalize(st);
    return rc;
}

/* Records of a fold under way go to fs, to be folded in it; later ones
 * to ps. */
static int load_rec(void *arg, const struct pending_walk *w, const struct sdelta_rec *r)
{
    struct rm_index *ix = arg;
    return sdelta_add(w->fold_on && w->seq <= w->fold_seq ? ix->fs : ix->ps, r);
}

/* The writer's copies in memory of stats_pending (statsdelta.h), and a
 * fold a crash interrupted, to be finished first (a new one would move
 * the cursor over records it covers). */
static int load_pending(struct readmodel *rm, struct err *e)
{
    struct pending_walk w = { .fn = load_rec, .arg = rm->ix };
    int rc = walk_pending(rm->db, &w, e);
    free(w.fold_key);
    if (rc == ERR_OK) {
        rm->last_seq = w.last_seq;
        if (w.fold_on) {
            rm->fold_seq = w.fold_seq;
            rm->fold_keys = sdelta_sorted(rm->ix->fs, &rm->fold_n);
            rm->fold_i = 0;
        }
    }
    rm->folded_us = time_mono_us();
    return rc;
}

static int open_readers(struct readmodel *rm, struct err *e)
{
    int rc = lsmidx_reader_open(rm->ix->ids, &rm->ids_r, e);
    if (rc == ERR_OK) {
        rc = lsmidx_reader_open(rm->ix->lists, &rm->lists_r, e);
    }
    return rc;
}

/* rastro_merge_valores(a, b): two per-currency lists summed (money.h). A
 * list that does not parse, or a sum past 128 bits, fails the statement and
 * with it the batch: a total is never guessed. */
static void sql_merge_valores(sqlite3_context *ctx, int argc, sqlite3_value **argv)
{
    (void)argc;
    const char *a = (const char *)sqlite3_value_text(argv[0]);
    const char *b = (const char *)sqlite3_value_text(argv[1]);
    if (a == NULL || b == NULL) {
        sqlite3_result_error(ctx, "corrupt money total", -1);
        return;
    }
    size_t na = (size_t)sqlite3_value_bytes(argv[0]), nb = (size_t)sqlite3_value_bytes(argv[1]);
    if (nb == 0) {
        sqlite3_result_value(ctx, argv[0]);     /* impressions only: nothing to add */
        return;
    }
    struct buf out;
    buf_init(&out, 0);
    int rc = money_totals_merge(a, na, b, nb, &out);
    if (rc == ERR_OK) {
        sqlite3_result_text(ctx, out.p != NULL ? out.p : "", (int)out.len, SQLITE_TRANSIENT);
    } else {
        sqlite3_result_error(ctx, rc == ERR_TOOBIG ? "money total overflow" : "corrupt money total",
                             -1);
    }
    buf_fini(&out);
}

int readmodel_open(const char *path, int mode, struct rm_index *ix, struct readmodel **out,
                   struct err *e)
{
    struct readmodel *rm = xcalloc(1, sizeof(*rm));
    rm->path = xstrdup(path);
    walpace_init(&rm->pace, rm->path, WRITE_OUT_STEP, "PRAGMA synchronous=NORMAL");
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
    /* The writer fails fast on a lock held by someone else (the projector
     * then backs off and keeps waking min_position waiters on time);
     * readers in WAL mode are not blocked by the writer anyway. */
    sqlite3_busy_timeout(rm->db, mode == RM_READER ? 5000 : 100);
    if (mode == RM_WRITER || mode == RM_BULK) {
        /* Bulk (rebuild into a fresh file that is discarded on failure):
         * no journal, no fsync until the end. Live: WAL, synced at
         * checkpoints, at a pace (walpace.h, every CHECKPOINT_FRAMES);
         * the checkpoint row makes any crash safe. */
        rc = exec(rm, mode == RM_BULK ? "PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;"
                                        " PRAGMA cache_size=-16384"
                                      : "PRAGMA journal_mode=WAL; PRAGMA synchronous=OFF;"
                                        " PRAGMA cache_size=-16384",
                  e);
        if (rc == ERR_OK &&
            sqlite3_create_function(rm->db, "rastro_merge_valores", 2,
                                    SQLITE_UTF8 | SQLITE_DETERMINISTIC | SQLITE_DIRECTONLY, NULL,
                                    sql_merge_valores, NULL, NULL) != SQLITE_OK) {
            rc = db_err(rm, e, "registering rastro_merge_valores");
        }
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
            if (rc == ERR_OK) {
                char sql[64];
                snprintf(sql, sizeof(sql), "PRAGMA user_version=%d; COMMIT", RM_SCHEMA_VERSION);
                rc = exec(rm, sql, e);
            }
        } else if (ver != RM_SCHEMA_VERSION) {
            rc = err_set(e, ERR_STATE,
                         "read models %s have schema version %d; this build knows %d (%s)",
                         path, ver, RM_SCHEMA_VERSION,
                         ver > RM_SCHEMA_VERSION ? "written by a newer rastro: run that one,"
                                                   " or `rastro rebuild` with this one"
                                                 : "run `rastro rebuild`");
        }
        if (rc == ERR_OK) {
            rc = open_index(rm, e);
        }
        if (rc == ERR_OK && mode == RM_WRITER) {
            sqlite3_wal_hook(rm->db, on_wal, rm);   /* instead of the autocheckpoint */
            rc = walpace_open(&rm->pace, rm->db, e);
        }
        if (rc == ERR_OK && mode == RM_WRITER) {
            rc = load_pending(rm, e);
        }
        if (rc != ERR_OK) {
            goto fail;
        }
    } else {
        rm->ix = ix;
        rc = exec(rm, "PRAGMA query_only=1; PRAGMA cache_size=-4096", e);
        if (rc != ERR_OK) {
            goto fail;
        }
    }
    rc = open_readers(rm, e);
    if (rc != ERR_OK) {
        goto fail;
    }
    *out = rm;
    return ERR_OK;
fail:
    readmodel_close(rm);
    return rc;
}

int rm_schema_version(const char *path, int *version, struct err *e)
{
    *version = 0;
    if (access(path, F_OK) != 0) {
        return ERR_OK;
    }
    char v[32];
    int rc = peek_text(path, "PRAGMA user_version", v, sizeof(v), e);
    if (rc == ERR_OK) {
        *version = atoi(v);
    }
    return rc;
}

int rm_bulk_finish(struct readmodel *rm, struct err *e)
{
    int rc = lsmidx_finish(rm->ix->ids, e);
    if (rc == ERR_OK) {
        rc = lsmidx_finish(rm->ix->lists, e);
    }
    return rc == ERR_OK ? exec(rm, "PRAGMA journal_mode=DELETE", e) : rc;
}

int rm_begin(struct readmodel *rm, struct err *e)
{
    rm->pend_ids.n = rm->pend_lists.n = 0;
    rm->batch_rows[0] = rm->batch_rows[1] = 0;
    buf_reset(&rm->batch_stats);
    rm->slicing = false;
    rm->batch_seq = 0;
    return exec(rm, "BEGIN IMMEDIATE", e);
}

static int step_done(struct readmodel *rm, sqlite3_stmt *st, struct err *e, const char *what);

/* Pending statistics are due to be folded into stats this often, or
 * sooner once this many keys are pending (rm_fold_due; ~150 bytes of
 * memory a key). A fold walks the pending keys in the table's order in
 * slices of FOLD_SLICE keys, a transaction each, so each stats page is
 * rewritten about once a fold, and batches (and readers waiting for them)
 * run between slices: folding 100,000 keys in one transaction took tens
 * of milliseconds, and the lag's p99 at half load went 65-82 -> 95-108
 * ms; folds of 8,192 keys at once came as often as batches with random
 * keys and saved nothing. */
#define FOLD_MS 1000
#define FOLD_KEYS 65536
#define FOLD_SLICE 2048
/* The writer checkpoints its WAL past this many frames (8 MiB at 4 KiB a
 * page), after a commit and outside ps_lock: SQLite's own autocheckpoint
 * would run inside the COMMIT, with readers of statistics waiting on it.
 * 8 MiB, not 32: its fsync shares the disk with the committer's
 * fdatasync, and 32 MiB at a time held commits up (conversion POSTs' p99
 * 11.2 -> 7.2-8.1 ms, lag p99 81 -> 70-72 ms at half load; 1,024 pages:
 * same p99, 10 % more bytes written). */
#define CHECKPOINT_FRAMES 2048

static void bind_rec(sqlite3_stmt *st, const struct sdelta_rec *r)
{
    sqlite3_bind_int(st, 1, r->scope);
    sqlite3_bind_text(st, 2, r->key, (int)r->klen, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, r->imp);
    sqlite3_bind_int64(st, 4, r->conv);
    sqlite3_bind_int64(st, 5, r->last);
    sqlite3_bind_text(st, 6, r->vlen > 0 ? r->valores : "", (int)r->vlen, SQLITE_STATIC);
}

static int add_to_map(void *arg, const struct sdelta_rec *r)
{
    return sdelta_add(arg, r);
}

/* Before a live writer's COMMIT: the batch's statistics go to
 * stats_pending as one record list. */
static int write_stats(struct readmodel *rm, struct err *e)
{
    if (rm->batch_stats.len == 0) {
        return ERR_OK;
    }
    sqlite3_stmt *st = stmt(rm, S_PEND_ADD, e);
    if (st == NULL) {
        return ERR_IO;
    }
    sqlite3_bind_blob(st, 1, rm->batch_stats.p, (int)rm->batch_stats.len, SQLITE_STATIC);
    int rc = step_done(rm, st, e, "writing pending statistics");
    rm->batch_seq = rc == ERR_OK ? sqlite3_last_insert_rowid(rm->db) : 0;
    return rc;
}

static int on_wal(void *arg, sqlite3 *db, const char *name, int frames)
{
    (void)db;
    (void)name;
    ((struct readmodel *)arg)->wal_frames = frames;
    return SQLITE_OK;
}

/* The live writer checkpoints at a pace (walpace.h): most of the event
 * store's slow commits (3-7 ms) fell inside SQLite's own checkpoint of
 * 8 MiB of read-model WAL. After a failure (and in a bulk file, which
 * never checkpoints), SQLite's checkpoint with its own syncs. */
static void checkpoint(struct readmodel *rm)
{
    if (walpace_on(&rm->pace)) {
        (void)walpace_checkpoint(&rm->pace, rm->db);
    } else {
        sqlite3_wal_checkpoint_v2(rm->db, NULL, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
    }
}

/* COMMIT, and the maps in memory brought to what was committed, under
 * ps_lock: the batch's deltas into ps, or a fold slice's keys retired
 * from fs (all of fs once the fold is over). */
static int commit_stats(struct readmodel *rm, struct err *e)
{
    struct rm_index *ix = rm->ix;
    pthread_rwlock_wrlock(&ix->ps_lock);
    int rc = exec(rm, "COMMIT", e);
    if (rc == ERR_OK && rm->slicing) {
        for (size_t i = rm->fold_i; i < rm->slice_end; i++) {
            sdelta_retire(ix->fs, rm->fold_keys[i]);
        }
        rm->fold_i = rm->slice_end;
        if (rm->fold_i == rm->fold_n) {
            sdelta_clear(ix->fs);
            free(rm->fold_keys);
            rm->fold_keys = NULL;
            rm->fold_n = rm->fold_i = 0;
            rm->fold_seq = 0;
            rm->folded_us = time_mono_us();
        }
    } else if (rc == ERR_OK &&
               sdelta_rec_each(rm->batch_stats.p, rm->batch_stats.len, add_to_map, ix->ps) != ERR_OK) {
        /* cannot happen (the records were written here, sums of int64
         * counts do not overflow); queries would count short until the
         * next start reads stats_pending again */
        log_error("pending statistics not added in memory", NULL);
    }
    if (rc == ERR_OK && rm->batch_seq > 0) {
        rm->last_seq = rm->batch_seq;
    }
    pthread_rwlock_unlock(&ix->ps_lock);
    rm->slicing = false;
    rm->batch_seq = 0;
    buf_reset(&rm->batch_stats);
    if (rc == ERR_OK) {
        walpace_kick(&rm->pace, false);     /* the batch's frames: to the disk now */
    }
    if (rc == ERR_OK && rm->wal_frames >= CHECKPOINT_FRAMES) {
        checkpoint(rm);
        rm->wal_frames = 0;
    }
    return rc;
}

int rm_fold_due(struct readmodel *rm)
{
    if (rm->mode != RM_WRITER) {
        return 0;
    }
    size_t n = sdelta_count(rm->ix->ps);
    if (rm->fold_keys != NULL || n >= FOLD_KEYS) {
        return n >= FOLD_KEYS ? 2 : 1;
    }
    return n > 0 && time_mono_us() - rm->folded_us >= FOLD_MS * 1000 ? 1 : 0;
}

/* Starts a fold: what ps holds (the deltas of stats_pending's records up
 * to last_seq) moves to fs, to be folded in key order. */
static void fold_start(struct readmodel *rm)
{
    struct rm_index *ix = rm->ix;
    pthread_rwlock_wrlock(&ix->ps_lock);
    struct sdelta *t = ix->fs;      /* empty */
    ix->fs = ix->ps;
    ix->ps = t;
    pthread_rwlock_unlock(&ix->ps_lock);
    rm->fold_seq = rm->last_seq;
    rm->fold_keys = sdelta_sorted(ix->fs, &rm->fold_n);
    rm->fold_i = 0;
}

int rm_fold_step(struct readmodel *rm, bool *more, struct err *e)
{
    *more = false;
    if (rm->mode != RM_WRITER) {
        return ERR_OK;
    }
    if (rm->fold_keys == NULL) {
        if (sdelta_count(rm->ix->ps) == 0) {
            return ERR_OK;
        }
        fold_start(rm);
    }
    int rc = rm_begin(rm, e);
    size_t end = rm->fold_i + FOLD_SLICE < rm->fold_n ? rm->fold_i + FOLD_SLICE : rm->fold_n;
    for (size_t i = rm->fold_i; i < end && rc == ERR_OK; i++) {
        sqlite3_stmt *st = stmt(rm, S_STATS_ADD, e);
        if (st == NULL) {
            rc = ERR_IO;
            break;
        }
        bind_rec(st, rm->fold_keys[i]);
        rc = step_done(rm, st, e, "folding statistics");
    }
    sqlite3_stmt *st = NULL;
    if (rc == ERR_OK && end == rm->fold_n) {
        /* the last slice: the records folded go, and so does the cursor */
        st = stmt(rm, S_PEND_DROP, e);
        if (st != NULL) {
            sqlite3_bind_int64(st, 1, rm->fold_seq);
            rc = step_done(rm, st, e, "clearing pending statistics");
        }
        st = rc == ERR_OK ? stmt(rm, S_FOLD_CLEAR, e) : NULL;
        if (st != NULL) {
            rc = step_done(rm, st, e, "clearing the fold cursor");
        }
    } else if (rc == ERR_OK) {
        /* records up to fold_seq of keys up to the slice's last are in
         * stats now (a restart skips them: load_pending) */
        const struct sdelta_rec *k = rm->fold_keys[end - 1];
        st = stmt(rm, S_FOLD_SET, e);
        if (st != NULL) {
            sqlite3_bind_int64(st, 1, rm->fold_seq);
            sqlite3_bind_int(st, 2, k->scope);
            sqlite3_bind_text(st, 3, k->key, (int)k->klen, SQLITE_STATIC);
            rc = step_done(rm, st, e, "moving the fold cursor");
        }
    }
    if (rc == ERR_OK && st == NULL) {
        rc = ERR_IO;
    }
    if (rc == ERR_OK) {
        rm->slicing = true;
        rm->slice_end = end;
        rc = rm_commit(rm, e);
    }
    if (rc != ERR_OK) {
        rm_rollback(rm);
        return rc;
    }
    *more = rm->fold_keys != NULL;
    return ERR_OK;
}

int rm_fold(struct readmodel *rm, struct err *e)
{
    bool more = true;
    int rc = ERR_OK;
    /* the fold under way, then one of whatever is pending */
    for (int folds = 0; rc == ERR_OK && folds < 2; folds++) {
        do {
            rc = rm_fold_step(rm, &more, e);
        } while (rc == ERR_OK && more);
    }
    return rc;
}

int rm_commit(struct readmodel *rm, struct err *e)
{
    static const char *const names[2] = { "impresiones", "conversiones" };
    int rc = rm->mode == RM_WRITER ? write_stats(rm, e) : ERR_OK;
    for (int k = 0; k < 2 && rc == ERR_OK; k++) {
        if (rm->batch_rows[k] == 0) {
            continue;
        }
        sqlite3_stmt *st = stmt(rm, S_COUNT_ADD, e);
        if (st == NULL) {
            rc = ERR_IO;
            break;
        }
        sqlite3_bind_text(st, 1, names[k], -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 2, rm->batch_rows[k]);
        rc = step_done(rm, st, e, "counting rows");
    }
    if (rc != ERR_OK) {
        return rc;          /* the caller rolls back */
    }
    rm->batch_rows[0] = rm->batch_rows[1] = 0;
    rc = rm->mode == RM_WRITER ? commit_stats(rm, e) : exec(rm, "COMMIT", e);
    if (rc == ERR_OK) {
        apply_pending(rm, rm->batch_pos);   /* only committed rows get indexed */
    }
    return rc;
}

void rm_rollback(struct readmodel *rm)
{
    rm->pend_ids.n = rm->pend_lists.n = 0;
    buf_reset(&rm->batch_stats);
    rm->slicing = false;
    rm->batch_seq = 0;
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
    if (pos > rm->batch_pos) {
        rm->batch_pos = pos;
    }
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
    int rc = step_done(rm, st, e, conv ? "inserting conversion" : "inserting impression");
    if (rc == ERR_OK) {
        index_row(rm, t->kind, t->id, t->campana_id, t->influencer_id, position);
        rm->batch_rows[conv ? 1 : 0]++;
    }
    return rc;
}

int rm_stats_add(struct readmodel *rm, enum rm_scope scope, const char *key, int64_t d_imp,
                 int64_t d_conv, int64_t last_us, const char *valores, size_t valores_len,
                 struct err *e)
{
    if (rm->mode == RM_WRITER) {
        struct sdelta_rec r = { .scope = (int)scope, .key = key, .klen = strlen(key),
                                .imp = d_imp, .conv = d_conv, .last = last_us,
                                .valores = valores, .vlen = valores != NULL ? valores_len : 0 };
        int rc = sdelta_rec_put(&rm->batch_stats, &r);
        return rc == ERR_OK ? ERR_OK : err_set(e, rc, "statistics for %s too large", key);
    }
    sqlite3_stmt *st = stmt(rm, S_STATS_ADD, e);
    if (st == NULL) {
        return ERR_IO;
    }
    sqlite3_bind_int(st, 1, (int)scope);
    sqlite3_bind_text(st, 2, key, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, d_imp);
    sqlite3_bind_int64(st, 4, d_conv);
    sqlite3_bind_int64(st, 5, last_us);
    sqlite3_bind_text(st, 6, valores != NULL ? valores : "", (int)valores_len, SQLITE_STATIC);
    return step_done(rm, st, e, "updating statistics");
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

int rm_read_begin(struct readmodel *rm, struct err *e)
{
    sqlite3_stmt *st = stmt(rm, S_BEGIN, e);
    if (st == NULL) {
        return ERR_IO;
    }
    int rc = sqlite3_step(st) == SQLITE_DONE ? ERR_OK : db_err(rm, e, "beginning a read");
    sqlite3_reset(st);
    return rc;
}

void rm_read_end(struct readmodel *rm)
{
    struct err ignore;
    sqlite3_stmt *st = stmt(rm, S_COMMIT, &ignore);
    if (st != NULL) {
        sqlite3_step(st);
        sqlite3_reset(st);
    }
}

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

/* Steps the by-position statement for pos; true if a row is there. */
static bool row_at(sqlite3_stmt *st, int64_t pos, int *step_rc)
{
    sqlite3_reset(st);
    sqlite3_bind_int64(st, 1, pos);
    *step_rc = sqlite3_step(st);
    return *step_rc == SQLITE_ROW;
}

static bool col_equals(sqlite3_stmt *st, int i, const char *want)
{
    const char *v = (const char *)sqlite3_column_text(st, i);
    return v != NULL && strcmp(v, want) == 0;
}

int rm_query_by_id(struct readmodel *rm, enum tracking_kind kind, const char *id,
                   struct buf *out, struct err *e)
{
    bool conv = kind == KIND_CONVERSION;
    sqlite3_stmt *st = stmt(rm, conv ? S_ROW_CONV : S_ROW_IMP, e);
    if (st == NULL) {
        return ERR_IO;
    }
    struct lsmidx_hits cand;
    int rc = lsmidx_find_all(rm->ix->ids, rm->ids_r, id_hash(rm->ix->ids, kind, id), &cand, e);
    if (rc != ERR_OK) {
        lsmidx_hits_fini(&cand);
        return rc;
    }
    rc = err_set(e, ERR_NOTFOUND, "%s '%s' not found", conv ? "conversion" : "impression", id);
    for (size_t i = 0; i < cand.n; i++) {
        int step_rc;
        if (!row_at(st, cand.v[i], &step_rc)) {
            if (step_rc != SQLITE_DONE) {
                rc = db_err(rm, e, "reading by id");
                break;
            }
            continue;
        }
        if (!col_equals(st, 1, id)) {
            continue;           /* another id with the same hash */
        }
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
        break;
    }
    sqlite3_reset(st);
    lsmidx_hits_fini(&cand);
    return rc;
}

/* Counters of one campaign or influencer; zeros when unknown. valores,
 * when not NULL, gets the per-currency list. */
static int stats_counts(struct readmodel *rm, enum rm_scope scope, const char *key,
                        int64_t *imp, int64_t *conv, int64_t *last, struct buf *valores,
                        struct err *e)
{
    sqlite3_stmt *st = stmt(rm, S_STATS_GET, e);
    if (st == NULL) {
        return ERR_IO;
    }
    sqlite3_bind_int(st, 1, (int)scope);
    sqlite3_bind_text(st, 2, key, -1, SQLITE_STATIC);
    /* the lock before the snapshot starts (this is a request's first
     * statement on the read models): stats and ps from one commit */
    pthread_rwlock_rdlock(&rm->ix->ps_lock);
    int r = sqlite3_step(st);
    int rc = ERR_OK;
    *imp = *conv = *last = 0;
    if (r == SQLITE_ROW) {
        *imp = sqlite3_column_int64(st, 0);
        *conv = sqlite3_column_int64(st, 1);
        *last = sqlite3_column_int64(st, 2);
        if (valores != NULL &&
            buf_append(valores, sqlite3_column_text(st, 3),
                       (size_t)sqlite3_column_bytes(st, 3)) != ERR_OK) {
            rc = err_set(e, ERR_NOMEM, "statistics too large");
        }
    } else if (r != SQLITE_DONE) {
        rc = db_err(rm, e, "reading statistics");
    }
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    for (int m = 0; m < 2 && rc == ERR_OK; m++) {
        const struct sdelta_rec *d = sdelta_get(m == 0 ? rm->ix->fs : rm->ix->ps, (int)scope, key);
        if (d == NULL) {
            continue;
        }
        *imp += d->imp;
        *conv += d->conv;
        *last = d->last > *last ? d->last : *last;
        if (valores != NULL && d->vlen > 0) {
            struct buf merged;
            buf_init(&merged, 0);
            rc = money_totals_merge(valores->len > 0 ? valores->p : "", valores->len, d->valores,
                                    d->vlen, &merged);
            if (rc == ERR_OK) {
                buf_reset(valores);
                rc = buf_append(valores, merged.p, merged.len);
            }
            buf_fini(&merged);
            if (rc != ERR_OK) {
                rc = err_set(e, ERR_IO, "corrupt money total for %s", key);
            }
        }
    }
    pthread_rwlock_unlock(&rm->ix->ps_lock);
    return rc;
}

int rm_query_list(struct readmodel *rm, enum rm_scope scope, const char *key,
                  enum tracking_kind kind, int64_t limit, int64_t offset, struct buf *out,
                  struct err *e)
{
    bool conv = kind == KIND_CONVERSION;
    sqlite3_stmt *st = stmt(rm, conv ? S_ROW_CONV : S_ROW_IMP, e);
    if (st == NULL) {
        return ERR_IO;
    }
    /* The index first, before any statement on the read models starts this
     * request's snapshot: index entries are added only after their rows
     * committed, so every position read here has its row in the snapshot
     * taken next. (The other way round, a batch committed in between would
     * leave positions without rows and pages short.) */
    int64_t pos[1000];
    size_t n = 0;
    if (limit > (int64_t)ARRAY_LEN(pos)) {
        limit = ARRAY_LEN(pos);
    }
    uint64_t h = list_hash(rm->ix->lists, kind, scope, key);
    int rc = lsmidx_range_desc(rm->ix->lists, rm->lists_r, h, offset, (size_t)limit, pos, &n, e);
    if (rc != ERR_OK) {
        return rc;
    }
    int64_t imp, nconv, last;
    rc = stats_counts(rm, scope, key, &imp, &nconv, &last, NULL, e);
    if (rc != ERR_OK) {
        return rc;
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
    /* key column: campana_id (2) for campaign lists, influencer_id (3) */
    int kcol = scope == SCOPE_CAMPANA ? 2 : 3;
    int other = scope == SCOPE_CAMPANA ? 3 : 2;
    for (size_t i = 0; i < n && rc == ERR_OK; i++) {
        int step_rc;
        if (!row_at(st, pos[i], &step_rc)) {
            if (step_rc != SQLITE_DONE) {
                rc = db_err(rm, e, "listing");
            }
            continue;
        }
        if (!col_equals(st, kcol, key)) {
            /* another key under the same keyed 64-bit hash: left out, so
             * such a page would come back one short (about 1 in 2^64) */
            continue;
        }
        jsonw_obj_open(&w);
        col_str(&w, "id", st, 1);
        col_str(&w, scope == SCOPE_CAMPANA ? "influencer_id" : K_CAMPANA, st, other);
        col_str(&w, "usuario_id", st, 4);
        col_str(&w, "tipo_evento", st, 5);
        if (conv) {
            col_str(&w, "tipo_conversion", st, 11);
            col_money(&w, "valor", st, 12);
            col_str(&w, "moneda", st, 13);
        }
        col_ts(&w, "timestamp", st, 9);
        jsonw_obj_close(&w);
    }
    sqlite3_reset(st);
    jsonw_arr_close(&w);
    jsonw_obj_close(&w);
    return rc != ERR_OK ? rc : jsonw_status(&w);
}

int rm_query_stats(struct readmodel *rm, enum rm_scope scope, const char *key,
                   struct buf *out, struct err *e)
{
    int64_t imp, conv, last;
    struct buf valores;
    buf_init(&valores, 0);
    int rc = stats_counts(rm, scope, key, &imp, &conv, &last, &valores, e);
    /* per-currency totals first, into a side buffer */
    struct buf per;
    buf_init(&per, 0);
    struct jsonw pw;
    jsonw_init(&pw, &per);
    jsonw_obj_open(&pw);
    int ncur = 0;
    char single[64] = "0";
    const char *p = valores.len > 0 ? valores.p : "";
    const char *end = p + valores.len;
    struct money_total t;
    int r = 0;
    while (rc == ERR_OK && (r = money_totals_next(&p, end, &t)) == 1) {
        money_format(t.ticks, single, sizeof(single));
        jsonw_key(&pw, t.moneda);
        jsonw_raw(&pw, single);
        ncur++;
    }
    if (rc == ERR_OK && r < 0) {
        rc = err_set(e, ERR_IO, "corrupt money total for %s", key);
    }
    buf_fini(&valores);
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

int rm_query_rows(struct readmodel *rm, int64_t *imp, int64_t *conv, int64_t *stats,
                  struct err *e)
{
    sqlite3_stmt *a = stmt(rm, S_COUNTS, e), *b = stmt(rm, S_STATS_ROWS, e);
    if (a == NULL || b == NULL) {
        return ERR_IO;
    }
    int rc = ERR_OK;
    if (sqlite3_step(a) == SQLITE_ROW && sqlite3_step(b) == SQLITE_ROW) {
        *imp = sqlite3_column_int64(a, 0);
        *conv = sqlite3_column_int64(a, 1);
        *stats = sqlite3_column_int64(b, 0);
    } else {
        rc = db_err(rm, e, "counting rows");
    }
    sqlite3_reset(a);
    sqlite3_reset(b);
    return rc;
}

void rm_index_paths(const struct rm_index *ix, const char **ids, const char **lists)
{
    *ids = ix->ids_path;
    *lists = ix->lists_path;
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

/* ---- rm_verify's view of the statistics ---- */

static int upsert_copy(void *arg, const struct pending_walk *w, const struct sdelta_rec *r)
{
    (void)w;
    sqlite3_stmt *st = arg;
    bind_rec(st, r);
    int x = sqlite3_step(st);
    sqlite3_reset(st);
    return x == SQLITE_DONE ? ERR_OK : ERR_IO;
}

int rm_stats_with_pending(sqlite3 *live, sqlite3 *dst, int64_t *pending, struct err *e)
{
    sqlite3_stmt *cnt = NULL, *rows = NULL, *ins = NULL;
    int rc = ERR_OK;
    *pending = 0;
    if (sqlite3_prepare_v2(live, "SELECT count(*) FROM stats_pending", -1, &cnt, NULL) !=
            SQLITE_OK || sqlite3_step(cnt) != SQLITE_ROW) {
        rc = err_set(e, ERR_IO, "reading pending statistics: %s", sqlite3_errmsg(live));
        goto out;
    }
    *pending = sqlite3_column_int64(cnt, 0);
    if (*pending == 0) {
        goto out;
    }
    if (sqlite3_create_function(dst, "rastro_merge_valores", 2,
                                SQLITE_UTF8 | SQLITE_DETERMINISTIC | SQLITE_DIRECTONLY, NULL,
                                sql_merge_valores, NULL, NULL) != SQLITE_OK ||
        sqlite3_exec(dst, "CREATE TEMP TABLE " STATS_COLUMNS_SQL("live_stats") "; BEGIN", NULL,
                     NULL, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(dst, "INSERT INTO live_stats VALUES(?,?,?,?,?,?)", -1, &ins, NULL) !=
            SQLITE_OK ||
        sqlite3_prepare_v2(live, "SELECT * FROM stats", -1, &rows, NULL) != SQLITE_OK) {
        rc = err_set(e, ERR_IO, "copying statistics: %s", sqlite3_errmsg(dst));
        goto out;
    }
    int r;
    while (rc == ERR_OK && (r = sqlite3_step(rows)) == SQLITE_ROW) {
        for (int i = 0; i < 6; i++) {
            sqlite3_bind_value(ins, i + 1, sqlite3_column_value(rows, i));
        }
        if (sqlite3_step(ins) != SQLITE_DONE) {
            rc = err_set(e, ERR_IO, "copying statistics: %s", sqlite3_errmsg(dst));
        }
        sqlite3_reset(ins);
    }
    sqlite3_finalize(ins);
    ins = NULL;
    if (rc == ERR_OK &&
        sqlite3_prepare_v2(dst, STATS_UPSERT_SQL("live_stats"), -1, &ins, NULL) != SQLITE_OK) {
        rc = err_set(e, ERR_IO, "adding pending statistics: %s", sqlite3_errmsg(dst));
    }
    if (rc == ERR_OK) {
        struct pending_walk w = { .fn = upsert_copy, .arg = ins };
        rc = walk_pending(live, &w, e);     /* what a fold under way folded is in stats */
        free(w.fold_key);
    }
    if (rc == ERR_OK && sqlite3_exec(dst, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) {
        rc = err_set(e, ERR_IO, "adding pending statistics: %s", sqlite3_errmsg(dst));
    }
out:
    sqlite3_finalize(cnt);
    sqlite3_finalize(rows);
    sqlite3_finalize(ins);
    return rc;
}
