/*
 * service.c - serve, rebuild and events: opens the layers in order, runs,
 * and shuts down in the reverse order so nothing acknowledged is lost:
 *
 *   stop accepting -> committer commits what is queued (and resumes those
 *   connections) -> projector catches up (and wakes waiters) -> HTTP
 *   daemon stops -> everything is closed.
 *
 * The data folder holds events.db (the store), readmodels.db (the read
 * models) and rastro.lock, an flock(2) that keeps a second server or a
 * rebuild out while one runs.
 */
#include "app/service.h"
#include "app/dist.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bus/bus.h"
#include "core/jsonw.h"
#include "core/log.h"
#include "core/xmalloc.h"
#include "core/timeutil.h"
#include "http/auth.h"
#include "http/server.h"
#include "proj/projector.h"
#include "read/readmodel.h"
#include "read/rmcache.h"
#include "store/committer.h"
#include "store/evstore.h"

#define COMMIT_BATCH_MAX 4096
/* statistics answers kept in memory (rmcache.h): ~30 MiB at most */
#define STATS_CACHE_ENTRIES 65536

static int path_in(const char *dir, const char *name, char *out, size_t max)
{
    int n = snprintf(out, max, "%s/%s", dir, name);
    return n > 0 && (size_t)n < max ? 0 : -1;
}

static int ensure_dir(const char *dir)
{
    if (mkdir(dir, 0755) != 0 && errno != EEXIST) {
        log_error("cannot create data folder", "path=%s err=\"%s\"", dir, strerror(errno));
        return -1;
    }
    return 0;
}

/* Takes the data folder's lock; returns its fd or -1 (and says why). */
static int lock_data(const char *dir, const char *what)
{
    char path[4096];
    if (path_in(dir, "rastro.lock", path, sizeof(path)) != 0) {
        return -1;
    }
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) {
        log_error("cannot open lock file", "path=%s err=\"%s\"", path, strerror(errno));
        return -1;
    }
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        char pid[32] = "";
        ssize_t n = pread(fd, pid, sizeof(pid) - 1, 0);
        pid[n > 0 ? n : 0] = '\0';
        pid[strcspn(pid, "\n")] = '\0';
        fprintf(stderr, "rastro: cannot %s: the data folder %s is in use by a running rastro"
                        " (pid %s); stop it first\n", what, dir, pid[0] ? pid : "?");
        close(fd);
        return -1;
    }
    char pid[32];
    int n = snprintf(pid, sizeof(pid), "%ld\n", (long)getpid());
    if (ftruncate(fd, 0) != 0 || pwrite(fd, pid, (size_t)n, 0) != n) {
        log_warn("cannot write pid to lock file", "path=%s", path);
    }
    return fd;
}

static int upgrade_read_models(const struct config *cfg, const char *rm_path);

/* The periodic self-check (defined at the end). */
struct selfcheck;
static struct selfcheck *selfcheck_start(const struct config *cfg);
static const struct verify_stats *selfcheck_stats(struct selfcheck *sc);
static void selfcheck_stop(struct selfcheck *sc);
static void selfcheck_free(struct selfcheck *sc);

static void on_commit(void *arg, int64_t head)
{
    bus_announce(arg, head);
}

static void submit_to_committer(void *arg, struct commit_req *r, bool ts_defaulted)
{
    (void)ts_defaulted;     /* the store has the first event to compare with */
    committer_submit(arg, r);
}

static void submit_list_to_committer(void *arg, struct commit_req *head)
{
    committer_submit_list(arg, head);
}

/* Is the listen address loopback only (127.0.0.0/8, ::1, localhost)? */
static bool listen_is_loopback(const char *listen)
{
    return strncmp(listen, "127.", 4) == 0 || strncmp(listen, "[::1]:", 6) == 0 ||
           strncmp(listen, "localhost:", 10) == 0;
}

