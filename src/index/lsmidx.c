/*
 * lsmidx.c - see lsmidx.h.
 *
 * File layout (SQLite, WAL, synchronous=NORMAL: the file is derived data,
 * and the flushed mark lives in the same transaction as the run it covers):
 *   lsm_meta(k, v)                       "flushed" -> position
 *   lsm_runs(run, level, count, max_pos, bloom, bloom_k)
 *   lsm_keys(run, h, pos) WITHOUT ROWID  primary key (run, h, pos)
 * A new run always has the largest run id, so writing it appends to the
 * right edge of lsm_keys: sequential pages, not one random page per entry.
 *
 * Locking: mu guards the memtables, the run list and the counters. The
 * background thread never holds mu while it does I/O.
 */
#include "index/lsmidx.h"
#include "index/sqlerr.h"

#include <pthread.h>
#include <sqlite3.h>
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <unistd.h>

#include "core/hash.h"
#include "core/log.h"
#include "core/timeutil.h"
#include "core/xmalloc.h"
#include "index/idindex.h"

#define DEFAULT_MEMTABLE (256u * 1024)
#define FANOUT 4
#define BLOOM_BITS_PER_KEY 10
#define BLOOM_K 7

struct bloom {
    uint64_t nbits;
    int k;
    uint64_t *w;
};

struct run {
    int64_t id;
    int level;
    int64_t count;
    int64_t max_pos;
    struct bloom bl;
};

struct lsmidx {
    char *path;
    size_t memtable_max;
    sqlite3 *wdb;                   /* background thread's connection */
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct idindex *active, *frozen;
    int64_t active_max, frozen_max;
    int64_t flushed;
    struct run *runs;
    size_t nruns, cap;
    int64_t next_run;
    bool stop, busy, warned;
    bool clean;                     /* every add so far is committed by the owner */
    bool no_bloom;                  /* range-only index: filters would never be asked */
    bool bulk;                      /* LSMIDX_BULK */
    int64_t flushes, merges;
    int64_t file_finds;             /* lookups a filter sent to the file */
    bool failing;                   /* the last flush or merge failed; retrying */
    char broken[256];               /* bulk: why writing failed for good ("" if not) */
    struct siphash_key key;         /* per file, random, kept in lsm_meta */
};

struct lsmidx_reader {
    struct lsmidx *ix;
    sqlite3 *db;
    sqlite3_stmt *find;         /* every run the bloom filter lets through */
    sqlite3_stmt *runs;         /* runs, newest first */
    sqlite3_stmt *count;        /* entries of h in one run */
    sqlite3_stmt *page;         /* entries of h in one run, newest first */
};

static uint64_t fix(uint64_t h)
{
    return h == 0 ? 1 : h;
}

/* ---- bloom filter ---------------------------------------------------- */

/* A filter that answers "maybe" to everything, in 8 bytes. */
static void bloom_init_all(struct bloom *b)
{
    b->nbits = 64;
    b->k = 1;
    b->w = xmalloc(sizeof(uint64_t));
    b->w[0] = ~0ULL;
}

static void bloom_init(struct bloom *b, int64_t keys)
{
    uint64_t bits = (uint64_t)(keys > 0 ? keys : 1) * BLOOM_BITS_PER_KEY;
    b->nbits = (bits + 63) / 64 * 64;
    b->k = BLOOM_K;
    b->w = xcalloc(b->nbits / 64, sizeof(uint64_t));
}

static void bloom_add(struct bloom *b, uint64_t h)
{
    uint64_t h2 = (h * 0x9e3779b97f4a7c15ULL) >> 32 | 1;
    for (int i = 0; i < b->k; i++) {
        uint64_t bit = (h + (uint64_t)i * h2) % b->nbits;
        b->w[bit / 64] |= 1ULL << (bit % 64);
    }
}

static bool bloom_maybe(const struct bloom *b, uint64_t h)
{
    uint64_t h2 = (h * 0x9e3779b97f4a7c15ULL) >> 32 | 1;
    for (int i = 0; i < b->k; i++) {
        uint64_t bit = (h + (uint64_t)i * h2) % b->nbits;
        if (!(b->w[bit / 64] & (1ULL << (bit % 64)))) {
            return false;
        }
    }
    return true;
}

/* ---- SQL helpers ----------------------------------------------------- */

static int exec(sqlite3 *db, const char *sql, const char *path, struct err *e)
{
    char *msg = NULL;
    if (sqlite3_exec(db, sql, NULL, NULL, &msg) != SQLITE_OK) {
        int rc = err_set(e, ERR_IO, "%.60s: %s (%s)", sql, sql_err(db), path);
        sqlite3_free(msg);
        return rc;
    }
    return ERR_OK;
}

static int open_db(const char *path, bool create, sqlite3 **out, struct err *e)
{
    sqlite3 *db = NULL;
    int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX | (create ? SQLITE_OPEN_CREATE : 0);
    if (sqlite3_open_v2(path, &db, flags, NULL) != SQLITE_OK) {
        int rc = err_set(e, ERR_IO, "opening index %s: %s", path, db ? sqlite3_errmsg(db) : "?");
        sqlite3_close(db);
        return rc;
    }
    /* Only another process can hold these files' write lock; do not sit on
     * it: the flusher retries with backoff, lookups are readers (WAL). */
    sqlite3_busy_timeout(db, 1000);
    *out = db;
    return ERR_OK;
}

