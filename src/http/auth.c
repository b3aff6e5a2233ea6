/*
 * auth.c - see auth.h.
 */
#include "http/auth.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/xmalloc.h"

#define KEY_MAX 256

struct key {
    char k[KEY_MAX];
    size_t len;
    int scopes;
};

struct auth {
    struct key *keys;
    size_t n;
};

size_t auth_count(const struct auth *a)
{
    return a != NULL ? a->n : 0;
}

void auth_free(struct auth *a)
{
    if (a != NULL) {
        if (a->keys != NULL) {
            memset(a->keys, 0, a->n * sizeof(*a->keys));     /* no keys left in freed memory */
        }
        free(a->keys);
        free(a);
    }
}

static int parse_scopes(char *s, int *out)
{
    size_t n = strlen(s);
    if (n == 0 || s[0] == ',' || s[n - 1] == ',' || strstr(s, ",,") != NULL) {
        return -1;      /* an empty scope is a typo, not nothing */
    }
    int sc = 0;
    for (char *tok = strtok(s, ","); tok != NULL; tok = strtok(NULL, ",")) {
        if (strcmp(tok, "ingest") == 0) {
            sc |= SCOPE_INGEST;
        } else if (strcmp(tok, "read") == 0) {
            sc |= SCOPE_READ;
        } else if (strcmp(tok, "admin") == 0) {
            sc |= SCOPE_ADMIN;
        } else {
            return -1;
        }
    }
    *out = sc;
    return sc != 0 ? 0 : -1;
}

int auth_load(const char *path, struct auth **out, struct err *e)
{
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        return err_set(e, ERR_INVALID, "cannot read API key file %s", path);
    }
    struct auth *a = xcalloc(1, sizeof(*a));
    size_t cap = 0;
    char line[1024];
    int lineno = 0, rc = ERR_OK;
    while (rc == ERR_OK && fgets(line, sizeof(line), f) != NULL) {
        lineno++;
        char *hash = strchr(line, '#');
        if (hash != NULL) {
            *hash = '\0';
        }
        char key[KEY_MAX + 2], scopes[256];
        int got = sscanf(line, " %257s %255s", key, scopes);
        if (got <= 0) {
            continue;       /* blank or comment */
        }
        int sc = 0;
        size_t klen = strlen(key);
        if (got != 2 || klen < 16 || klen >= KEY_MAX || parse_scopes(scopes, &sc) != 0) {
            rc = err_set(e, ERR_INVALID,
                         "%s line %d: want \"KEY SCOPES\" with a key of 16 to 255 characters and "
                         "scopes among ingest,read,admin", path, lineno);
            break;
        }
        if (a->n == cap) {
            cap = cap ? cap * 2 : 8;
            a->keys = xrealloc(a->keys, cap * sizeof(*a->keys));
        }
        memset(&a->keys[a->n], 0, sizeof(a->keys[a->n]));
        memcpy(a->keys[a->n].k, key, klen);
        a->keys[a->n].len = klen;
        a->keys[a->n].scopes = sc;
        a->n++;
    }
    fclose(f);
    if (rc == ERR_OK && a->n == 0) {
        rc = err_set(e, ERR_INVALID, "API key file %s holds no key", path);
    }
    if (rc != ERR_OK) {
        auth_free(a);
        return rc;
    }
    *out = a;
    return ERR_OK;
}

/* 1 if equal, 0 if not, in time that depends only on KEY_MAX. */
static unsigned ct_equal(const struct key *k, const char *given, size_t glen)
{
    unsigned diff = (unsigned)(k->len ^ glen);
    for (size_t i = 0; i < KEY_MAX; i++) {
        unsigned char g = i < glen ? (unsigned char)given[i] : 0;
        diff |= (unsigned)((unsigned char)k->k[i] ^ g);
    }
    return ((diff - 1) >> 31) & 1;      /* diff == 0 -> 1 */
}

int auth_scopes(const struct auth *a, const char *authorization)
{
    if (a == NULL || authorization == NULL || strncmp(authorization, "Bearer ", 7) != 0) {
        return 0;
    }
    const char *given = authorization + 7;
    size_t glen = strlen(given);
    if (glen >= KEY_MAX) {
        return 0;
    }
    int scopes = 0;
    for (size_t i = 0; i < a->n; i++) {         /* every key, matched or not */
        unsigned m = ct_equal(&a->keys[i], given, glen);
        scopes |= a->keys[i].scopes & -(int)m;
    }
    return scopes;
}