int service_serve(const struct config *cfg)
{
    struct auth *auth = NULL;
    if (cfg->api_key_file != NULL && cfg->api_key_file[0] != '\0') {
        struct err ae;
        err_clear(&ae);
        if (auth_load(cfg->api_key_file, &auth, &ae) != ERR_OK) {
            fprintf(stderr, "rastro: %s\n", ae.msg);
            return 1;
        }
    } else if (!listen_is_loopback(cfg->listen) && !cfg->insecure) {
        fprintf(stderr,
                "rastro: refusing to serve on %s with no API keys: anyone who can reach it could "
                "write and read tracking data. Give --api-key-file FILE (lines \"KEY "
                "ingest,read,admin\"), listen on 127.0.0.1, or pass --insecure if something in "
                "front of rastro authenticates.\n", cfg->listen);
        return 1;
    }
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    /* every thread started from here on inherits the mask: signals come to sigwait */
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    if (ensure_dir(cfg->data) != 0) {
        auth_free(auth);
        return 1;
    }
    /* every connection is a descriptor: take what the hard limit allows */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0) {
            log_warn("cannot raise the open-files limit", NULL);
        }
    }
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY &&
        (rlim_t)cfg->max_connections + 64 > rl.rlim_cur) {
        log_warn("open-files limit below --max-connections; connections past it are refused",
                 "limit=%llu max_connections=%lld", (unsigned long long)rl.rlim_cur,
                 (long long)cfg->max_connections);
    }
    int lock = lock_data(cfg->data, "serve");
    if (lock < 0) {
        auth_free(auth);
        return 1;
    }
    int status = 1;
    struct err e;
    err_clear(&e);
    struct evstore *store = NULL;
    struct committer *committer = NULL;
    struct bus *bus = NULL;
    struct projector *proj = NULL;
    struct http_server *http = NULL;
    struct selfcheck *selfcheck = NULL;
    struct dist dist = { 0 };
    struct rmcache *cache = NULL;
    char rm_path[4096];
    path_in(cfg->data, "readmodels.db", rm_path, sizeof(rm_path));
    int roles = cfg->roles;
    bool embedded = roles == ROLE_ALL;
    int64_t head = 0;

    if (!embedded && dist_open_bus(cfg, &dist, &e) != ERR_OK) {
        log_error("cannot use the message bus", "err=\"%s\"", e.msg);
        goto out;
    }
    /* a store and a committer: the embedded process, or an api given --store */
    if (embedded || ((roles & ROLE_API) && cfg->store_given)) {
        int64_t t0 = time_mono_us();
        if (evstore_open(cfg->store, cfg->data, 0, &store, &e) != ERR_OK) {
            log_error("cannot open event store", "err=\"%s\"", e.msg);
            goto out;
        }
        if (evstore_head(store, &head, &e) != ERR_OK) {
            log_error("cannot read event store head", "err=\"%s\"", e.msg);
            evstore_close(store);
            goto out;
        }
        /* the backend's name, not the spec: a URL may hold a password */
        log_info("event store open", "store=%s events=%lld open_ms=%lld", store->ops->name,
                 (long long)head, (long long)((time_mono_us() - t0) / 1000));
        committer = committer_new(store, COMMIT_BATCH_MAX);
    }
    if (embedded || (roles & ROLE_QUERY)) {
        cache = rmcache_new(STATS_CACHE_ENTRIES);
    }
    if (embedded && upgrade_read_models(cfg, rm_path) != ERR_OK) {
        goto out;
    }
    if (embedded) {
        bus = bus_local_new(head);
        committer_set_listener(committer, on_commit, bus);
        if (projector_new(cfg->store, cfg->data, rm_path, bus, 0, &proj, &e) != ERR_OK) {
            log_error("cannot start projections", "err=\"%s\"", e.msg);
            goto out;
        }
        projector_set_cache(proj, cache);
        if (projector_start(proj, &e) != ERR_OK) {
            log_error("cannot start projections", "err=\"%s\"", e.msg);
            goto out;
        }
    } else if (dist_start_roles(cfg, &dist, rm_path, cache, &proj, &e) != ERR_OK) {
        log_error("cannot start the node's roles", "err=\"%s\"", e.msg);
        goto out;
    }
    struct http_deps deps = {
        .committer = committer, .projector = proj, .rm_path = rm_path, .threads = cfg->threads,
        .ready_max_lag = cfg->ready_max_lag,
        .max_connections = (unsigned)cfg->max_connections,
        .idle_timeout_s = (unsigned)cfg->idle_timeout,
        .max_header_kib = (unsigned)cfg->max_header_kib,
        .auth = auth,
        .roles = cfg->roles_text,
        .cache = cache,
    };
    if (committer != NULL && (embedded || (roles & ROLE_API))) {
        deps.submit = submit_to_committer;
        deps.submit_list = submit_list_to_committer;
        deps.submit_arg = committer;
    }
    if (!embedded) {
        dist_http_deps(&dist, &deps);
    }
    if (embedded || ((roles & ROLE_QUERY) && cfg->store_given)) {
        selfcheck = selfcheck_start(cfg);
        deps.verify = selfcheck_stats(selfcheck);
    }
    if (http_start(cfg->listen, &deps, &http, &e) != ERR_OK) {
        log_error("cannot start HTTP server", "err=\"%s\"", e.msg);
        goto out;
    }
    log_info("listening", "addr=%s data=%s roles=%s position=%lld projected=%lld api_keys=%zu",
             cfg->listen, cfg->data, cfg->roles_text, (long long)head,
             (long long)(proj != NULL ? projector_position(proj) : 0), auth_count(auth));

    int sig = 0;
    sigwait(&sigs, &sig);
    log_info("stopping", "signal=%s", sig == SIGTERM ? "TERM" : "INT");
    status = 0;
