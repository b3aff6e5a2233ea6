/*
 * writeout.c - see writeout.h.
 */
#include "core/writeout.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

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
