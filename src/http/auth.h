/*
 * auth.h - API keys with scopes, for when rastro faces a network.
 *
 * The key file has one key a line: "KEY SCOPE[,SCOPE...]", scopes among
 * ingest (commands), read (queries), admin (metrics and anything
 * operational); '#' starts a comment. Keys are compared in constant time
 * (every key is compared in full, whatever matches), so timing tells an
 * attacker nothing about how much of a guess was right.
 */
#ifndef RASTRO_HTTP_AUTH_H
#define RASTRO_HTTP_AUTH_H

#include "core/err.h"

enum {
    SCOPE_INGEST = 1 << 0,
    SCOPE_READ = 1 << 1,
    SCOPE_ADMIN = 1 << 2,
};

struct auth;

/* ERR_INVALID with the line at fault in e for a malformed file. */
int auth_load(const char *path, struct auth **out, struct err *e) WARN_UNUSED;
void auth_free(struct auth *a);         /* NULL is a no-op */
size_t auth_count(const struct auth *a);

/* The scopes granted by an "Authorization: Bearer KEY" header value (0
 * when it is absent, malformed or no key matches). */
int auth_scopes(const struct auth *a, const char *authorization);

#endif
