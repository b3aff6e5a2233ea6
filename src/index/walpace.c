/*
 * walpace.c - see walpace.h.
 */
#include "index/walpace.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/log.h"

void walpace_init(struct walpace *w, const char *path, size_t step, const char *hand_back)
{
    w->db_fd = w->wal_fd = -1;
    w->step = step;
    w->path = path;
    w->hand_back = hand_back;
}

static void close_fds(struct walpace *w)
{
    if (w->db_fd >= 0) {
        close(w->db_fd);
    }
    if (w->wal_fd >= 0) {
        close(w->wal_fd);
    }
    w->db_fd = w->wal_fd = -1;
}

int walpace_open(struct walpace *w, sqlite3 *db, struct err *e)
{
    char wal[4200];
    int n = snprintf(wal, sizeof(wal), "%s-wal", w->path);
    if (n < 0 || (size_t)n >= sizeof(wal)) {
        return err_set(e, ERR_IO, "opening %s: path too long", w->path);
    }
    w->db_fd = open(w->path, O_RDWR | O_CLOEXEC);
    w->wal_fd = open(wal, O_RDWR | O_CLOEXEC);
    if (w->db_fd < 0 || w->wal_fd < 0) {
        int rc = err_set(e, ERR_IO, "opening %s and its WAL: %s", w->path, strerror(errno));
        close_fds(w);
        return rc;
    }
    (void)walpace_checkpoint(w, db);
    return ERR_OK;
}

void walpace_kick(struct walpace *w, bool wait_before)
{
    if (walpace_on(w)) {
        (void)sync_file_range(w->wal_fd, 0, 0,
                              (wait_before ? SYNC_FILE_RANGE_WAIT_BEFORE : 0) |
                                  SYNC_FILE_RANGE_WRITE);
    }
}

/* Writes fd's dirty pages out step bytes of the file at a time, then
 * fdatasync: 0 or an errno. */
static int write_out(int fd, size_t step)
{
    struct stat st;
    if (fstat(fd, &st) != 0) {
        return errno;
    }
    for (off_t off = 0; off < st.st_size; off += (off_t)step) {
        /* a failure here shows again in the fdatasync below */
        (void)sync_file_range(fd, off, (off_t)step,
                              SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE |
                                  SYNC_FILE_RANGE_WAIT_AFTER);
    }
    return fdatasync(fd) == 0 ? 0 : errno;
}

bool walpace_checkpoint(struct walpace *w, sqlite3 *db)
{
    if (!walpace_on(w)) {
        return false;
    }
    const char *what = "syncing the WAL";
    int err = fdatasync(w->wal_fd) == 0 ? 0 : errno;
    if (err == 0) {
        int rc = sqlite3_wal_checkpoint_v2(db, NULL, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
        what = "checkpoint";
        err = rc == SQLITE_OK || rc == SQLITE_BUSY ? 0 : EIO;
    }
    if (err == 0) {
        what = "writing the file out";
        err = write_out(w->db_fd, w->step);
    }
    if (err == 0) {
        return true;
    }
    log_warn("write-out failed; SQLite syncs this file itself from now on",
             "path=%s step=\"%s\" err=\"%s\"", w->path, what, strerror(err));
    sqlite3_exec(db, w->hand_back, NULL, NULL, NULL);
    close_fds(w);
    return false;
}

void walpace_close(struct walpace *w, sqlite3 *db)
{
    if (walpace_on(w)) {
        sqlite3_exec(db, "PRAGMA synchronous=NORMAL", NULL, NULL, NULL);
    }
    close_fds(w);
}
