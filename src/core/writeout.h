/*
 * writeout.h - writing a file's dirty pages out at a pace.
 *
 * An fsync hands the disk everything dirty at once: megabytes of a
 * checkpoint queue ahead of the event store's next small WAL write and its
 * flush, which then wait tens of milliseconds (the twelfth session's
 * measurement; BENCHMARKS.md). file_write_out() writes the same pages a
 * range at a time, each range once the one before is on the disk, so a
 * commit waits behind at most one range.
 */
#ifndef RASTRO_CORE_WRITEOUT_H
#define RASTRO_CORE_WRITEOUT_H

#include <stddef.h>

/* Opens a SQLite file in WAL mode and its WAL (path + "-wal") for
 * file_write_out(): 0 with both set, or the errno with both -1. */
int file_open_with_wal(const char *path, int *db_fd, int *wal_fd);

/* Writes fd's dirty pages out step bytes of the file at a time, then
 * fdatasync(fd). 0, or the errno of what failed. */
int file_write_out(int fd, size_t step);

/* Starts writing fd's dirty pages out without waiting for them. */
void file_write_start(int fd);

#endif
