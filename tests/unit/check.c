#include "check.h"

int check_failures;
int check_count;

void check_at(int ok, const char *expr, const char *file, int line, const char *msg)
{
    check_count++;
    if (!ok) {
        check_failures++;
        fprintf(stderr, "FAIL %s:%d: %s%s%s\n", file, line, expr, msg ? " -- " : "", msg ? msg : "");
    }
}

int check_done(const char *suite)
{
    printf("%s: %d checks, %d failed\n", suite, check_count, check_failures);
    return check_failures == 0 ? 0 : 1;
}