/* lsm_maybe(run, h): may run hold h? Blooms are immutable per run id; an
 * id no longer in the list (merged away since this reader's snapshot was
 * taken) answers "maybe", which costs a seek but never loses an entry. */
static void sql_maybe(sqlite3_context *ctx, int argc, sqlite3_value **argv)
{
    (void)argc;
    struct lsmidx *ix = sqlite3_user_data(ctx);
    int64_t run = sqlite3_value_int64(argv[0]);
    uint64_t h = (uint64_t)sqlite3_value_int64(argv[1]);
    int maybe = 1;
    pthread_mutex_lock(&ix->mu);
    for (size_t i = 0; i < ix->nruns; i++) {
        if (ix->runs[i].id == run) {
            maybe = bloom_maybe(&ix->runs[i].bl, h);
            break;
        }
    }
    pthread_mutex_unlock(&ix->mu);
    sqlite3_result_int(ctx, maybe);
}

/* ---- writing runs (background thread) -------------------------------- */

struct pair {
    uint64_t h;
    int64_t pos;
};

struct dump {
    struct pair *p;
    size_t n;
};

static void dump_cb(uint64_t h, int64_t pos, void *arg)
{
    struct dump *d = arg;
    d->p[d->n].h = h;
    d->p[d->n].pos = pos;
    d->n++;
}

/* Sorted as SQLite orders the signed integers we store. */
static int cmp_pair(const void *a, const void *b)
{
    const struct pair *x = a, *y = b;
    int64_t hx = (int64_t)x->h, hy = (int64_t)y->h;
    if (hx != hy) {
        return hx < hy ? -1 : 1;
    }
    return x->pos < y->pos ? -1 : x->pos > y->pos;
}

static int insert_run_row(sqlite3 *db, const struct run *r, struct err *e, const char *path)
{
    sqlite3_stmt *st = NULL;
    int rc = ERR_OK;
    if (sqlite3_prepare_v2(db, "INSERT INTO lsm_runs(run, level, count, max_pos, bloom, bloom_k)"
                               " VALUES(?,?,?,?,?,?)", -1, &st, NULL) != SQLITE_OK) {
        return err_set(e, ERR_IO, "index %s: %s", path, sqlite3_errmsg(db));
    }
    sqlite3_bind_int64(st, 1, r->id);
    sqlite3_bind_int(st, 2, r->level);
    sqlite3_bind_int64(st, 3, r->count);
    sqlite3_bind_int64(st, 4, r->max_pos);
    sqlite3_bind_blob64(st, 5, r->bl.w, r->bl.nbits / 8, SQLITE_STATIC);
    sqlite3_bind_int(st, 6, r->bl.k);
    if (sqlite3_step(st) != SQLITE_DONE) {
        rc = err_set(e, ERR_IO, "index %s: %s", path, sqlite3_errmsg(db));
    }
    sqlite3_finalize(st);
    return rc;
}

/* Ends a run's transaction: records the run and commits, or rolls back
 * and drops the run's filter. Returns rc, or the commit's error. */
static int finish_run(struct lsmidx *ix, struct run *r, int rc, struct err *e)
{
    if (rc == ERR_OK) {
        rc = insert_run_row(ix->wdb, r, e, ix->path);
    }
    if (rc == ERR_OK) {
        rc = exec(ix->wdb, "COMMIT", ix->path, e);
    }
    if (rc != ERR_OK) {
        sqlite3_exec(ix->wdb, "ROLLBACK", NULL, NULL, NULL);
        free(r->bl.w);
        r->bl.w = NULL;
    }
    return rc;
}

/* Appends r to the in-memory run list. Caller holds mu (or owns ix). */
static void push_run(struct lsmidx *ix, const struct run *r)
{
    if (ix->nruns == ix->cap) {
        ix->cap = ix->cap ? ix->cap * 2 : 16;
        ix->runs = xrealloc(ix->runs, ix->cap * sizeof(*ix->runs));
    }
    ix->runs[ix->nruns++] = *r;
}

static int set_flushed(sqlite3 *db, int64_t pos, const char *path, struct err *e)
{
    char sql[128];
    snprintf(sql, sizeof(sql), "INSERT OR REPLACE INTO lsm_meta(k, v) VALUES('flushed', %lld)",
             (long long)pos);
    return exec(db, sql, path, e);
}

