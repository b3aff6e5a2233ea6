/*
 * test_index.c - the log-structured id index: every entry is found again
 * through flushes and merges, while another thread looks entries up
 * concurrently (a merge must never hide one), after reopening, and after a
 * reset.
 */
#include <pthread.h>
#include <stdbool.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sqlite3.h>

#include "check.h"
#include "core/hash.h"
#include "index/lsmidx.h"

static uint64_t key(int64_t i)
{
    return hash64(&i, sizeof(i));
}

struct reader_arg {
    struct lsmidx *ix;
    _Atomic int64_t *committed;
    atomic_bool *stop;
    int64_t lookups;
    int64_t misses;
};

/* Looks up random committed entries until told to stop; counts misses. */
static void *reader(void *p)
{
    struct reader_arg *a = p;
    struct lsmidx_reader *r = NULL;
    struct err e;
    if (lsmidx_reader_open(a->ix, &r, &e) != ERR_OK) {
        a->misses = -1;
        return NULL;
    }
    unsigned seed = 7;
    while (!atomic_load(a->stop)) {
        int64_t top = atomic_load(a->committed);
        if (top == 0) {
            continue;
        }
        int64_t i = 1 + (int64_t)(rand_r(&seed) % (unsigned)top);
        int64_t out[8];
        size_t n = 0;
        if (lsmidx_find(a->ix, r, key(i), out, 8, &n, &e) != ERR_OK) {
            a->misses++;
            continue;
        }
        bool found = false;
        for (size_t k = 0; k < n && k < 8; k++) {
            found = found || out[k] == i;
        }
        a->misses += !found;
        a->lookups++;
    }
    lsmidx_reader_close(r);
    return NULL;
}

/* Opens dir/name.idx, its path left in path; NULL (and a failed check)
 * if it does not open. */
static struct lsmidx *open_in(const char *dir, const char *name, size_t memtable, int flags,
                              char *path, size_t cap)
{
    snprintf(path, cap, "%s/%s.idx", dir, name);
    struct err e;
    struct lsmidx *ix = NULL;
    CHECKF(lsmidx_open(path, memtable, flags, &ix, &e) == ERR_OK, "%s: %s", path, e.msg);
    return ix;
}

/* Lists: one key holding many positions, read newest first in pages that
 * cross the memtables and several runs. With and without bloom filters,
 * written as a server does or as a rebuild does (LSMIDX_BULK), then
 * reopened by a server that merges on top. */