out:
    http_drain(http);
    selfcheck_stop(selfcheck);
    if (committer != NULL) {
        committer_stop(committer);
    }
    if (proj != NULL) {
        projector_stop(proj);
    }
    for (int i = 0; http != NULL && http_suspended(http) > 0 && i < 500; i++) {
        usleep(10000);      /* resumed connections are answering */
    }
    http_stop(http);
    dist_stop_roles(&dist);     /* handler, relay: finish their batch (after HTTP: /metrics reads them) */
    selfcheck_free(selfcheck);
    if (proj != NULL && status == 0 && committer != NULL) {
        log_info("stopped", "position=%lld projected=%lld", (long long)committer_head(committer),
                 (long long)projector_position(proj));
    } else if (proj != NULL && status == 0) {
        log_info("stopped", "projected=%lld", (long long)projector_position(proj));
    } else if (status == 0) {
        log_info("stopped", NULL);
    }
    projector_free(proj);
    rmcache_free(cache);        /* after the projector and HTTP, its two users */
    committer_free(committer);
    dist_close(&dist);          /* the bus last: publishes in flight are answered */
    bus_close(bus);
    close(lock);
    auth_free(auth);
    return status;
}

/* Removes a database's -wal and -shm companions. */
static void remove_companions(const char *path)
{
    char p[4500];
    snprintf(p, sizeof(p), "%s-wal", path);
    unlink(p);
    snprintf(p, sizeof(p), "%s-shm", path);
    unlink(p);
}

/* Removes path and its -wal and -shm companions. */
static void remove_db(const char *path)
{
    unlink(path);
    remove_companions(path);
}

static int fsync_path(const char *path, int flags)
{
    int fd = open(path, flags | O_CLOEXEC);
    if (fd < 0) {
        return -1;
    }
    int rc = fsync(fd);
    close(fd);
    return rc;
}

/* Rebuilds the read models into a new file and swaps it in; the caller
 * holds the data folder's lock. 0 on success; *ps and *secs say how it went. */
static int rebuild_locked(const struct config *cfg, struct projector_stats *ps, double *secs)
{
    char rm_path[4096], tmp[4096];
    if (path_in(cfg->data, "readmodels.db", rm_path, sizeof(rm_path)) != 0 ||
        path_in(cfg->data, "readmodels.db.rebuild", tmp, sizeof(tmp)) != 0) {
        return 1;
    }
    int status = 1;
    struct err e;
    err_clear(&e);
    struct projector *p = NULL;
    remove_db(tmp);
    int64_t t0 = time_mono_us();
    if (projector_new(cfg->store, cfg->data, tmp, NULL, PROJ_BULK, &p, &e) != ERR_OK ||
        projector_run_to_head(p, &e) != ERR_OK) {
        fprintf(stderr, "rastro: rebuild failed: %s\n", e.msg);
        goto out;
    }
    projector_get_stats(p, ps);
    projector_free(p);
    p = NULL;

    /* fold the WAL into the file so the new read models are one file */
    sqlite3 *db = NULL;
    if (sqlite3_open(tmp, &db) != SQLITE_OK ||
        sqlite3_exec(db, "PRAGMA journal_mode=DELETE", NULL, NULL, NULL) != SQLITE_OK) {
        fprintf(stderr, "rastro: rebuild failed: %s\n", db ? sqlite3_errmsg(db) : "open");
        sqlite3_close(db);
        goto out;
    }
    sqlite3_close(db);
    /* the old WAL must go before the swap: it belongs to the old file */
    remove_companions(rm_path);
    if (fsync_path(tmp, O_RDONLY) != 0 || rename(tmp, rm_path) != 0 ||
        fsync_path(cfg->data, O_RDONLY | O_DIRECTORY) != 0) {
        fprintf(stderr, "rastro: rebuild failed swapping in %s: %s\n", rm_path, strerror(errno));
        goto out;
    }
    /* the replaced read models' index files (no server runs: the lock) */
    if (rm_remove_stale_indexes(rm_path, &e) != ERR_OK) {
        fprintf(stderr, "rastro: rebuilt, but removing old index files failed: %s\n", e.msg);
        goto out;
    }
    *secs = (double)(time_mono_us() - t0) / 1e6;
    status = 0;
out:
    projector_free(p);
    if (status != 0) {
        remove_db(tmp);
    }
    return status;
}

