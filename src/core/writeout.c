/*
 * writeout.c - see writeout.h.
 */
#include "core/writeout.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

int file_open_with_wal(const char *path, int *db_fd, int *wal_fd)
{
    char wal[4200];
    int n = snprintf(wal, sizeof(wal), "%s-wal", path);
    if (n < 0 || (size_t)n >= sizeof(wal)) {
        *db_fd = *wal_fd = -1;
        return ENAMETOOLONG;
    }
    *db_fd = open(path, O_RDWR | O_CLOEXEC);
    *wal_fd = open(wal, O_RDWR | O_CLOEXEC);
    if (*db_fd >= 0 && *wal_fd >= 0) {
        return 0;
    }
    int err = errno;
    if (*db_fd >= 0) {
        close(*db_fd);
    }
    if (*wal_fd >= 0) {
        close(*wal_fd);
    }
    *db_fd = *wal_fd = -1;
    return err;
}

int file_write_out(int fd, size_t step)
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

void file_write_start(int fd)
{
    (void)sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE);
}