static void test_ranges(const char *dir, const char *name, int flags)
{
    char path[300];
    struct err e;
    struct lsmidx *ix = open_in(dir, name, 50, flags, path, sizeof(path));
    if (ix == NULL) {
        return;
    }
    enum { M = 3000 };
    const uint64_t hot = 777;
    int64_t want[M + 20];
    size_t nwant = 0;
    for (int64_t i = 1; i <= M; i++) {
        lsmidx_add(ix, i % 3 == 0 ? hot : key(i), i);
        if (i % 3 == 0) {
            want[nwant++] = i;
        }
        if (i % 10 == 0) {
            lsmidx_commit(ix, i);
        }
        if (i % 400 == 0) {
            lsmidx_quiesce(ix);
        }
    }
    lsmidx_commit(ix, M);
    lsmidx_quiesce(ix);
    /* a tail that stays in memory (fewer than a memtable's worth) */
    for (int64_t i = M + 1; i <= M + 20; i++) {
        lsmidx_add(ix, hot, i);
        want[nwant++] = i;
    }
    lsmidx_commit(ix, M + 20);
    CHECKF(lsmidx_finish(ix, &e) == ERR_OK, "%s: finish: %s", name, e.msg);
    struct lsmidx_reader *r = NULL;
    CHECK(lsmidx_reader_open(ix, &r, &e) == ERR_OK);
    struct lsmidx_stats st;
    lsmidx_get_stats(ix, &st);
    CHECKF(st.runs >= 1 && st.memtable == 20 && st.merges > 0, "runs %zu memtable %zu",
           st.runs, st.memtable);
    /* all pages of 97, concatenated, are the whole list newest first */
    int64_t got[M + 20];
    size_t ngot = 0;
    bool pages_ok = true;
    for (int64_t off = 0; off < (int64_t)nwant + 97; off += 97) {
        int64_t page[97];
        size_t n = 0;
        pages_ok = pages_ok && lsmidx_range_desc(ix, r, hot, off, 97, page, &n, &e) == ERR_OK;
        for (size_t k = 0; k < n && ngot < ARRAY_LEN(got); k++) {
            got[ngot++] = page[k];
        }
    }
    CHECK(pages_ok);
    CHECKF(ngot == nwant, "%zu of %zu", ngot, nwant);
    bool order = ngot == nwant;
    for (size_t k = 0; k < ngot && order; k++) {
        order = got[k] == want[nwant - 1 - k];
    }
    CHECK(order);
    int64_t page[10];
    size_t n = 99;
    CHECK(lsmidx_range_desc(ix, r, hot, (int64_t)nwant, 10, page, &n, &e) == ERR_OK && n == 0);
    CHECK(lsmidx_range_desc(ix, r, hot, (int64_t)nwant - 3, 10, page, &n, &e) == ERR_OK &&
          n == 3 && page[2] == want[0]);
    CHECK(lsmidx_range_desc(ix, r, 4242, 0, 10, page, &n, &e) == ERR_OK && n == 0);
    /* a point lookup finds everything, with bloom filters or without */
    int64_t all[M + 20];
    CHECK(lsmidx_find(ix, r, hot, all, M, &n, &e) == ERR_OK && n == nwant);
    bool each = true;
    for (int64_t i = 1; i <= M; i++) {
        if (i % 3 != 0) {
            each = each && lsmidx_find(ix, r, key(i), all, 4, &n, &e) == ERR_OK && n == 1 &&
                   all[0] == i;
        }
    }
    CHECKF(each, "%s: point lookups", name);
    lsmidx_reader_close(r);
    lsmidx_close(ix);
    /* a server opens what a rebuild wrote and merges on top of it */
    ix = NULL;
    CHECK(lsmidx_open(path, 50, flags & ~LSMIDX_BULK, &ix, &e) == ERR_OK);
    if (ix == NULL) {
        return;
    }
    for (int64_t i = M + 21; i <= M + 1000; i++) {
        lsmidx_add(ix, key(i), i);
        if (i % 50 == 0) {
            lsmidx_commit(ix, i);
            lsmidx_quiesce(ix);
        }
    }
    lsmidx_commit(ix, M + 1000);
    lsmidx_quiesce(ix);
    CHECK(lsmidx_reader_open(ix, &r, &e) == ERR_OK);
    each = true;
    for (int64_t i = 1; i <= M + 1000; i++) {
        if ((i <= M && i % 3 == 0) || (i > M && i <= M + 20)) {
            continue;
        }
        each = each && lsmidx_find(ix, r, key(i), all, 4, &n, &e) == ERR_OK && n == 1 &&
               all[0] == i;
    }
    CHECKF(each, "%s: point lookups after reopening", name);
    CHECK(lsmidx_find(ix, r, hot, all, M, &n, &e) == ERR_OK && n == M / 3);
    lsmidx_get_stats(ix, &st);
    CHECKF(st.runs < 16, "%s: %zu runs after reopening", name, st.runs);
    lsmidx_reader_close(r);
    lsmidx_close(ix);
}

/* A flusher that cannot write (another process holds the file's write
 * lock) must not stall the writer; once the lock goes, everything lands. */