/* Writes a frozen memtable as a new level-0 run. */
static int flush_frozen(struct lsmidx *ix, struct idindex *frozen, int64_t max_pos, struct err *e)
{
    struct dump d = { .p = xmalloc((idindex_count(frozen) + 1) * sizeof(struct pair)), .n = 0 };
    idindex_each(frozen, dump_cb, &d);
    qsort(d.p, d.n, sizeof(struct pair), cmp_pair);
    struct run r = { .id = ix->next_run, .level = 0, .count = (int64_t)d.n, .max_pos = max_pos };
    if (ix->no_bloom) {
        bloom_init_all(&r.bl);
    } else {
        bloom_init(&r.bl, r.count);
    }
    sqlite3_stmt *ins = NULL;
    int rc = exec(ix->wdb, "BEGIN IMMEDIATE", ix->path, e);
    if (rc == ERR_OK &&
        sqlite3_prepare_v2(ix->wdb, "INSERT INTO lsm_keys(run, h, pos) VALUES(?,?,?)", -1, &ins,
                           NULL) != SQLITE_OK) {
        rc = err_set(e, ERR_IO, "index %s: %s", ix->path, sql_err(ix->wdb));
    }
    for (size_t i = 0; i < d.n && rc == ERR_OK; i++) {
        if (!ix->no_bloom) {
            bloom_add(&r.bl, d.p[i].h);
        }
        sqlite3_bind_int64(ins, 1, r.id);
        sqlite3_bind_int64(ins, 2, (int64_t)d.p[i].h);
        sqlite3_bind_int64(ins, 3, d.p[i].pos);
        if (sqlite3_step(ins) != SQLITE_DONE) {
            rc = err_set(e, ERR_IO, "index %s: %s", ix->path, sql_err(ix->wdb));
        }
        sqlite3_reset(ins);
    }
    sqlite3_finalize(ins);
    free(d.p);
    if (rc == ERR_OK) {
        rc = set_flushed(ix->wdb, max_pos, ix->path, e);
    }
    rc = finish_run(ix, &r, rc, e);
    if (rc != ERR_OK) {
        return rc;
    }
    pthread_mutex_lock(&ix->mu);
    push_run(ix, &r);
    ix->next_run++;
    ix->flushed = max_pos;
    ix->frozen = NULL;              /* only now: readers found it here until the commit */
    ix->flushes++;
    pthread_cond_broadcast(&ix->cv);    /* a writer may be waiting for room */
    pthread_mutex_unlock(&ix->mu);
    idindex_free(frozen);
    return ERR_OK;
}

/* Picks FANOUT runs of one level to merge; false if no level is full. */
static bool pick_merge(struct lsmidx *ix, int64_t *ids, int *level)
{
    bool found = false;
    pthread_mutex_lock(&ix->mu);
    for (int lvl = 0; lvl < 32 && !found; lvl++) {
        int n = 0;
        for (size_t i = 0; i < ix->nruns && n < FANOUT; i++) {
            if (ix->runs[i].level == lvl) {
                ids[n++] = ix->runs[i].id;
            }
        }
        if (n == FANOUT) {
            *level = lvl;
            found = true;
        }
    }
    pthread_mutex_unlock(&ix->mu);
    return found;
}

static int merge_runs(struct lsmidx *ix, const int64_t *ids, int level, struct err *e)
{
    struct run r = { .id = ix->next_run, .level = level + 1 };
    char in[32 * FANOUT];
    size_t il = 0;
    for (int k = 0; k < FANOUT; k++) {
        il += (size_t)snprintf(in + il, sizeof(in) - il, "%c%lld", k ? ',' : '(',
                               (long long)ids[k]);
    }
    snprintf(in + il, sizeof(in) - il, ")");
    char sql[640];
    int rc = exec(ix->wdb, "BEGIN IMMEDIATE", ix->path, e);
    if (rc == ERR_OK) {
        snprintf(sql, sizeof(sql),
                 "INSERT INTO lsm_keys(run, h, pos) SELECT %lld, h, pos FROM lsm_keys"
                 " WHERE run IN %s ORDER BY h, pos", (long long)r.id, in);
        rc = exec(ix->wdb, sql, ix->path, e);
    }
    sqlite3_stmt *st = NULL;
    if (rc == ERR_OK) {
        r.count = sqlite3_changes64(ix->wdb);
        snprintf(sql, sizeof(sql), "SELECT max(max_pos) FROM lsm_runs WHERE run IN %s", in);
        if (sqlite3_prepare_v2(ix->wdb, sql, -1, &st, NULL) == SQLITE_OK &&
            sqlite3_step(st) == SQLITE_ROW) {
            r.max_pos = sqlite3_column_int64(st, 0);
        }
        sqlite3_finalize(st);
        st = NULL;
        if (ix->no_bloom) {
            bloom_init_all(&r.bl);
        } else {
            bloom_init(&r.bl, r.count);
        }
        if (ix->no_bloom) {
            /* nothing to fill */
        } else if (sqlite3_prepare_v2(ix->wdb, "SELECT h FROM lsm_keys WHERE run=?", -1, &st,
                                      NULL) != SQLITE_OK) {
            rc = err_set(e, ERR_IO, "index %s: %s", ix->path, sql_err(ix->wdb));
        } else {
            sqlite3_bind_int64(st, 1, r.id);
            int sr;
            while ((sr = sqlite3_step(st)) == SQLITE_ROW) {
                bloom_add(&r.bl, (uint64_t)sqlite3_column_int64(st, 0));
            }
            if (sr != SQLITE_DONE) {    /* a partial filter would hide keys for good */
                rc = err_set(e, ERR_IO, "index %s: %s", ix->path, sql_err(ix->wdb));
            }
        }
        sqlite3_finalize(st);
    }
    if (rc == ERR_OK) {
        snprintf(sql, sizeof(sql), "DELETE FROM lsm_keys WHERE run IN %s;"
                                   "DELETE FROM lsm_runs WHERE run IN %s", in, in);
        rc = exec(ix->wdb, sql, ix->path, e);
    }
    rc = finish_run(ix, &r, rc, e);
    if (rc != ERR_OK) {
        return rc;
    }
    pthread_mutex_lock(&ix->mu);
    size_t j = 0;
    for (size_t i = 0; i < ix->nruns; i++) {
        bool gone = false;
        for (int k = 0; k < FANOUT; k++) {
            gone = gone || ix->runs[i].id == ids[k];
        }
        if (gone) {
            free(ix->runs[i].bl.w);
        } else {
            ix->runs[j++] = ix->runs[i];
        }
    }
    ix->nruns = j;
    ix->runs[ix->nruns++] = r;      /* FANOUT were removed: there is room */
    ix->next_run++;
    ix->merges++;
    pthread_mutex_unlock(&ix->mu);
    return ERR_OK;
}

