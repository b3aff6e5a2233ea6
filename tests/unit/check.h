/*
 * check.h - the smallest test harness that can fail: CHECK counts and
 * reports failures with file and line; check_done() prints the tally and
 * gives main its exit code.
 */
#ifndef RASTRO_TEST_CHECK_H
#define RASTRO_TEST_CHECK_H

#include <stdio.h>
#include <string.h>

extern int check_failures;
extern int check_count;

#define CHECK(cond) check_at(!!(cond), #cond, __FILE__, __LINE__, NULL)
#define CHECKF(cond, ...) \
    do { \
        char check_msg_[512]; \
        snprintf(check_msg_, sizeof(check_msg_), __VA_ARGS__); \
        check_at(!!(cond), #cond, __FILE__, __LINE__, check_msg_); \
    } while (0)
#define CHECK_STR(a, b) \
    do { \
        const char *ca_ = (a), *cb_ = (b); \
        CHECKF(ca_ != NULL && cb_ != NULL && strcmp(ca_, cb_) == 0, "got \"%s\", want \"%s\"", \
               ca_ ? ca_ : "(null)", cb_ ? cb_ : "(null)"); \
    } while (0)

void check_at(int ok, const char *expr, const char *file, int line, const char *msg);
int check_done(const char *suite);
/* Copies a file byte for byte (a failed check if it cannot). */
void check_copy_file(const char *from, const char *to);

#endif