static void test_flusher_blocked(const char *dir)
{
    char path[300];
    struct err e;
    struct lsmidx *ix = open_in(dir, "b", 32, 0, path, sizeof(path));
    if (ix == NULL) {
        return;
    }
    sqlite3 *other = NULL;
    CHECK(sqlite3_open(path, &other) == SQLITE_OK);
    CHECK(sqlite3_exec(other, "BEGIN IMMEDIATE", NULL, NULL, NULL) == SQLITE_OK);
    enum { K = 32 * 12 };
    for (int64_t i = 1; i <= K; i++) {      /* far past four memtables' worth */
        lsmidx_add(ix, key(i), i);
        lsmidx_commit(ix, i);
    }
    /* reaching here is the point (a blocked writer hangs until ctest's
     * timeout); and nothing can have been flushed meanwhile: */
    struct lsmidx_stats st;
    lsmidx_get_stats(ix, &st);
    CHECKF(st.flushes == 0 && st.memtable == K, "flushes %lld memtable %zu",
           (long long)st.flushes, st.memtable);
    struct lsmidx_reader *r = NULL;
    CHECK(lsmidx_reader_open(ix, &r, &e) == ERR_OK);
    int64_t out[4];
    size_t n = 0;
    bool all = true;
    for (int64_t i = 1; i <= K; i++) {
        all = all && lsmidx_find(ix, r, key(i), out, 4, &n, &e) == ERR_OK && n == 1 && out[0] == i;
    }
    CHECK(all);
    sqlite3_exec(other, "ROLLBACK", NULL, NULL, NULL);
    sqlite3_close(other);
    /* many positions under one hash: the count says how many there are */
    for (int64_t i = 1; i <= 20; i++) {
        lsmidx_add(ix, 999, K + i);
    }
    lsmidx_commit(ix, K + 20);
    CHECK(lsmidx_find(ix, r, 999, out, 4, &n, &e) == ERR_OK && n == 20);
    lsmidx_reader_close(r);
    lsmidx_close(ix);
}

/* A bulk build writes without a journal, so a failed flush is not retried
 * (it may have left half a run): finishing the build reports it even once
 * the cause has gone. */
static void test_bulk_write_fails(const char *dir)
{
    char path[300];
    struct err e;
    struct lsmidx *ix = open_in(dir, "bulk-fail", 32, LSMIDX_BULK, path, sizeof(path));
    if (ix == NULL) {
        return;
    }
    sqlite3 *other = NULL;
    CHECK(sqlite3_open(path, &other) == SQLITE_OK);
    CHECK(sqlite3_exec(other, "BEGIN IMMEDIATE", NULL, NULL, NULL) == SQLITE_OK);
    for (int64_t i = 1; i <= 64; i++) {
        lsmidx_add(ix, key(i), i);
    }
    lsmidx_commit(ix, 64);
    lsmidx_quiesce(ix);         /* returns once the flush has failed */
    sqlite3_exec(other, "ROLLBACK", NULL, NULL, NULL);
    sqlite3_close(other);
    err_clear(&e);
    CHECK(lsmidx_finish(ix, &e) != ERR_OK);
    CHECKF(strstr(e.msg, "locked") != NULL, "says why: %s", e.msg);
    struct lsmidx_stats st;
    lsmidx_get_stats(ix, &st);
    CHECKF(st.flushes == 0, "flushes %lld after the failure", (long long)st.flushes);
    lsmidx_close(ix);
}

/* A file in the first format (a row per entry in lsm_keys) is emptied on
 * open, so its owner re-indexes from the log; a format this build does not
 * know is refused with a message that says what to do. */
