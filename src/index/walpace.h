/*
 * walpace.h - a SQLite file in WAL mode whose one writer checkpoints it at
 * a pace (the live index files and the read models).
 *
 * SQLite's checkpoint hands the disk the WAL and then the copied pages each
 * in one fsync: megabytes that queue ahead of the event store's next small
 * WAL write and its flush, which then waited 3-22 ms (the twelfth session;
 * BENCHMARKS.md). Here the WAL is started on its way to the disk as it is
 * written (walpace_kick), and a checkpoint syncs the WAL (a flush by then),
 * copies its frames with SQLite's syncs off (the connection runs
 * synchronous=OFF), writes the file out a range at a time, each range once
 * the one before is on the disk, then syncs it. The connection must be the
 * file's only writer: then nothing restarts the WAL before the copy is on
 * the disk. A failure hands the file back to SQLite's own syncs, since
 * after an error nobody can tell what reached the disk.
 */
#ifndef RASTRO_INDEX_WALPACE_H
#define RASTRO_INDEX_WALPACE_H

#include <sqlite3.h>
#include <stdbool.h>
#include <stddef.h>

#include "core/err.h"

struct walpace {
    int db_fd, wal_fd;          /* our own descriptors; -1: SQLite syncs the file */
    size_t step;                /* bytes of the file written out at a time */
    const char *path;           /* borrowed, for errors and the log */
    const char *hand_back;      /* SQL that gives the syncs back to SQLite */
};

/* Off until walpace_open(); hand_back runs on the connection after a
 * failure (at least "PRAGMA synchronous=NORMAL"). */
void walpace_init(struct walpace *w, const char *path, size_t step, const char *hand_back);
/* Opens the file's and its WAL's descriptors (the WAL must exist) and
 * checkpoints what the WAL holds from before, the same way. */
int walpace_open(struct walpace *w, sqlite3 *db, struct err *e);
static inline bool walpace_on(const struct walpace *w)
{
    return w->wal_fd >= 0;
}
/* Starts the WAL's dirty pages on their way to the disk; with
 * wait_before, once the last such write is done. */
void walpace_kick(struct walpace *w, bool wait_before);
/* The paced checkpoint; false if it failed (logged, syncs handed back). */
bool walpace_checkpoint(struct walpace *w, sqlite3 *db);
/* Before the connection closes: SQLite's syncs back on for its final
 * checkpoint (which deletes the WAL), and the descriptors closed. */
void walpace_close(struct walpace *w, sqlite3 *db);

#endif