int service_rebuild(const struct config *cfg)
{
    char events[4096];
    if (path_in(cfg->data, "events.db", events, sizeof(events)) != 0) {
        return 1;
    }
    struct stat st;
    if ((cfg->store == NULL || strcmp(cfg->store, "sqlite") == 0) && stat(events, &st) != 0) {
        fprintf(stderr, "rastro: no event store in %s (nothing to rebuild from)\n", cfg->data);
        return 1;
    }
    int lock = lock_data(cfg->data, "rebuild");
    if (lock < 0) {
        return 1;
    }
    struct projector_stats ps = { 0 };
    double secs = 0;
    int status = rebuild_locked(cfg, &ps, &secs);
    close(lock);
    if (status == 0) {
        struct rusage ru;
        long peak_kib = getrusage(RUSAGE_SELF, &ru) == 0 ? ru.ru_maxrss : 0;
        printf("rebuilt read models from %lld events (%lld applied, %lld skipped, %lld invalid)"
               " in %.2f s: %.0f events/s, peak memory %ld MiB\n",
               (long long)ps.position, (long long)ps.applied, (long long)ps.skipped,
               (long long)ps.invalid, secs, secs > 0 ? (double)ps.position / secs : 0.0,
               peak_kib / 1024);
    }
    return status;
}

/* Read models written by an older rastro are derived data: serve rebuilds
 * them from the log before it starts (one line in the log says so), rather
 * than refuse to start until someone runs `rastro rebuild`. Newer ones are
 * left alone: the open that follows refuses them, naming both versions. */
static int upgrade_read_models(const struct config *cfg, const char *rm_path)
{
    int ver = 0;
    struct err e;
    err_clear(&e);
    if (rm_schema_version(rm_path, &ver, &e) != ERR_OK) {
        log_error("cannot read the read models' schema version", "err=\"%s\"", e.msg);
        return ERR_IO;
    }
    if (ver == 0 || ver >= RM_SCHEMA_VERSION) {
        return ERR_OK;
    }
    log_warn("read models are from an older rastro; rebuilding them from the event log",
             "schema_version=%d this_build=%d", ver, RM_SCHEMA_VERSION);
    struct projector_stats ps = { 0 };
    double secs = 0;
    if (rebuild_locked(cfg, &ps, &secs) != 0) {
        return ERR_IO;
    }
    log_info("read models rebuilt", "events=%lld seconds=%.2f", (long long)ps.position, secs);
    return ERR_OK;
}

struct events_out {
    const struct config *cfg;
    int64_t printed;
    int64_t last;
    struct buf line;
};

static int print_event(const struct event_rec *ev, void *arg)
{
    struct events_out *o = arg;
    o->last = ev->position;
    if (o->cfg->stream != NULL && strcmp(ev->stream_id, o->cfg->stream) != 0) {
        return 0;
    }
    if (o->cfg->type != NULL && strcmp(ev->type, o->cfg->type) != 0) {
        return 0;
    }
    char id[UUID_STR_LEN + 1], ts[TS_STR_LEN + 1];
    uuid_format(&ev->event_id, id);
    time_format_iso8601(ev->recorded_at_us, ts);
    struct jsonw w;
    buf_reset(&o->line);
    jsonw_init(&w, &o->line);
    jsonw_obj_open(&w);
    jsonw_kint(&w, "position", ev->position);
    jsonw_kstr(&w, "event_id", id);
    jsonw_kstr(&w, "stream_id", ev->stream_id);
    jsonw_kint(&w, "stream_version", ev->stream_version);
    jsonw_kstr(&w, "type", ev->type);
    jsonw_kint(&w, "schema_version", ev->schema_version);
    jsonw_kstr(&w, "recorded_at", ts);
    jsonw_key(&w, "data");
    jsonw_raw(&w, ev->data);
    jsonw_key(&w, "metadata");
    jsonw_raw(&w, ev->metadata);
    jsonw_obj_close(&w);
    if (jsonw_status(&w) != ERR_OK) {
        return -1;
    }
    fwrite(o->line.p, 1, o->line.len, stdout);
    fputc('\n', stdout);
    o->printed++;
    return o->cfg->limit >= 0 && o->printed >= o->cfg->limit ? 1 : 0;
}