static void test_old_formats(const char *dir)
{
    char path[300];
    snprintf(path, sizeof(path), "%s/first-format.idx", dir);
    sqlite3 *db = NULL;
    CHECK(sqlite3_open(path, &db) == SQLITE_OK);
    CHECK(sqlite3_exec(db,
                       "CREATE TABLE lsm_meta(k TEXT PRIMARY KEY, v INTEGER NOT NULL);"
                       "CREATE TABLE lsm_runs(run INTEGER PRIMARY KEY, level INTEGER NOT NULL,"
                       " count INTEGER NOT NULL, max_pos INTEGER NOT NULL, bloom BLOB NOT NULL,"
                       " bloom_k INTEGER NOT NULL);"
                       "CREATE TABLE lsm_keys(run INTEGER NOT NULL, h INTEGER NOT NULL,"
                       " pos INTEGER NOT NULL, PRIMARY KEY(run, h, pos)) WITHOUT ROWID;"
                       "INSERT INTO lsm_meta VALUES('key0', 1), ('key1', 2), ('flushed', 500);"
                       "INSERT INTO lsm_runs VALUES(1, 0, 1, 500, zeroblob(8), 7);"
                       "INSERT INTO lsm_keys VALUES(1, 42, 500);",
                       NULL, NULL, NULL) == SQLITE_OK);
    sqlite3_close(db);
    struct err e;
    struct lsmidx *ix = NULL;
    CHECKF(lsmidx_open(path, 32, 0, &ix, &e) == ERR_OK, "open: %s", e.msg);
    if (ix == NULL) {
        return;
    }
    struct lsmidx_stats st;
    lsmidx_get_stats(ix, &st);
    CHECKF(st.flushed == 0 && st.runs == 0, "flushed %lld, runs %zu", (long long)st.flushed,
           st.runs);
    lsmidx_close(ix);
    CHECK(sqlite3_open(path, &db) == SQLITE_OK);
    sqlite3_stmt *q = NULL;
    CHECK(sqlite3_prepare_v2(db, "SELECT (SELECT count(*) FROM sqlite_master WHERE name='lsm_keys'),"
                                 " (SELECT v FROM lsm_meta WHERE k='format')", -1, &q,
                             NULL) == SQLITE_OK);
    CHECK(sqlite3_step(q) == SQLITE_ROW && sqlite3_column_int(q, 0) == 0 &&
          sqlite3_column_int(q, 1) == 2);
    sqlite3_finalize(q);
    CHECK(sqlite3_exec(db, "UPDATE lsm_meta SET v = 99 WHERE k = 'format'", NULL, NULL, NULL) ==
          SQLITE_OK);
    sqlite3_close(db);
    ix = NULL;
    err_clear(&e);
    CHECK(lsmidx_open(path, 32, 0, &ix, &e) != ERR_OK && ix == NULL);
    CHECKF(strstr(e.msg, "format 99") != NULL && strstr(e.msg, "rebuilt from the log") != NULL,
           "says why: %s", e.msg);
}

/* One flush of a larger memtable where two busy keys share the flush's
 * sort bucket (their hashes differ only in low bits) among random ones:
 * each key's positions come back complete and newest first, so the run
 * was written in order whichever way its buckets were sorted. */
static void test_busy_bucket(const char *dir)
{
    char path[300];
    struct err e;
    struct lsmidx *ix = open_in(dir, "busy", 4096, 0, path, sizeof(path));
    if (ix == NULL) {
        return;
    }
    enum { N = 4096 };
    const uint64_t hot[2] = { 0x4000000000000010ULL, 0x4000000000000001ULL };
    size_t nhot[2] = { 0, 0 };
    for (int64_t i = 1; i <= N; i++) {
        lsmidx_add(ix, i % 4 < 2 ? hot[i % 2] : key(i), i);
        nhot[i % 2] += i % 4 < 2;
    }
    lsmidx_commit(ix, N);
    lsmidx_quiesce(ix);
    struct lsmidx_stats st;
    lsmidx_get_stats(ix, &st);
    CHECKF(st.runs == 1 && st.memtable == 0, "runs %zu memtable %zu", st.runs, st.memtable);
    struct lsmidx_reader *r = NULL;
    CHECK(lsmidx_reader_open(ix, &r, &e) == ERR_OK);
    for (int k = 0; k < 2 && r != NULL; k++) {
        int64_t out[N];
        size_t n = 0;
        CHECK(lsmidx_range_desc(ix, r, hot[k], 0, N, out, &n, &e) == ERR_OK);
        bool ok = n == nhot[k];
        int64_t expect = N;
        for (size_t j = 0; j < n && ok; j++) {
            while (expect % 4 >= 2 || expect % 2 != k) {
                expect--;
            }
            ok = out[j] == expect;
            expect--;
        }
        CHECKF(ok, "hot key %d: %zu of %zu positions, newest first", k, n, nhot[k]);
    }
    bool each = true;
    for (int64_t i = 3; i <= N && r != NULL; i += 4) {
        int64_t out[4];
        size_t n = 0;
        each = each && lsmidx_find(ix, r, key(i), out, 4, &n, &e) == ERR_OK && n == 1 &&
               out[0] == i;
    }
    CHECK(each);
    lsmidx_reader_close(r);
    lsmidx_close(ix);
}

