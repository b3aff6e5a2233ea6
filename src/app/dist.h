/*
 * dist.h - serve's roles on the message bus (api, handler, relay, query),
 * and `rastro dlq`. The embedded single process (no --bus) never comes
 * here. See README "Scaling out".
 */
#ifndef RASTRO_APP_DIST_H
#define RASTRO_APP_DIST_H

#include "app/service.h"
#include "core/err.h"
#include "http/server.h"

struct dist {
    const struct config *cfg;
    struct natsbus *nb;
    struct publisher *pub;
    struct handler *handler;
    struct relay *relay;
    struct bus *relay_bus;      /* publishes heads */
    struct bus *query_bus;      /* hears heads */
};

int dist_open_bus(const struct config *cfg, struct dist *d, struct err *e) WARN_UNUSED;
/* Starts the roles; for query, *proj gets the projector (started). */
int dist_start_roles(const struct config *cfg, struct dist *d, const char *rm_path,
                     struct rmcache *cache, struct projector **proj, struct err *e) WARN_UNUSED;
/* What the HTTP layer needs from the roles. */
void dist_http_deps(struct dist *d, struct http_deps *deps);
/* Stops the handler and the relay (each finishes its batch). */
void dist_stop_roles(struct dist *d);
/* Closes the buses and the connection. */
void dist_close(struct dist *d);

/* Parses --role: "all" or a comma list of api, handler, relay, query. */
int dist_parse_roles(const char *s, int *roles);

/* rastro dlq list|replay */
int service_dlq(const struct config *cfg, const char *action, int64_t seq);

#endif