int service_events(const struct config *cfg)
{
    char events[4096];
    struct stat st;
    if (path_in(cfg->data, "events.db", events, sizeof(events)) != 0) {
        return 1;
    }
    if ((cfg->store == NULL || strcmp(cfg->store, "sqlite") == 0) && stat(events, &st) != 0) {
        fprintf(stderr, "rastro: no event store in %s\n", cfg->data);
        return 1;
    }
    struct evstore *s = NULL;
    struct err e;
    err_clear(&e);
    if (evstore_open(cfg->store, cfg->data, EVSTORE_READONLY, &s, &e) != ERR_OK) {
        fprintf(stderr, "rastro: %s\n", e.msg);
        return 1;
    }
    struct events_out o = { .cfg = cfg, .printed = 0, .last = cfg->from - 1 };
    buf_init(&o.line, 0);
    int rc = 0;
    for (;;) {
        int64_t before = o.last;
        rc = evstore_read(s, o.last + 1, 1000, print_event, &o, &e);
        if (rc != 0 || o.last == before) {
            break;
        }
    }
    buf_fini(&o.line);
    evstore_close(s);
    if (fflush(stdout) != 0 || rc < 0) {
        fprintf(stderr, "rastro: %s\n", rc < 0 ? e.msg : "write error");
        return 1;
    }
    return 0;
}

struct verify_ctx {
    const struct config *cfg;
    char tmp[4096];
};

/* Rebuilds read models from the log up to upto into a scratch file. */
static int verify_build(int64_t upto, char *fresh, size_t max, void *arg, struct err *e)
{
    struct verify_ctx *v = arg;
    struct projector *p = NULL;
    remove_db(v->tmp);
    int rc = projector_new(v->cfg->store, v->cfg->data, v->tmp, NULL, PROJ_BULK, &p, e);
    if (rc == ERR_OK) {
        rc = projector_run_to(p, upto, e);
    }
    projector_free(p);
    snprintf(fresh, max, "%s", v->tmp);
    return rc;
}

/* Removes the scratch read models and the index files of their generation. */
static void remove_scratch(const char *dir, const char *path)
{
    char gen[64] = "";
    struct err e;
    if (rm_file_generation(path, gen, sizeof(gen), &e) != ERR_OK) {
        gen[0] = '\0';     /* no file, or not read models: nothing of theirs to remove */
    }
    remove_db(path);
    if (gen[0] != '\0') {
        static const char *const ext[] = { "ids", "lists" };
        for (size_t i = 0; i < 2; i++) {
            char p[4400];
            snprintf(p, sizeof(p), "%s/rm-%s.%s", dir, gen, ext[i]);
            remove_db(p);
        }
    }
}

/* One check; differences are written to out. */
static int verify_once(const struct config *cfg, FILE *out, int64_t *diffs, struct err *e)
{
    char rm_path[4096];
    struct stat st;
    if (path_in(cfg->data, "readmodels.db", rm_path, sizeof(rm_path)) != 0) {
        return err_set(e, ERR_INVALID, "data folder path too long");
    }
    if (stat(rm_path, &st) != 0) {
        return err_set(e, ERR_NOTFOUND, "no read models in %s (nothing to verify)", cfg->data);
    }
    struct verify_ctx v = { .cfg = cfg };
    snprintf(v.tmp, sizeof(v.tmp), "%s/readmodels.db.verify-%ld", cfg->data, (long)getpid());
    int rc = rm_verify(rm_path, verify_build, &v, out, diffs, e);
    remove_scratch(cfg->data, v.tmp);
    return rc;
}

int service_verify(const struct config *cfg)
{
    struct err e;
    err_clear(&e);
    int64_t diffs = 0;
    int64_t t0 = time_mono_us();
    if (verify_once(cfg, stdout, &diffs, &e) != ERR_OK) {
        fprintf(stderr, "rastro: verify failed: %s\n", e.msg);
        return 2;
    }
    printf("%s: %lld difference%s (%.1f s)\n", diffs == 0 ? "consistent" : "INCONSISTENT",
           (long long)diffs, diffs == 1 ? "" : "s", (double)(time_mono_us() - t0) / 1e6);
    return diffs == 0 ? 0 : 1;
}

/* ---- the periodic self-check inside `serve` ---- */

