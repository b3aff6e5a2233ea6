/*
 * lsmidx.c - see lsmidx.h.
 *
 * File layout (SQLite, WAL, synchronous=NORMAL: the file is derived data,
 * and the flushed mark lives in the same transaction as the run it covers):
 *   lsm_meta(k, v)       "flushed" -> position, "key0"/"key1" -> hash key,
 *                        "format" -> FORMAT
 *   lsm_runs(run, level, count, max_pos, bloom, bloom_k)
 *   lsm_blocks(run, last_h, last_pos, first_h, data)
 *                        primary key (run, last_h, last_pos)
 * A run is its entries sorted by (h as a signed integer, pos), cut into
 * blocks of up to BLOCK_ENTRIES; a block's row names its first hash and its
 * last entry, and data holds its entries as pairs of little-endian 64-bit
 * integers. One row per block, not per entry: the first format (a row per
 * entry in a WITHOUT ROWID table) spent ~0.7 us of SQLite an entry at each
 * write, and a rebuild writes every entry two or three times (flush, then
 * merges): the index threads were 47 % of a 10M-event rebuild's CPU. Now a
 * flush sorts and writes blobs, and a merge is a k-way merge in C over the
 * runs' blocks, read in order.
 *
 * A new run always has the largest run id, so writing it appends to the
 * right edge of both B-trees: sequential pages.
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
#include "index/walpace.h"

#define DEFAULT_MEMTABLE (256u * 1024)
#define FANOUT 4
#define BLOOM_BITS_PER_KEY 10
#define BLOOM_K 7
/* 240 entries: 3,840 bytes of data, so a block's row fits one 4 KiB page
 * with no overflow page. */
#define BLOCK_ENTRIES 240
#define ENTRY_BYTES 16
#define BLOCK_BYTES (BLOCK_ENTRIES * ENTRY_BYTES)
#define FORMAT 2
/* live files' write-out (walpace.h): the WAL kicked every this many blocks
 * written (512 KiB), the file written out this much at a time */
#define TRICKLE_BLOCKS 128
#define SETTLE_STEP (512 * 1024)

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
    struct walpace pace;            /* live: checkpoints at a pace; off in a rebuild */
    unsigned trickle;               /* blocks written since the WAL was last kicked */
    int64_t flushes, merges;
    int64_t file_finds;             /* lookups a filter sent to the file */
    bool failing;                   /* the last flush or merge failed; retrying */
    char broken[256];               /* bulk: why writing failed for good ("" if not) */
    struct siphash_key key;         /* per file, random, kept in lsm_meta */
};

struct lsmidx_reader {
    struct lsmidx *ix;
    sqlite3 *db;
    sqlite3_stmt *begin, *commit;   /* one snapshot for a whole lookup */
    sqlite3_stmt *runs;             /* runs, newest first */
    sqlite3_stmt *blocks;           /* a run's blocks from the first that may hold h */
};

static uint64_t fix(uint64_t h)
{
    return h == 0 ? 1 : h;
}

/* ---- bloom filter ---------------------------------------------------- */

/*
 * Blocked: a key's BLOOM_K bits all fall in one 512-bit block (one cache
 * line), chosen by the hash's high half; the bits come from 9-bit slices
 * of a second mix of it. Adding or probing costs one cache miss instead of
 * seven (the classic layout made a 10M-event rebuild's id merges 3-6
 * times slower than its list merges, which keep no filter); at 10 bits a
 * key the false-positive rate goes from ~0.8 % to ~1 %.
 */
#define BLOOM_BLOCK_BITS 512

/* A filter that answers "maybe" to everything, in one block. */
static void bloom_init_all(struct bloom *b)
{
    b->nbits = BLOOM_BLOCK_BITS;
    b->k = 1;
    b->w = xmalloc(BLOOM_BLOCK_BITS / 8);
    memset(b->w, 0xff, BLOOM_BLOCK_BITS / 8);
}

static void bloom_init(struct bloom *b, int64_t keys)
{
    uint64_t bits = (uint64_t)(keys > 0 ? keys : 1) * BLOOM_BITS_PER_KEY;
    b->nbits = (bits + BLOOM_BLOCK_BITS - 1) / BLOOM_BLOCK_BITS * BLOOM_BLOCK_BITS;
    b->k = BLOOM_K;
    b->w = xcalloc(b->nbits / 64, sizeof(uint64_t));
}

