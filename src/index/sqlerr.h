/*
 * sqlerr.h - SQLite's error message with the operating system's reason
 * when there is one: "disk I/O error" alone does not say that the disk
 * went read-only or filled up; "disk I/O error [Read-only file system]"
 * does. For every layer that keeps SQLite files (index, store, read).
 */
#ifndef RASTRO_INDEX_SQLERR_H
#define RASTRO_INDEX_SQLERR_H

#include <errno.h>
#include <stdbool.h>
#include <sqlite3.h>
#include <stdio.h>
#include <string.h>
#include <fcntl.h>
#include <unistd.h>

/* The text is in a per-thread buffer, valid until the next call. */
static inline const char *sql_err(sqlite3 *db)
{
    static __thread char buf[320];
    int os = db != NULL ? sqlite3_system_errno(db) : 0;
    const char *msg = db != NULL ? sqlite3_errmsg(db) : "no database";
    int code = db != NULL ? sqlite3_errcode(db) : SQLITE_OK;
    bool fs = code == SQLITE_IOERR || code == SQLITE_FULL || code == SQLITE_CANTOPEN ||
              code == SQLITE_READONLY;
    /* SQLite does not keep errno for every failed call (a COMMIT's write
     * or fsync): ask the file system itself, by writing a byte beside the
     * file (a disk the kernel made read-only after an error may still say
     * "rw" in statvfs) */
    const char *file = fs && db != NULL ? sqlite3_db_filename(db, "main") : NULL;
    if (fs && os == 0 && file != NULL && file[0] != '\0') {
        char probe[4200];
        snprintf(probe, sizeof(probe), "%s-probe", file);
        int fd = open(probe, O_CREAT | O_WRONLY | O_TRUNC | O_CLOEXEC, 0600);
        if (fd < 0) {
            os = errno;
        } else {
            if (write(fd, "x", 1) != 1 || fsync(fd) != 0) {
                os = errno;
            }
            close(fd);
            unlink(probe);
        }
    }
    if (fs && os != 0) {
        snprintf(buf, sizeof(buf), "%s [%s]", msg, strerror(os));
    } else {
        snprintf(buf, sizeof(buf), "%s", msg);
    }
    return buf;
}

#endif