static void maybe_freeze(struct lsmidx *ix);

static void *run_thread(void *arg)
{
    struct lsmidx *ix = arg;
    pthread_setname_np(pthread_self(), "rastro-index");
    /* Flushes and merges can wait; requests cannot. On Linux the nice value
     * is per thread, so this lowers only this one. Not in a rebuild: there
     * this thread is what the others wait for (at 10M events it was the
     * busiest thread, and niced it got less than its share). */
    if (!ix->bulk && setpriority(PRIO_PROCESS, (id_t)gettid(), 10) != 0) {
        log_debug("cannot lower index thread priority", NULL);
    }
    int backoff_s = 0;
    pthread_mutex_lock(&ix->mu);
    for (;;) {
        while (!ix->stop && (ix->frozen == NULL || ix->broken[0]) && backoff_s == 0) {
            ix->busy = false;
            pthread_cond_broadcast(&ix->cv);
            pthread_cond_wait(&ix->cv, &ix->mu);
        }
        if (ix->stop) {
            break;
        }
        ix->busy = true;
        struct idindex *frozen = ix->frozen;
        int64_t max_pos = ix->frozen_max;
        pthread_mutex_unlock(&ix->mu);

        struct err e;
        err_clear(&e);
        int rc = ERR_OK;
        if (frozen != NULL) {
            int64_t t0 = time_mono_us();
            size_t n = idindex_count(frozen);
            rc = flush_frozen(ix, frozen, max_pos, &e);
            log_debug("index flush", "path=%s entries=%zu ms=%lld", ix->path, n,
                      (long long)(time_mono_us() - t0) / 1000);
        }
        int64_t ids[FANOUT];
        int level;
        while (rc == ERR_OK && pick_merge(ix, ids, &level)) {
            int64_t t0 = time_mono_us();
            rc = merge_runs(ix, ids, level, &e);
            log_debug("index merge", "path=%s level=%d ms=%lld", ix->path, level,
                      (long long)(time_mono_us() - t0) / 1000);
        }
        if (rc != ERR_OK && ix->bulk) {
            /* without a journal a failed write may leave half a run behind:
             * no retry; lsmidx_finish() fails the rebuild */
            log_error("index write failed; the rebuild will fail", "path=%s err=\"%s\"",
                      ix->path, e.msg);
            pthread_mutex_lock(&ix->mu);
            snprintf(ix->broken, sizeof(ix->broken), "%s", e.msg);
            pthread_mutex_unlock(&ix->mu);
            backoff_s = 0;
        } else if (rc != ERR_OK) {
            /* the memtable stays in memory and lookups keep working; retry */
            log_error("index flush failed; will retry", "path=%s err=\"%s\"", ix->path, e.msg);
            backoff_s = backoff_s ? (backoff_s < 30 ? backoff_s * 2 : 30) : 1;
        } else {
            backoff_s = 0;
        }
        pthread_mutex_lock(&ix->mu);
        /* While failing, nobody waits for this thread: not the writer (its
         * memtable grows instead; the log keeps everything) nor quiesce. */
        ix->failing = rc != ERR_OK || ix->broken[0];
        ix->busy = !ix->failing;
        pthread_cond_broadcast(&ix->cv);
        maybe_freeze(ix);       /* the writer may have filled another one meanwhile */
        if (backoff_s > 0 && !ix->stop) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_sec += backoff_s;
            pthread_cond_timedwait(&ix->cv, &ix->mu, &ts);
        }
    }
    ix->busy = false;
    pthread_cond_broadcast(&ix->cv);
    pthread_mutex_unlock(&ix->mu);
    return NULL;
}

/* ---- open / close ---------------------------------------------------- */

static const char *schema =
    "CREATE TABLE IF NOT EXISTS lsm_meta(k TEXT PRIMARY KEY, v INTEGER NOT NULL);"
    "CREATE TABLE IF NOT EXISTS lsm_runs(run INTEGER PRIMARY KEY, level INTEGER NOT NULL,"
    " count INTEGER NOT NULL, max_pos INTEGER NOT NULL, bloom BLOB NOT NULL,"
    " bloom_k INTEGER NOT NULL);"
    "CREATE TABLE IF NOT EXISTS lsm_keys(run INTEGER NOT NULL, h INTEGER NOT NULL,"
    " pos INTEGER NOT NULL, PRIMARY KEY(run, h, pos)) WITHOUT ROWID;";

static int meta_get(sqlite3 *db, const char *k, int64_t *v)
{
    sqlite3_stmt *st = NULL;
    int found = 0;
    if (sqlite3_prepare_v2(db, "SELECT v FROM lsm_meta WHERE k=?", -1, &st, NULL) == SQLITE_OK) {
        sqlite3_bind_text(st, 1, k, -1, SQLITE_STATIC);
        if (sqlite3_step(st) == SQLITE_ROW) {
            *v = sqlite3_column_int64(st, 0);
            found = 1;
        }
    }
    sqlite3_finalize(st);
    return found;
}