static uint64_t *bloom_block(const struct bloom *b, uint64_t h)
{
    uint64_t nblocks = b->nbits / BLOOM_BLOCK_BITS;
    return b->w + ((h >> 32) * nblocks >> 32) * (BLOOM_BLOCK_BITS / 64);
}

static uint64_t bloom_bits(uint64_t h)
{
    h *= 0x9e3779b97f4a7c15ULL;
    return h ^ h >> 29;
}

static void bloom_add(struct bloom *b, uint64_t h)
{
    uint64_t *blk = bloom_block(b, h), g = bloom_bits(h);
    for (int i = 0; i < b->k; i++, g >>= 9) {
        blk[(g & 511) / 64] |= 1ULL << (g % 64);
    }
}

static bool bloom_maybe(const struct bloom *b, uint64_t h)
{
    const uint64_t *blk = bloom_block(b, h);
    uint64_t g = bloom_bits(h);
    for (int i = 0; i < b->k; i++, g >>= 9) {
        if (!(blk[(g & 511) / 64] & (1ULL << (g % 64)))) {
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

/* May run hold h? Blooms are immutable per run id; an id no longer in the
 * list (merged away since the reader's snapshot was taken) answers
 * "maybe", which costs a seek but never loses an entry. */
static bool run_maybe(struct lsmidx *ix, int64_t run, uint64_t h)
{
    bool maybe = true;
    pthread_mutex_lock(&ix->mu);
    for (size_t i = 0; i < ix->nruns; i++) {
        if (ix->runs[i].id == run) {
            maybe = bloom_maybe(&ix->runs[i].bl, h);
            break;
        }
    }
    pthread_mutex_unlock(&ix->mu);
    return maybe;
}

/* ---- blocks ---------------------------------------------------------- */

static void put64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++) {
        p[i] = (unsigned char)(v >> (8 * i));
    }
}

static uint64_t get64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) {
        v = v << 8 | p[i];
    }
    return v;
}

static int64_t entry_h(const unsigned char *d, size_t i)
{
    return (int64_t)get64(d + i * ENTRY_BYTES);
}

static int64_t entry_pos(const unsigned char *d, size_t i)
{
    return (int64_t)get64(d + i * ENTRY_BYTES + 8);
}

/* The entries in a block of `bytes` bytes, in *n; an error if that is not
 * a whole number of entries between one and a block's worth. */
static int block_entries(int bytes, const char *path, size_t *n, struct err *e)
{
    if (bytes <= 0 || bytes > BLOCK_BYTES || bytes % ENTRY_BYTES != 0) {
        return err_set(e, ERR_STATE, "index %s: a block of %d bytes", path, bytes);
    }
    *n = (size_t)bytes / ENTRY_BYTES;
    return ERR_OK;
}

/* Entries are ordered as SQLite orders the signed integers of the rows. */
static int cmp_entry(int64_t ha, int64_t pa, int64_t hb, int64_t pb)
{
    if (ha != hb) {
        return ha < hb ? -1 : 1;
    }
    return pa < pb ? -1 : pa > pb;
}

/* Writes one run's entries, given in order, as blocks; fills its filter
 * and counts them. An entry equal to the one before is dropped. */
struct block_writer {
    struct lsmidx *ix;
    sqlite3_stmt *ins;
    struct run *run;
    unsigned char buf[BLOCK_BYTES];
    size_t n;
    bool any;
    int64_t last_h, last_pos;
};

static int bw_open(struct lsmidx *ix, struct block_writer *w, struct run *r, struct err *e)
{
    w->ix = ix;             /* buf is not cleared: n says how much of it is used */
    w->ins = NULL;
    w->run = r;
    w->n = 0;
    w->any = false;         /* last_h and last_pos are read only once it is set */
    if (ix->no_bloom) {
        bloom_init_all(&r->bl);
    } else {
        bloom_init(&r->bl, r->count);
    }
    r->count = 0;
    if (sqlite3_prepare_v2(ix->wdb, "INSERT INTO lsm_blocks(run, last_h, last_pos, first_h, data)"
                                    " VALUES(?,?,?,?,?)", -1, &w->ins, NULL) != SQLITE_OK) {
        return err_set(e, ERR_IO, "index %s: %s", ix->path, sql_err(ix->wdb));
    }
    return ERR_OK;
}

