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

void check_copy_file(const char *from, const char *to)
{
    FILE *in = fopen(from, "rb"), *out = fopen(to, "wb");
    char buf[65536];
    size_t n;
    while (in != NULL && out != NULL && (n = fread(buf, 1, sizeof(buf), in)) > 0) {
        CHECK(fwrite(buf, 1, n, out) == n);
    }
    CHECKF(in != NULL && out != NULL, "copy %s -> %s", from, to);
    if (in != NULL) {
        fclose(in);
    }
    if (out != NULL) {
        fclose(out);
    }
}