struct selfcheck {
    const struct config *cfg;
    struct verify_stats stats;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool stop;
};

static void selfcheck_once(struct selfcheck *sc)
{
    char *text = NULL;
    size_t len = 0;
    FILE *out = open_memstream(&text, &len);
    if (out == NULL) {
        return;
    }
    struct err e;
    err_clear(&e);
    int64_t diffs = 0;
    int64_t t0 = time_mono_us();
    int rc = verify_once(sc->cfg, out, &diffs, &e);
    fclose(out);
    atomic_store(&sc->stats.last_duration_us, time_mono_us() - t0);
    atomic_fetch_add(&sc->stats.runs, 1);
    if (rc != ERR_OK) {
        atomic_fetch_add(&sc->stats.failures, 1);
        log_error("self-check could not run", "err=\"%s\"", e.msg);
    } else {
        atomic_store(&sc->stats.differences, diffs);
        atomic_store(&sc->stats.last_run_unix, time_now_us() / 1000000);
        if (diffs == 0) {
            log_info("self-check: read models consistent with the log", "duration_ms=%lld",
                     (long long)((time_mono_us() - t0) / 1000));
        } else {
            log_error("self-check: read models differ from the log", "differences=%lld",
                      (long long)diffs);
            int lines = 0;
            for (char *line = strtok(text, "\n"); line != NULL && lines < 60;
                 line = strtok(NULL, "\n")) {
                if (strstr(line, ": ok") == NULL && strncmp(line, "verifying", 9) != 0) {
                    log_error("self-check difference", "detail=\"%.400s\"", line);
                    lines++;
                }
            }
        }
    }
    free(text);
}

static void *selfcheck_run(void *arg)
{
    struct selfcheck *sc = arg;
    pthread_setname_np(pthread_self(), "rastro-verify");
    if (setpriority(PRIO_PROCESS, (id_t)gettid(), 10) != 0) {
        log_debug("cannot lower self-check priority", NULL);
    }
    pthread_mutex_lock(&sc->mu);
    while (!sc->stop) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += sc->cfg->verify_every;
        while (!sc->stop && pthread_cond_timedwait(&sc->cv, &sc->mu, &ts) == 0) {
        }
        if (sc->stop) {
            break;
        }
        pthread_mutex_unlock(&sc->mu);
        selfcheck_once(sc);
        pthread_mutex_lock(&sc->mu);
    }
    pthread_mutex_unlock(&sc->mu);
    return NULL;
}

static struct selfcheck *selfcheck_start(const struct config *cfg)
{
    if (cfg->verify_every <= 0) {
        return NULL;
    }
    struct selfcheck *sc = xcalloc(1, sizeof(*sc));
    sc->cfg = cfg;
    pthread_mutex_init(&sc->mu, NULL);
    pthread_cond_init(&sc->cv, NULL);
    if (pthread_create(&sc->thread, NULL, selfcheck_run, sc) != 0) {
        log_error("cannot start the self-check thread", NULL);
        free(sc);
        return NULL;
    }
    return sc;
}

static const struct verify_stats *selfcheck_stats(struct selfcheck *sc)
{
    return sc != NULL ? &sc->stats : NULL;
}

static void selfcheck_stop(struct selfcheck *sc)
{
    if (sc == NULL) {
        return;
    }
    pthread_mutex_lock(&sc->mu);
    sc->stop = true;
    pthread_cond_signal(&sc->cv);
    pthread_mutex_unlock(&sc->mu);
    pthread_join(sc->thread, NULL);     /* a check under way runs to its end */
}

/* After the HTTP server stopped: /metrics reads the stats until then. */
static void selfcheck_free(struct selfcheck *sc)
{
    if (sc == NULL) {
        return;
    }
    pthread_mutex_destroy(&sc->mu);
    pthread_cond_destroy(&sc->cv);
    free(sc);
}

int service_migrate(const struct config *cfg)
{
    if (!evstore_is_postgres(cfg->store) && ensure_dir(cfg->data) != 0) {
        return 1;
    }
    struct err e;
    err_clear(&e);
    int from = 0, to = 0;
    if (evstore_migrate(cfg->store, cfg->data, &from, &to, &e) != ERR_OK) {
        fprintf(stderr, "rastro: migrate: %s\n", e.msg);
        return 1;
    }
    if (from == to) {
        printf("event store schema is at version %d; nothing to do\n", to);
    } else {
        printf("event store schema migrated from version %d to %d\n", from, to);
    }
    return 0;
}