static int bw_flush(struct block_writer *w, struct err *e)
{
    if (w->n == 0) {
        return ERR_OK;
    }
    sqlite3_bind_int64(w->ins, 1, w->run->id);
    sqlite3_bind_int64(w->ins, 2, w->last_h);
    sqlite3_bind_int64(w->ins, 3, w->last_pos);
    sqlite3_bind_int64(w->ins, 4, entry_h(w->buf, 0));
    sqlite3_bind_blob(w->ins, 5, w->buf, (int)(w->n * ENTRY_BYTES), SQLITE_STATIC);
    int rc = ERR_OK;
    if (sqlite3_step(w->ins) != SQLITE_DONE) {
        rc = err_set(e, ERR_IO, "index %s: %s", w->ix->path, sql_err(w->ix->wdb));
    }
    sqlite3_reset(w->ins);
    w->n = 0;
    if (rc == ERR_OK && ++w->ix->trickle % TRICKLE_BLOCKS == 0) {
        /* what SQLite has spilled into the WAL so far goes to the disk now,
         * once the last such write is done, not all at the commit */
        walpace_kick(&w->ix->pace, true);
    }
    return rc;
}

static int bw_add(struct block_writer *w, int64_t h, int64_t pos, struct err *e)
{
    if (w->any && h == w->last_h && pos == w->last_pos) {
        return ERR_OK;
    }
    if (w->n == BLOCK_ENTRIES) {
        int rc = bw_flush(w, e);
        if (rc != ERR_OK) {
            return rc;
        }
    }
    if (!w->ix->no_bloom && (!w->any || h != w->last_h)) {
        bloom_add(&w->run->bl, (uint64_t)h);
    }
    put64(w->buf + w->n * ENTRY_BYTES, (uint64_t)h);
    put64(w->buf + w->n * ENTRY_BYTES + 8, (uint64_t)pos);
    w->n++;
    w->run->count++;
    w->any = true;
    w->last_h = h;
    w->last_pos = pos;
    return ERR_OK;
}