/* The file's hash key: made at random when the file is made. A file from
 * before keys existed is emptied (its runs were hashed without one) and
 * filled again by its owner from the log. */
static int load_key(struct lsmidx *ix, struct err *e)
{
    int64_t k0, k1;
    if (meta_get(ix->wdb, "key0", &k0) && meta_get(ix->wdb, "key1", &k1)) {
        ix->key.k0 = (uint64_t)k0;
        ix->key.k1 = (uint64_t)k1;
        return ERR_OK;
    }
    uint64_t k[2];
    size_t got = 0;
    while (got < sizeof(k)) {
        ssize_t r = getrandom((char *)k + got, sizeof(k) - got, 0);
        if (r <= 0) {
            return err_set(e, ERR_STATE, "getrandom failed for index %s", ix->path);
        }
        got += (size_t)r;
    }
    ix->key.k0 = k[0];
    ix->key.k1 = k[1];
    char sql[256];
    snprintf(sql, sizeof(sql),
             "BEGIN IMMEDIATE; DELETE FROM lsm_keys; DELETE FROM lsm_runs; DELETE FROM lsm_meta;"
             " INSERT INTO lsm_meta(k, v) VALUES('key0', %lld), ('key1', %lld); COMMIT",
             (long long)(int64_t)k[0], (long long)(int64_t)k[1]);
    int rc = exec(ix->wdb, sql, ix->path, e);
    if (rc != ERR_OK) {
        sqlite3_exec(ix->wdb, "ROLLBACK", NULL, NULL, NULL);
    }
    return rc;
}

uint64_t lsmidx_hash(const struct lsmidx *ix, const void *key, size_t n)
{
    return siphash24(&ix->key, key, n);
}

static int load(struct lsmidx *ix, struct err *e)
{
    sqlite3_stmt *st = NULL;
    int rc = load_key(ix, e);
    if (rc != ERR_OK) {
        return rc;
    }
    ix->flushed = 0;
    ix->next_run = 1;
    if (sqlite3_prepare_v2(ix->wdb, "SELECT v FROM lsm_meta WHERE k='flushed'", -1, &st, NULL) ==
            SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW) {
        ix->flushed = sqlite3_column_int64(st, 0);
    }
    sqlite3_finalize(st);
    if (sqlite3_prepare_v2(ix->wdb, "SELECT run, level, count, max_pos, bloom, bloom_k"
                                    " FROM lsm_runs ORDER BY run", -1, &st, NULL) != SQLITE_OK) {
        return err_set(e, ERR_IO, "index %s: %s", ix->path, sql_err(ix->wdb));
    }
    while (sqlite3_step(st) == SQLITE_ROW) {
        struct run r = {
            .id = sqlite3_column_int64(st, 0),
            .level = sqlite3_column_int(st, 1),
            .count = sqlite3_column_int64(st, 2),
            .max_pos = sqlite3_column_int64(st, 3),
        };
        int bytes = sqlite3_column_bytes(st, 4);
        if (bytes <= 0 || bytes % 8 != 0) {
            rc = err_set(e, ERR_STATE, "index %s: run %lld has a malformed bloom filter",
                         ix->path, (long long)r.id);
            break;
        }
        r.bl.nbits = (uint64_t)bytes * 8;
        r.bl.k = sqlite3_column_int(st, 5);
        r.bl.w = xmalloc((size_t)bytes);
        memcpy(r.bl.w, sqlite3_column_blob(st, 4), (size_t)bytes);
        push_run(ix, &r);
        ix->next_run = r.id + 1;
    }
    sqlite3_finalize(st);
    return rc;
}

int lsmidx_open(const char *path, size_t memtable_max, int flags, struct lsmidx **out,
                struct err *e)
{
    struct lsmidx *ix = xcalloc(1, sizeof(*ix));
    ix->no_bloom = (flags & LSMIDX_NO_BLOOM) != 0;
    ix->bulk = (flags & LSMIDX_BULK) != 0;
    ix->path = xstrdup(path);
    ix->memtable_max = memtable_max ? memtable_max : DEFAULT_MEMTABLE;
    pthread_mutex_init(&ix->mu, NULL);
    pthread_cond_init(&ix->cv, NULL);
    ix->active = idindex_new(ix->memtable_max);
    int rc = open_db(path, true, &ix->wdb, e);
    if (rc == ERR_OK) {
        /* A rebuild writes a new file that is thrown away unless it
         * finishes, so it needs no journal: every run is written once
         * instead of to the WAL and again at the checkpoint (10M-event
         * rebuild 44 -> 38-39 s). lsmidx_finish() syncs it at the end. */
        rc = exec(ix->wdb, ix->bulk ? "PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;"
                                      " PRAGMA cache_size=-4096"
                                    : "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"
                                      " PRAGMA cache_size=-4096",
                  path, e);
    }
    if (rc == ERR_OK) {
        rc = exec(ix->wdb, schema, path, e);
    }
    if (rc == ERR_OK) {
        rc = load(ix, e);
    }
    if (rc == ERR_OK && pthread_create(&ix->thread, NULL, run_thread, ix) != 0) {
        rc = err_set(e, ERR_STATE, "cannot start index thread");
    }
    if (rc != ERR_OK) {
        sqlite3_close(ix->wdb);
        ix->wdb = NULL;
        ix->stop = true;
        ix->thread = 0;
        lsmidx_close(ix);
        return rc;
    }
    *out = ix;
    return ERR_OK;
}

