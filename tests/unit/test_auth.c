/*
 * test_auth.c - the API key file and the scope lookup, table-driven.
 */
#include <stdlib.h>
#include <unistd.h>

#include "check.h"
#include "http/auth.h"

static const char *write_file(const char *text)
{
    static char path[64];
    snprintf(path, sizeof(path), "/tmp/rastro-auth-XXXXXX");
    int fd = mkstemp(path);
    if (fd < 0 || write(fd, text, strlen(text)) != (ssize_t)strlen(text)) {
        CHECK(!"cannot write key file");
    }
    close(fd);
    return path;
}

int main(void)
{
    struct err e;
    struct auth *a = NULL;
    const char *p = write_file("# keys\n"
                               "aaaaaaaaaaaaaaaa1 ingest\n"
                               "bbbbbbbbbbbbbbbb2 read   # a comment\n"
                               "\n"
                               "cccccccccccccccc3 admin,read\n");
    CHECK(auth_load(p, &a, &e) == ERR_OK);
    unlink(p);
    CHECK(auth_count(a) == 3);
    static const struct {
        const char *header;
        int scopes;
    } cases[] = {
        { "Bearer aaaaaaaaaaaaaaaa1", SCOPE_INGEST },
        { "Bearer bbbbbbbbbbbbbbbb2", SCOPE_READ },
        { "Bearer cccccccccccccccc3", SCOPE_ADMIN | SCOPE_READ },
        { "Bearer aaaaaaaaaaaaaaaa", 0 },       /* a prefix */
        { "Bearer aaaaaaaaaaaaaaaa12", 0 },     /* longer */
        { "Bearer aaaaaaaaaaaaaaaa2", 0 },
        { "bearer aaaaaaaaaaaaaaaa1", 0 },
        { "Basic aaaaaaaaaaaaaaaa1", 0 },
        { "Bearer ", 0 },
        { "", 0 },
        { NULL, 0 },
    };
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        CHECKF(auth_scopes(a, cases[i].header) == cases[i].scopes, "case %zu (%s)", i,
               cases[i].header ? cases[i].header : "NULL");
    }
    auth_free(a);

    static const char *const bad[] = {
        "short ingest\n",                           /* key under 16 characters */
        "aaaaaaaaaaaaaaaa1\n",                      /* no scopes */
        "aaaaaaaaaaaaaaaa1 write\n",                /* unknown scope */
        "aaaaaaaaaaaaaaaa1 ingest,\n",              /* empty scope */
        "# nothing but comments\n",                 /* no key */
    };
    for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
        a = NULL;
        p = write_file(bad[i]);
        CHECKF(auth_load(p, &a, &e) == ERR_INVALID && a == NULL, "bad file %zu", i);
        unlink(p);
    }
    CHECK(auth_load("/nonexistent/keys", &a, &e) == ERR_INVALID);
    return check_done("test_auth");
}