/* Writes what is left; rc is the writing's result so far. */
static int bw_close(struct block_writer *w, int rc, struct err *e)
{
    if (rc == ERR_OK) {
        rc = bw_flush(w, e);
    }
    sqlite3_finalize(w->ins);
    w->ins = NULL;
    return rc;
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

static int cmp_pair(const void *a, const void *b)
{
    const struct pair *x = a, *y = b;
    return cmp_entry((int64_t)x->h, x->pos, (int64_t)y->h, y->pos);
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

/*
 * Live index files are checkpointed at a pace (walpace.h): a merge writes
 * megabytes in one transaction (four 256K-entry runs: 16 MiB of blocks),
 * and SQLite's own checkpoint of it held the store's commits up for 10-22
 * ms (0.1-0.3 ms otherwise). The WAL is kicked out as the transaction
 * spills it (bw_flush), and this thread checkpoints after each commit.
 * After a failure SQLite checkpoints the file itself again.
 */
#define HAND_BACK "PRAGMA synchronous=NORMAL; PRAGMA wal_autocheckpoint=1000"

/* Ends a run's transaction: records the run and commits, or rolls back
 * and drops the run's filter. Returns rc, or the commit's error. */
static int finish_run(struct lsmidx *ix, struct run *r, int rc, struct err *e)
{
    if (rc == ERR_OK) {
        rc = insert_run_row(ix->wdb, r, e, ix->path);
    }
    if (rc == ERR_OK) {
        rc = exec(ix->wdb, "COMMIT", ix->path, e);
        if (rc == ERR_OK) {
            /* the run is in the file either way */
            (void)walpace_checkpoint(&ix->pace, ix->wdb);
        }
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

/*
 * Sorts a flush's pairs in entry order. Hashes are uniform, so one
 * counting pass on their top bits (sign flipped: unsigned order of the
 * flipped value is signed order) leaves buckets of a few pairs, which an
 * insertion sort finishes; a bucket that one busy key made large goes to
 * qsort. glibc's qsort of the whole array with a comparison call per step
 * was 9 % of a rebuild's samples. Returns the sorted copy (p is freed).
 */
#define SMALL_BUCKET 32

static struct pair *sort_pairs(struct pair *p, size_t n)
{
    int bits = 8;
    while (bits < 20 && ((size_t)1 << (bits + 2)) < n) {
        bits++;
    }
    size_t nb = (size_t)1 << bits;
    size_t *start = xcalloc(nb + 1, sizeof(size_t));
    for (size_t i = 0; i < n; i++) {
        start[((p[i].h ^ (1ULL << 63)) >> (64 - bits)) + 1]++;
    }
    for (size_t b = 0; b < nb; b++) {
        start[b + 1] += start[b];
    }
    struct pair *out = xmalloc((n + 1) * sizeof(*out));
    size_t *fill = xmalloc(nb * sizeof(size_t));
    memcpy(fill, start, nb * sizeof(size_t));
    for (size_t i = 0; i < n; i++) {
        out[fill[(p[i].h ^ (1ULL << 63)) >> (64 - bits)]++] = p[i];
    }
    free(fill);
    free(p);
    for (size_t b = 0; b < nb; b++) {
        struct pair *v = out + start[b];
        size_t m = start[b + 1] - start[b];
        if (m > SMALL_BUCKET) {
            qsort(v, m, sizeof(*v), cmp_pair);
            continue;
        }
        for (size_t i = 1; i < m; i++) {
            struct pair x = v[i];
            size_t j = i;
            for (; j > 0 && cmp_pair(&x, &v[j - 1]) < 0; j--) {
                v[j] = v[j - 1];
            }
            v[j] = x;
        }
    }
    free(start);
    return out;
}

/* Writes a frozen memtable as a new level-0 run. */
static int flush_frozen(struct lsmidx *ix, struct idindex *frozen, int64_t max_pos, struct err *e)
{
    struct dump d = { .p = xmalloc((idindex_count(frozen) + 1) * sizeof(struct pair)), .n = 0 };
    idindex_each(frozen, dump_cb, &d);
    d.p = sort_pairs(d.p, d.n);
    struct run r = { .id = ix->next_run, .level = 0, .count = (int64_t)d.n, .max_pos = max_pos };
    struct block_writer *w = xmalloc(sizeof(*w));
    int rc = bw_open(ix, w, &r, e);
    if (rc == ERR_OK) {
        rc = exec(ix->wdb, "BEGIN IMMEDIATE", ix->path, e);
    }
    for (size_t i = 0; i < d.n && rc == ERR_OK; i++) {
        rc = bw_add(w, (int64_t)d.p[i].h, d.p[i].pos, e);
    }
    rc = bw_close(w, rc, e);
    free(w);
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

/* One run read in order, a block at a time (copied: the merge writes to the
 * same tables while it reads). */
struct run_cursor {
    sqlite3_stmt *st;
    unsigned char buf[BLOCK_BYTES];
    size_t n, i;
};

/* Loads the cursor's next block; n == 0 at the end of the run. */
static int cursor_next_block(struct lsmidx *ix, struct run_cursor *c, struct err *e)
{
    c->n = c->i = 0;
    int s = sqlite3_step(c->st);
    if (s == SQLITE_DONE) {
        return ERR_OK;
    }
    int bytes = sqlite3_column_bytes(c->st, 0);
    if (s != SQLITE_ROW) {
        return err_set(e, ERR_IO, "index %s: %s", ix->path, sql_err(ix->wdb));
    }
    size_t n = 0;
    int rc = block_entries(bytes, ix->path, &n, e);
    if (rc == ERR_OK) {
        memcpy(c->buf, sqlite3_column_blob(c->st, 0), (size_t)bytes);
        c->n = n;
    }
    return rc;
}

static int64_t runs_max_pos(struct lsmidx *ix, const char *in)
{
    char sql[256];
    sqlite3_stmt *st = NULL;
    int64_t max_pos = 0;
    snprintf(sql, sizeof(sql), "SELECT max(max_pos) FROM lsm_runs WHERE run IN %s", in);
    if (sqlite3_prepare_v2(ix->wdb, sql, -1, &st, NULL) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW) {
        max_pos = sqlite3_column_int64(st, 0);
    }
    sqlite3_finalize(st);
    return max_pos;
}

/* Merges FANOUT runs of one level into one of the next: a k-way merge of
 * their blocks, in one transaction with the old runs' deletion. */
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
    pthread_mutex_lock(&ix->mu);
    for (size_t i = 0; i < ix->nruns; i++) {
        for (int k = 0; k < FANOUT; k++) {
            r.count += ix->runs[i].id == ids[k] ? ix->runs[i].count : 0;
        }
    }
    pthread_mutex_unlock(&ix->mu);
    struct run_cursor *c = xcalloc(FANOUT, sizeof(*c));
    struct block_writer *w = xmalloc(sizeof(*w));
    int rc = bw_open(ix, w, &r, e);      /* the filter sized for the sum of the counts */
    if (rc == ERR_OK) {
        rc = exec(ix->wdb, "BEGIN IMMEDIATE", ix->path, e);
    }
    for (int k = 0; k < FANOUT && rc == ERR_OK; k++) {
        if (sqlite3_prepare_v2(ix->wdb, "SELECT data FROM lsm_blocks WHERE run=?"
                                        " ORDER BY last_h, last_pos", -1, &c[k].st,
                               NULL) != SQLITE_OK) {
            rc = err_set(e, ERR_IO, "index %s: %s", ix->path, sql_err(ix->wdb));
            break;
        }
        sqlite3_bind_int64(c[k].st, 1, ids[k]);
        rc = cursor_next_block(ix, &c[k], e);
    }
    while (rc == ERR_OK) {
        int best = -1;
        int64_t bh = 0, bp = 0;
        for (int k = 0; k < FANOUT; k++) {
            if (c[k].i < c[k].n) {
                int64_t h = entry_h(c[k].buf, c[k].i), p = entry_pos(c[k].buf, c[k].i);
                if (best < 0 || cmp_entry(h, p, bh, bp) < 0) {
                    best = k;
                    bh = h;
                    bp = p;
                }
            }
        }
        if (best < 0) {
            break;
        }
        rc = bw_add(w, bh, bp, e);
        if (rc == ERR_OK && ++c[best].i == c[best].n) {
            rc = cursor_next_block(ix, &c[best], e);
        }
    }
    for (int k = 0; k < FANOUT; k++) {
        sqlite3_finalize(c[k].st);
    }
    free(c);
    rc = bw_close(w, rc, e);
    free(w);
    if (rc == ERR_OK) {
        r.max_pos = runs_max_pos(ix, in);
        char sql[512];
        snprintf(sql, sizeof(sql), "DELETE FROM lsm_blocks WHERE run IN %s;"
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
    "CREATE TABLE IF NOT EXISTS lsm_blocks(run INTEGER NOT NULL, last_h INTEGER NOT NULL,"
    " last_pos INTEGER NOT NULL, first_h INTEGER NOT NULL, data BLOB NOT NULL,"
    " PRIMARY KEY(run, last_h, last_pos));";

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
 * before keys existed (its runs were hashed without one) or in the first
 * format (a row per entry, table lsm_keys) is emptied and filled again by
 * its owner from the log. */
static int load_key(struct lsmidx *ix, struct err *e)
{
    int64_t k0, k1, format = 0;
    meta_get(ix->wdb, "format", &format);
    if (format == 0) {
        if (meta_get(ix->wdb, "key0", &k0)) {
            log_info("index file in the first format; emptied, its owner re-indexes from the log",
                     "path=%s", ix->path);
        }
        int rc = exec(ix->wdb, "DROP TABLE IF EXISTS lsm_keys", ix->path, e);
        if (rc != ERR_OK) {
            return rc;
        }
    } else if (format != FORMAT) {
        return err_set(e, ERR_STATE, "index %s: format %lld is not one this build reads (%d);"
                       " delete the file and it is rebuilt from the log", ix->path,
                       (long long)format, FORMAT);
    }
    if (format == FORMAT && meta_get(ix->wdb, "key0", &k0) && meta_get(ix->wdb, "key1", &k1)) {
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
             "BEGIN IMMEDIATE; DELETE FROM lsm_blocks; DELETE FROM lsm_runs; DELETE FROM lsm_meta;"
             " INSERT INTO lsm_meta(k, v) VALUES('key0', %lld), ('key1', %lld), ('format', %d);"
             " COMMIT", (long long)(int64_t)k[0], (long long)(int64_t)k[1], FORMAT);
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
        int k = sqlite3_column_int(st, 5);
        if (bytes <= 0 || bytes % (BLOOM_BLOCK_BITS / 8) != 0 || k < 1 || k > BLOOM_K) {
            rc = err_set(e, ERR_STATE, "index %s: run %lld has a malformed bloom filter",
                         ix->path, (long long)r.id);
            break;
        }
        r.bl.nbits = (uint64_t)bytes * 8;
        r.bl.k = k;
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
    walpace_init(&ix->pace, ix->path, SETTLE_STEP, HAND_BACK);
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
                                    : "PRAGMA journal_mode=WAL; PRAGMA synchronous=OFF;"
                                      " PRAGMA wal_autocheckpoint=0; PRAGMA cache_size=-1024",
                  path, e);
    }
    if (rc == ERR_OK) {
        rc = exec(ix->wdb, schema, path, e);
    }
    if (rc == ERR_OK && !ix->bulk) {
        rc = walpace_open(&ix->pace, ix->wdb, e);
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
        walpace_close(&ix->pace, ix->wdb);
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
    int rc = exec(ix->wdb, "BEGIN IMMEDIATE; DELETE FROM lsm_blocks; DELETE FROM lsm_runs;"
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
     * slack bought nothing but larger, fewer runs, and four memtables of
     * slack cost 60-140 MiB. */
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
    if (rc == ERR_OK) {
        /* the runs' upper pages; the kernel's page cache holds the rest */
        rc = exec(r->db, "PRAGMA query_only=1; PRAGMA cache_size=-2048", ix->path, e);
    }
    static const char *const sql[] = {
        "BEGIN",
        "COMMIT",
        /* newer runs first: lower levels are newer than higher ones, and
         * within a level a larger run id is newer (see merge_runs) */
        "SELECT run FROM lsm_runs ORDER BY level ASC, run DESC",
        /* the first block that may hold h is the first whose last entry is
         * not below it; h's entries go on while blocks end in h */
        "SELECT first_h, data FROM lsm_blocks WHERE run = ?1 AND last_h >= ?2"
        " ORDER BY last_h, last_pos",
    };
    sqlite3_stmt **st[] = { &r->begin, &r->commit, &r->runs, &r->blocks };
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
        sqlite3_finalize(r->begin);
        sqlite3_finalize(r->commit);
        sqlite3_finalize(r->runs);
        sqlite3_finalize(r->blocks);
        sqlite3_close(r->db);
        free(r);
    }
}

static int reader_err(struct lsmidx_reader *r, struct err *e)
{
    return err_set(e, ERR_IO, "index %s: %s", r->ix->path, sqlite3_errmsg(r->db));
}

/* Visits the positions of h at or below upto in one run, in ascending
 * order, until fn returns false. Inside a read transaction. */
typedef bool (*visit_fn)(void *arg, int64_t pos);

static int scan_run(struct lsmidx_reader *r, int64_t run, uint64_t h, int64_t upto,
                    visit_fn fn, void *arg, struct err *e)
{
    int64_t sh = (int64_t)h;
    sqlite3_bind_int64(r->blocks, 1, run);
    sqlite3_bind_int64(r->blocks, 2, sh);
    int rc = ERR_OK, s;
    bool more = true;
    while (more && (s = sqlite3_step(r->blocks)) == SQLITE_ROW) {
        if (sqlite3_column_int64(r->blocks, 0) > sh) {
            break;          /* the block starts past h: h is not in this run */
        }
        const unsigned char *d = sqlite3_column_blob(r->blocks, 1);
        size_t n = 0;
        rc = block_entries(sqlite3_column_bytes(r->blocks, 1), r->ix->path, &n, e);
        if (rc != ERR_OK) {
            break;
        }
        size_t lo = 0, hi = n;
        while (lo < hi) {           /* the first entry not below h */
            size_t mid = lo + (hi - lo) / 2;
            if (entry_h(d, mid) < sh) {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        size_t i = lo;
        for (; i < n && entry_h(d, i) == sh && more; i++) {
            int64_t pos = entry_pos(d, i);
            more = pos <= upto && fn(arg, pos);
        }
        more = more && i == n;      /* h goes on only if it filled the block to its end */
    }
    if (rc == ERR_OK && more && s != SQLITE_DONE && s != SQLITE_ROW) {
        rc = reader_err(r, e);
    }
    sqlite3_reset(r->blocks);
    return rc;
}

/* Calls fn(arg, run) for each run in one snapshot, newest first, until it
 * returns something other than ERR_OK (1 stops without an error). */
static int each_run(struct lsmidx_reader *r, int (*fn)(void *arg, int64_t run), void *arg,
                    struct err *e)
{
    if (sqlite3_step(r->begin) != SQLITE_DONE) {
        int rc = reader_err(r, e);
        sqlite3_reset(r->begin);
        return rc;
    }
    sqlite3_reset(r->begin);
    int rc = ERR_OK, s;
    while (rc == ERR_OK && (s = sqlite3_step(r->runs)) == SQLITE_ROW) {
        rc = fn(arg, sqlite3_column_int64(r->runs, 0));
    }
    if (rc == ERR_OK && s != SQLITE_DONE) {
        rc = reader_err(r, e);
    }
    sqlite3_reset(r->runs);
    sqlite3_step(r->commit);
    sqlite3_reset(r->commit);
    return rc == 1 ? ERR_OK : rc;
}

struct find_ctx {
    struct lsmidx_reader *r;
    uint64_t h;
    int64_t flushed;
    int64_t *out;
    size_t max, total;
    struct err *e;
};

static bool find_visit(void *arg, int64_t pos)
{
    struct find_ctx *f = arg;
    if (f->total < f->max) {
        f->out[f->total] = pos;
    }
    f->total++;
    return true;
}

static int find_run(void *arg, int64_t run)
{
    struct find_ctx *f = arg;
    if (!run_maybe(f->r->ix, run, f->h)) {
        return ERR_OK;
    }
    return scan_run(f->r, run, f->h, f->flushed, find_visit, f, f->e);
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
    struct find_ctx f = { .r = r, .h = h, .flushed = flushed, .out = out, .max = max,
                          .total = total, .e = e };
    int rc = each_run(r, find_run, &f, e);
    *n = f.total;
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

/* A run's positions come in ascending order; the page wants them newest
 * first. So: count them, skip whole runs, and from a run that is in the
 * page take the ascending indexes [lo, hi] and reverse them. */
struct range_ctx {
    struct lsmidx_reader *r;
    uint64_t h;
    int64_t flushed, skip;
    int64_t *out;
    size_t limit, got;
    int64_t seen, lo, hi;       /* the visit's counter and the window it keeps */
    struct err *e;
};

static bool count_visit(void *arg, int64_t pos)
{
    (void)pos;
    ((struct range_ctx *)arg)->seen++;
    return true;
}

static bool window_visit(void *arg, int64_t pos)
{
    struct range_ctx *c = arg;
    if (c->seen >= c->lo) {
        c->out[c->got + (size_t)(c->hi - c->seen)] = pos;
    }
    return c->seen++ < c->hi;
}

static int range_run(void *arg, int64_t run)
{
    struct range_ctx *c = arg;
    c->seen = 0;
    int rc = scan_run(c->r, run, c->h, c->flushed, count_visit, c, c->e);
    int64_t cnt = c->seen;
    if (rc != ERR_OK || cnt == 0) {
        return rc;
    }
    if (cnt <= c->skip) {
        c->skip -= cnt;
        return ERR_OK;
    }
    int64_t want = (int64_t)(c->limit - c->got);
    c->hi = cnt - 1 - c->skip;                      /* newest wanted, ascending index */
    c->lo = c->hi - want + 1 > 0 ? c->hi - want + 1 : 0;
    c->seen = 0;
    rc = scan_run(c->r, run, c->h, c->flushed, window_visit, c, c->e);
    if (rc != ERR_OK) {
        return rc;
    }
    if (c->seen <= c->hi) {     /* the run changed under us: cannot happen in one snapshot */
        return err_set(c->e, ERR_STATE, "index %s: run %lld changed while read", c->r->ix->path,
                       (long long)run);
    }
    c->got += (size_t)(c->hi - c->lo + 1);
    c->skip = 0;
    return c->got < c->limit ? ERR_OK : 1;
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
    if (got < limit) {
        struct range_ctx c = { .r = r, .h = h, .flushed = flushed, .skip = skip, .out = out,
                               .limit = limit, .got = got, .e = e };
        rc = each_run(r, range_run, &c, e);
        got = c.got;
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