void lsmidx_close(struct lsmidx *ix)
{
    if (ix == NULL) {
        return;
    }
    if (ix->wdb != NULL) {
        pthread_mutex_lock(&ix->mu);
        ix->stop = true;
        pthread_cond_broadcast(&ix->cv);
        pthread_mutex_unlock(&ix->mu);
        pthread_join(ix->thread, NULL);
        sqlite3_close(ix->wdb);
    }
    for (size_t i = 0; i < ix->nruns; i++) {
        free(ix->runs[i].bl.w);
    }
    free(ix->runs);
    idindex_free(ix->active);
    idindex_free(ix->frozen);
    pthread_mutex_destroy(&ix->mu);
    pthread_cond_destroy(&ix->cv);
    free(ix->path);
    free(ix);
}

int64_t lsmidx_flushed(struct lsmidx *ix)
{
    pthread_mutex_lock(&ix->mu);
    int64_t f = ix->flushed;
    pthread_mutex_unlock(&ix->mu);
    return f;
}

void lsmidx_quiesce(struct lsmidx *ix)
{
    pthread_mutex_lock(&ix->mu);
    while ((ix->frozen != NULL || ix->busy) && !ix->stop && !ix->failing) {
        pthread_cond_wait(&ix->cv, &ix->mu);
    }
    pthread_mutex_unlock(&ix->mu);
}

int lsmidx_finish(struct lsmidx *ix, struct err *e)
{
    lsmidx_quiesce(ix);
    pthread_mutex_lock(&ix->mu);
    int rc = ix->broken[0] ? err_set(e, ERR_IO, "index %s: %s", ix->path, ix->broken) : ERR_OK;
    pthread_mutex_unlock(&ix->mu);
    if (rc != ERR_OK || !ix->bulk) {
        return rc;
    }
    int fd = open(ix->path, O_RDONLY | O_CLOEXEC);
    if (fd < 0 || fsync(fd) != 0) {
        rc = err_set(e, ERR_IO, "syncing index %s: %s", ix->path, strerror(errno));
    }
    if (fd >= 0) {
        close(fd);
    }
    return rc;
}

int lsmidx_reset(struct lsmidx *ix, struct err *e)
{
    lsmidx_quiesce(ix);
    int rc = exec(ix->wdb, "BEGIN IMMEDIATE; DELETE FROM lsm_keys; DELETE FROM lsm_runs;"
                           " DELETE FROM lsm_meta WHERE k='flushed'; COMMIT", ix->path, e);
    if (rc != ERR_OK) {
        sqlite3_exec(ix->wdb, "ROLLBACK", NULL, NULL, NULL);
        return rc;
    }
    pthread_mutex_lock(&ix->mu);
    for (size_t i = 0; i < ix->nruns; i++) {
        free(ix->runs[i].bl.w);
    }
    ix->nruns = 0;
    ix->flushed = 0;
    idindex_free(ix->active);
    ix->active = idindex_new(ix->memtable_max);
    ix->active_max = 0;
    pthread_mutex_unlock(&ix->mu);
    return ERR_OK;
}

/* ---- writer ---------------------------------------------------------- */

void lsmidx_add(struct lsmidx *ix, uint64_t h, int64_t pos)
{
    pthread_mutex_lock(&ix->mu);
    idindex_add(ix->active, fix(h), pos);
    ix->clean = false;
    pthread_mutex_unlock(&ix->mu);
}

void lsmidx_add_many(struct lsmidx *ix, const struct lsmidx_entry *v, size_t n)
{
    pthread_mutex_lock(&ix->mu);
    for (size_t i = 0; i < n; i++) {
        idindex_add(ix->active, fix(v[i].h), v[i].pos);
    }
    ix->clean = ix->clean && n == 0;
    pthread_mutex_unlock(&ix->mu);
}

void lsmidx_remove(struct lsmidx *ix, uint64_t h, int64_t pos)
{
    pthread_mutex_lock(&ix->mu);
    idindex_remove(ix->active, fix(h), pos);
    pthread_mutex_unlock(&ix->mu);
}

/* Caller holds mu. Freezes the active memtable when it is full, holds only
 * committed entries, and the flusher is free. */
static void maybe_freeze(struct lsmidx *ix)
{
    if (ix->clean && ix->frozen == NULL && idindex_count(ix->active) >= ix->memtable_max) {
        ix->frozen = ix->active;
        ix->frozen_max = ix->active_max;
        ix->active = idindex_new(ix->memtable_max);
        pthread_cond_broadcast(&ix->cv);
    }
}

void lsmidx_commit(struct lsmidx *ix, int64_t upto)
{
    pthread_mutex_lock(&ix->mu);
    ix->clean = true;
    if (upto > ix->active_max) {
        ix->active_max = upto;
    }
    maybe_freeze(ix);
    /* Memory stays bounded: with a full memtable waiting and another as
     * large (a rebuild) or four times as large (live ingest, which never
     * gets here), the writer waits for the flusher. In a rebuild more
     * slack bought nothing but larger, fewer runs: its speed at 10M events
     * depends on whether the lists index reaches a 16M-entry merge (14 s
     * alone), which its memtable size decides (readmodel.c), and four
     * memtables of slack cost 60-140 MiB. */
    size_t slack = ix->bulk ? 1 : 4;
    while (ix->frozen != NULL && idindex_count(ix->active) >= slack * ix->memtable_max &&
           !ix->stop && !ix->failing) {
        if (!ix->warned && !ix->bulk) {     /* a rebuild waits like this by design */
            ix->warned = true;
            log_info("index flush is behind; waiting for it", "path=%s", ix->path);
        }
        pthread_cond_wait(&ix->cv, &ix->mu);
        maybe_freeze(ix);
    }
    pthread_mutex_unlock(&ix->mu);
}

