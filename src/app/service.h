/*
 * service.h - the commands of the rastro binary, wired from the layers.
 * This is the only place that knows every layer.
 */
#ifndef RASTRO_APP_SERVICE_H
#define RASTRO_APP_SERVICE_H

#include <stdint.h>

/* Roles of a serve process (--role). ROLE_ALL: the embedded single process. */
enum {
    ROLE_API = 1 << 0,
    ROLE_HANDLER = 1 << 1,
    ROLE_RELAY = 1 << 2,
    ROLE_QUERY = 1 << 3,
    ROLE_ALL = 0,
};

struct config {
    const char *listen;     /* serve */
    const char *data;       /* data folder */
    const char *store;      /* event store spec ("sqlite", "postgres://...") */
    int store_given;        /* --store or RASTRO_STORE was set */
    const char *bus;        /* NATS URL(s), or NULL: no bus */
    int roles;              /* ROLE_* bits; ROLE_ALL = embedded */
    const char *roles_text; /* as given, for logs and answers */
    int replicas;           /* JetStream stream replicas */
    const char *node;       /* query node name (its durable consumer); NULL = derived */
    unsigned threads;       /* HTTP threads, 0 = CPUs */
    int64_t ready_max_lag;  /* /health/ready: projections at most this many events behind */
    int64_t verify_every;   /* seconds between self-checks in serve; 0 = never */
    int64_t max_connections;
    int64_t idle_timeout;   /* seconds */
    int64_t max_header_kib; /* request line and headers; 0 = 16 */
    const char *api_key_file;   /* NULL = no keys */
    int insecure;           /* allow a non-loopback listen address without keys */
    /* events */
    int64_t from;
    int64_t limit;          /* -1 = all */
    const char *stream;
    const char *type;
};

int service_serve(const struct config *cfg);
int service_rebuild(const struct config *cfg);
int service_events(const struct config *cfg);
/* 0 consistent, 1 differences found (printed), 2 could not check. */
int service_verify(const struct config *cfg);
/* Applies the event store's schema: 0 done, 1 failed. */
int service_migrate(const struct config *cfg);

#endif