/* Runs and their entries counted in an index file opened on its own,
 * without its WAL (a copy of the main file): what a checkpoint has copied
 * back. -1 if it does not open. */
static int64_t entries_in_main_file(const char *path, const char *dir)
{
    char copy[400];
    snprintf(copy, sizeof(copy), "%s/copy.idx", dir);
    check_copy_file(path, copy);
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    int64_t got = -1;
    if (sqlite3_open_v2(copy, &db, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK &&
        sqlite3_prepare_v2(db, "SELECT coalesce(sum(count), 0) FROM lsm_runs", -1, &st, NULL) ==
            SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW) {
        got = sqlite3_column_int64(st, 0);
    }
    sqlite3_finalize(st);
    sqlite3_close(db);
    unlink(copy);
    return got;
}

/* A server's index writes its runs out itself after each flush and merge
 * (walpace.h): the main file holds them without the WAL, small
 * runs included (SQLite's own checkpoint waited for 1,000 pages). */
static void test_written_out(const char *dir)
{
    char path[300];
    struct lsmidx *ix = open_in(dir, "out", 64, 0, path, sizeof(path));
    if (ix == NULL) {
        return;
    }
    enum { N = 1000 };
    for (int64_t i = 1; i <= N; i++) {
        lsmidx_add(ix, key(i), i);
        if (i % 64 == 0) {
            lsmidx_commit(ix, i);
            lsmidx_quiesce(ix);
        }
    }
    lsmidx_quiesce(ix);
    int64_t flushed = lsmidx_flushed(ix);
    int64_t in_file = entries_in_main_file(path, dir);
    CHECKF(flushed > 0 && in_file == flushed,
           "runs in the main file: %lld entries, flushed %lld", (long long)in_file,
           (long long)flushed);
    lsmidx_close(ix);
}

int main(void)
{
    char dir[] = "/tmp/rastro-index-XXXXXX";
    if (mkdtemp(dir) == NULL) {
        return 1;
    }
    char path[300];
    snprintf(path, sizeof(path), "%s/t.idx", dir);
    struct err e;
    struct lsmidx *ix = NULL;
    CHECK(lsmidx_open(path, 100, 0, &ix, &e) == ERR_OK);
    if (ix == NULL) {
        return check_done("test_index");
    }

    enum { N = 20000 };
    _Atomic int64_t committed = 0;
    atomic_bool stop = false;
    struct reader_arg ra = { .ix = ix, .committed = &committed, .stop = &stop };
    pthread_t th;
    CHECK(pthread_create(&th, NULL, reader, &ra) == 0);
    for (int64_t i = 1; i <= N; i++) {
        lsmidx_add(ix, key(i), i);
        if (i % 37 == 0) {
            /* an uncommitted add that is rolled back */
            lsmidx_add(ix, key(N + i), N + i);
            lsmidx_remove(ix, key(N + i), N + i);
            lsmidx_commit(ix, i);
            atomic_store(&committed, i);
        }
        if (i % 500 == 0) {
            lsmidx_quiesce(ix);     /* let flushes and merges keep pace */
        }
    }
    lsmidx_commit(ix, N);
    atomic_store(&committed, N);
    lsmidx_quiesce(ix);
    usleep(20000);
    atomic_store(&stop, true);
    pthread_join(th, NULL);
    CHECKF(ra.misses == 0 && ra.lookups > 0, "concurrent lookups: %lld misses of %lld",
           (long long)ra.misses, (long long)ra.lookups);

    struct lsmidx_stats st;
    lsmidx_get_stats(ix, &st);
    CHECKF(st.flushes >= N / 1000 && st.merges > 0, "flushes %lld merges %lld",
           (long long)st.flushes, (long long)st.merges);
    CHECKF(st.runs < 20, "runs %zu: merging keeps them few", st.runs);
    CHECK(st.disk_entries + (int64_t)st.memtable == N);
    CHECK(st.bloom_bytes > 0);

    struct lsmidx_reader *r = NULL;
    CHECK(lsmidx_reader_open(ix, &r, &e) == ERR_OK);
    bool all = true;
    int64_t out[8];
    size_t n;
    for (int64_t i = 1; i <= N; i++) {
        all = all && lsmidx_find(ix, r, key(i), out, 8, &n, &e) == ERR_OK && n == 1 && out[0] == i;
    }
    CHECK(all);
    CHECK(lsmidx_find(ix, r, key(N + 37), out, 8, &n, &e) == ERR_OK && n == 0);
    /* keys that are nowhere: the filters answer, the file is not read
     * (but for their false positives, ~1 % a run) */
    lsmidx_get_stats(ix, &st);
    int64_t before = st.file_finds;
    bool none = true;
    for (int64_t i = 1; i <= 1000; i++) {
        none = none && lsmidx_find(ix, r, key(4 * N + i), out, 8, &n, &e) == ERR_OK && n == 0;
    }
    lsmidx_get_stats(ix, &st);
    CHECK(none);
    CHECKF(st.file_finds - before < 250, "%lld of 1000 absent keys read the file",
           (long long)(st.file_finds - before));
    /* and a key on disk is read from it */
    before = st.file_finds;
    CHECK(lsmidx_find(ix, r, key(1), out, 8, &n, &e) == ERR_OK && n == 1 && out[0] == 1);
    lsmidx_get_stats(ix, &st);
    CHECK(st.file_finds == before + 1);
    /* one hash, many positions (collisions are the caller's to confirm) */
    lsmidx_add(ix, 12345, N + 1);
    lsmidx_add(ix, 12345, N + 2);
    lsmidx_commit(ix, N + 2);
    CHECK(lsmidx_find(ix, r, 12345, out, 8, &n, &e) == ERR_OK && n == 2);
    int64_t flushed = lsmidx_flushed(ix);
    CHECK(flushed > 0 && flushed <= N + 2);
    lsmidx_reader_close(r);
    lsmidx_close(ix);

    /* reopen: what was flushed is there; the owner re-adds the rest */
    ix = NULL;
    CHECK(lsmidx_open(path, 100, 0, &ix, &e) == ERR_OK);
    if (ix != NULL) {
        CHECK(lsmidx_flushed(ix) == flushed);
        for (int64_t i = flushed + 1; i <= N; i++) {
            lsmidx_add(ix, key(i), i);
        }
        lsmidx_commit(ix, N);
        CHECK(lsmidx_reader_open(ix, &r, &e) == ERR_OK);
        all = true;
        for (int64_t i = 1; i <= N; i++) {
            all = all && lsmidx_find(ix, r, key(i), out, 8, &n, &e) == ERR_OK && n == 1 &&
                  out[0] == i;
        }
        CHECK(all);
        CHECK(lsmidx_reset(ix, &e) == ERR_OK);
        CHECK(lsmidx_flushed(ix) == 0);
        CHECK(lsmidx_find(ix, r, key(5), out, 8, &n, &e) == ERR_OK && n == 0);
        lsmidx_reader_close(r);
        lsmidx_close(ix);
    }
    test_ranges(dir, "ranges", LSMIDX_NO_BLOOM);
    test_ranges(dir, "ranges-bulk", LSMIDX_NO_BLOOM | LSMIDX_BULK);
    test_ranges(dir, "bloom-bulk", LSMIDX_BULK);
    test_flusher_blocked(dir);
    test_bulk_write_fails(dir);
    test_old_formats(dir);
    test_busy_bucket(dir);
    test_written_out(dir);
    char cmd[300];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    if (system(cmd) != 0) {
        fprintf(stderr, "could not remove %s\n", dir);
    }
    return check_done("test_index");
}