/* ---- readers --------------------------------------------------------- */

int lsmidx_reader_open(struct lsmidx *ix, struct lsmidx_reader **out, struct err *e)
{
    struct lsmidx_reader *r = xcalloc(1, sizeof(*r));
    r->ix = ix;
    int rc = open_db(ix->path, false, &r->db, e);
    if (rc == ERR_OK &&
        sqlite3_create_function(r->db, "lsm_maybe", 2, SQLITE_UTF8 | SQLITE_DETERMINISTIC, ix,
                                sql_maybe, NULL, NULL) != SQLITE_OK) {
        rc = err_set(e, ERR_IO, "index %s: %s", ix->path, sqlite3_errmsg(r->db));
    }
    if (rc == ERR_OK) {
        /* the runs' upper pages; the kernel's page cache holds the rest */
        rc = exec(r->db, "PRAGMA query_only=1; PRAGMA cache_size=-2048", ix->path, e);
    }
    /* runs outer, keys inner: one seek per run the bloom filter lets through.
     * pos <= ?2 (the flushed mark when the memtables were read) leaves out
     * a run flushed since, whose entries were already taken from memory. */
    static const char *const sql[] = {
        "SELECT k.pos FROM lsm_runs r CROSS JOIN lsm_keys k"
        " WHERE lsm_maybe(r.run, ?1) AND k.run = r.run AND k.h = ?1 AND k.pos <= ?2",
        /* newer runs first: lower levels are newer than higher ones, and
         * within a level a larger run id is newer (see merge_runs) */
        "SELECT run FROM lsm_runs ORDER BY level ASC, run DESC",
        "SELECT count(*) FROM lsm_keys WHERE run = ?1 AND h = ?2 AND pos <= ?3",
        "SELECT pos FROM lsm_keys WHERE run = ?1 AND h = ?2 AND pos <= ?3"
        " ORDER BY pos DESC LIMIT ?4 OFFSET ?5",
    };
    sqlite3_stmt **st[] = { &r->find, &r->runs, &r->count, &r->page };
    for (size_t i = 0; i < ARRAY_LEN(sql) && rc == ERR_OK; i++) {
        if (sqlite3_prepare_v3(r->db, sql[i], -1, SQLITE_PREPARE_PERSISTENT, st[i], NULL) !=
            SQLITE_OK) {
            rc = err_set(e, ERR_IO, "index %s: %s", ix->path, sqlite3_errmsg(r->db));
        }
    }
    if (rc != ERR_OK) {
        lsmidx_reader_close(r);
        return rc;
    }
    *out = r;
    return ERR_OK;
}

void lsmidx_reader_close(struct lsmidx_reader *r)
{
    if (r != NULL) {
        sqlite3_finalize(r->find);
        sqlite3_finalize(r->runs);
        sqlite3_finalize(r->count);
        sqlite3_finalize(r->page);
        sqlite3_close(r->db);
        free(r);
    }
}

int lsmidx_find(struct lsmidx *ix, struct lsmidx_reader *r, uint64_t h, int64_t *out,
                size_t max, size_t *n, struct err *e)
{
    h = fix(h);
    /* Memtables first, then disk. Under mu the memtables hold exactly the
     * positions above the flushed mark, and a frozen memtable is dropped
     * only after the run holding it committed, so memory plus the runs'
     * entries at or below that mark is every entry, each once. */
    pthread_mutex_lock(&ix->mu);
    int64_t flushed = ix->flushed;
    size_t total = idindex_find(ix->active, h, out, max);
    if (ix->frozen != NULL) {
        size_t got = total < max ? total : max;
        total += idindex_find(ix->frozen, h, out + got, max - got);
    }
    /* The run list changes under mu together with the memtables, so when
     * no run's filter lets h through, memory was the whole answer and the
     * file need not be asked (a new key's usual case: no SQL, no read
     * transaction, no lock calls). */
    bool on_disk = false;
    for (size_t i = 0; i < ix->nruns && !on_disk; i++) {
        on_disk = bloom_maybe(&ix->runs[i].bl, h);
    }
    ix->file_finds += on_disk;
    pthread_mutex_unlock(&ix->mu);
    *n = total;
    if (!on_disk) {
        return ERR_OK;
    }
    int rc = ERR_OK;
    sqlite3_bind_int64(r->find, 1, (int64_t)h);
    sqlite3_bind_int64(r->find, 2, flushed);
    int s;
    while ((s = sqlite3_step(r->find)) == SQLITE_ROW) {
        if (total < max) {
            out[total] = sqlite3_column_int64(r->find, 0);
        }
        total++;
    }
    if (s != SQLITE_DONE) {
        rc = err_set(e, ERR_IO, "index %s: %s", ix->path, sqlite3_errmsg(r->db));
    }
    sqlite3_reset(r->find);
    *n = total;
    return rc;
}

int lsmidx_find_all(struct lsmidx *ix, struct lsmidx_reader *r, uint64_t h,
                    struct lsmidx_hits *hits, struct err *e)
{
    hits->v = hits->small;
    size_t cap = ARRAY_LEN(hits->small);
    int rc = lsmidx_find(ix, r, h, hits->v, cap, &hits->n, e);
    if (rc == ERR_OK && hits->n > cap) {
        cap = hits->n + 16;     /* more may arrive between the two reads */
        hits->v = xmalloc(cap * sizeof(*hits->v));
        rc = lsmidx_find(ix, r, h, hits->v, cap, &hits->n, e);
    }
    if (hits->n > cap) {
        hits->n = cap;
    }
    if (rc != ERR_OK) {
        hits->n = 0;
    }
    return rc;
}

void lsmidx_hits_fini(struct lsmidx_hits *hits)
{
    if (hits->v != hits->small) {
        free(hits->v);
    }
    hits->v = hits->small;
    hits->n = 0;
}

/* Takes up to *need positions of h from one memtable, after skipping
 * *skip of them. Caller holds mu. */
static void take_mem(const struct idindex *m, uint64_t h, int64_t *skip, int64_t *out,
                     size_t *got, size_t limit)
{
    if (m == NULL || *got >= limit) {
        return;
    }
    size_t before = *got;
    size_t all = idindex_find_from(m, h, (size_t)*skip, out + before, limit - before);
    size_t after_skip = all > (size_t)*skip ? all - (size_t)*skip : 0;
    *got += after_skip < limit - before ? after_skip : limit - before;
    *skip = all >= (size_t)*skip ? 0 : *skip - (int64_t)all;
}

int lsmidx_range_desc(struct lsmidx *ix, struct lsmidx_reader *r, uint64_t h, int64_t offset,
                      size_t limit, int64_t *out, size_t *n, struct err *e)
{
    h = fix(h);
    size_t got = 0;
    int64_t skip = offset;
    pthread_mutex_lock(&ix->mu);
    int64_t flushed = ix->flushed;
    take_mem(ix->active, h, &skip, out, &got, limit);
    take_mem(ix->frozen, h, &skip, out, &got, limit);
    pthread_mutex_unlock(&ix->mu);
    int rc = ERR_OK;
    if (got < limit && sqlite3_exec(r->db, "BEGIN", NULL, NULL, NULL) != SQLITE_OK) {
        rc = err_set(e, ERR_IO, "index %s: %s", ix->path, sqlite3_errmsg(r->db));
    } else if (got < limit) {
        /* one read transaction: the run list and the runs' keys agree */
        int s = SQLITE_DONE;
        while (rc == ERR_OK && got < limit && (s = sqlite3_step(r->runs)) == SQLITE_ROW) {
            int64_t run = sqlite3_column_int64(r->runs, 0);
            if (skip > 0) {
                sqlite3_bind_int64(r->count, 1, run);
                sqlite3_bind_int64(r->count, 2, (int64_t)h);
                sqlite3_bind_int64(r->count, 3, flushed);
                int cs = sqlite3_step(r->count);
                int64_t cnt = cs == SQLITE_ROW ? sqlite3_column_int64(r->count, 0) : 0;
                sqlite3_reset(r->count);
                if (cs != SQLITE_ROW) {
                    rc = err_set(e, ERR_IO, "index %s: %s", ix->path, sqlite3_errmsg(r->db));
                    break;
                }
                if (cnt <= skip) {
                    skip -= cnt;
                    continue;
                }
            }
            sqlite3_bind_int64(r->page, 1, run);
            sqlite3_bind_int64(r->page, 2, (int64_t)h);
            sqlite3_bind_int64(r->page, 3, flushed);
            sqlite3_bind_int64(r->page, 4, (int64_t)(limit - got));
            sqlite3_bind_int64(r->page, 5, skip);
            while ((s = sqlite3_step(r->page)) == SQLITE_ROW) {
                out[got++] = sqlite3_column_int64(r->page, 0);
            }
            if (s != SQLITE_DONE) {
                rc = err_set(e, ERR_IO, "index %s: %s", ix->path, sqlite3_errmsg(r->db));
            }
            sqlite3_reset(r->page);
            skip = 0;
        }
        if (rc == ERR_OK && s != SQLITE_ROW && s != SQLITE_DONE) {
            rc = err_set(e, ERR_IO, "index %s: %s", ix->path, sqlite3_errmsg(r->db));
        }
        sqlite3_reset(r->runs);
        sqlite3_exec(r->db, "COMMIT", NULL, NULL, NULL);
    }
    *n = got;
    return rc;
}

void lsmidx_get_stats(struct lsmidx *ix, struct lsmidx_stats *out)
{
    memset(out, 0, sizeof(*out));
    pthread_mutex_lock(&ix->mu);
    out->flushed = ix->flushed;
    out->memtable = idindex_count(ix->active) + (ix->frozen ? idindex_count(ix->frozen) : 0);
    out->runs = ix->nruns;
    for (size_t i = 0; i < ix->nruns; i++) {
        out->disk_entries += ix->runs[i].count;
        out->bloom_bytes += ix->runs[i].bl.nbits / 8;
    }
    out->flushes = ix->flushes;
    out->merges = ix->merges;
    out->file_finds = ix->file_finds;
    pthread_mutex_unlock(&ix->mu);
}
