/*
 * main.c - command line: rastro serve | rebuild | events | verify | migrate |
 * --help | --version.
 * Options come from flags first, then RASTRO_* environment variables, then
 * defaults.
 */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "app/dist.h"
#include "app/service.h"
#include "core/log.h"
#include "store/evstore.h"

static const char usage[] =
    "rastro " RASTRO_VERSION " - impression and conversion tracking (event sourcing + CQRS)\n"
    "\n"
    "Usage:\n"
    "  rastro serve   [--listen ADDR:PORT] [--data DIR] [--store SPEC] [--threads N]\n"
    "                 [--log-level L]\n"
    "                 [--ready-max-lag N] [--verify-every S] [--max-connections N]\n"
    "                 [--idle-timeout S] [--max-header-kib N] [--api-key-file FILE]\n"
    "                 [--insecure]\n"
    "      Serve the HTTP API: commands (POST /tracking/impresiones, /tracking/conversiones)\n"
    "      and queries (GET /tracking/queries/...). Answers 202 only once the event is\n"
    "      durable on disk. SIGTERM/SIGINT: finish commits in flight, catch up, exit 0.\n"
    "  rastro rebuild [--data DIR]\n"
    "      Rebuild every read model from position 0 into a new file and swap it in\n"
    "      atomically. The server must be stopped. Prints how many events, how long,\n"
    "      events/s and the peak memory.\n"
    "  rastro events  [--data DIR] [--from POS] [--limit N] [--stream ID] [--type T]\n"
    "      Print the event log (the audit trail) as JSON lines, one event a line.\n"
    "  rastro verify  [--data DIR]\n"
    "      Recompute every read model from the log (up to the stored checkpoint) and\n"
    "      compare row by row; prints each difference; exit 1 if any. The server may run.\n"
    "  rastro serve --bus nats://HOST:PORT --role ROLES [--store SPEC] [--replicas N]\n"
    "                 [--node NAME] [other serve options]\n"
    "      One part of the distributed topology (README \"Scaling out\"). ROLES, comma list:\n"
    "        api      command endpoints; with --store: 202 once durable in the store; without:\n"
    "                 published to JetStream (TRACKING_COMMANDS), 202 once JetStream has it\n"
    "        handler  takes commands from the bus, appends them to the store (--store)\n"
    "        relay    publishes the store's events to TRACKING_EVENTS, in position order\n"
    "        query    its own read models in --data, fed from TRACKING_EVENTS; serves queries\n"
    "                 (with --store it fills gaps from the store)\n"
    "  rastro dlq list|replay --bus URL [--seq N]\n"
    "      Show the commands that kept failing (TRACKING_DLQ) as JSON lines, or send them\n"
    "      back to the handlers (all, or --seq N) after a fix.\n"
    "  rastro migrate [--store SPEC] [--data DIR]\n"
    "      Create or upgrade the event store's schema (PostgreSQL needs this once before\n"
    "      serve; serve refuses a database without it, or with a newer one). Safe to repeat.\n"
    "  rastro --help | --version\n"
    "\n"
    "Probes: GET /health/live, GET /health/ready, GET /tracking/queries/estado,\n"
    "GET /metrics (Prometheus).\n"
    "\n"
    "Options:\n"
    "  --listen ADDR:PORT  where to listen (env RASTRO_LISTEN; default 127.0.0.1:8000)\n"
    "  --data DIR          data folder: events.db, readmodels.db (env RASTRO_DATA; default ./data)\n"
    "  --store SPEC        event store (env RASTRO_STORE; default sqlite): sqlite, the file\n"
    "                      DIR/events.db; or postgres://USER[:PASS]@HOST:PORT/DB, a\n"
    "                      central PostgreSQL store several processes append to (libpq URL;\n"
    "                      PGPASSWORD and ~/.pgpass work too)\n"
    "  --bus URL           NATS server(s), comma list (env RASTRO_BUS); needs --role\n"
    "  --role ROLES        all (default: the embedded process, no bus) or a comma list of\n"
    "                      api, handler, relay, query (env RASTRO_ROLE)\n"
    "  --replicas N        copies of each JetStream stream, for a NATS cluster (default 1;\n"
    "                      3 recommended in production)\n"
    "  --node NAME         query: this node's name, its durable consumer query-NAME\n"
    "                      (default: derived from the data folder)\n"
    "  --seq N             dlq: only the message with this DLQ sequence\n"
    "  --threads N         HTTP worker threads (default: one per CPU)\n"
    "  --api-key-file FILE API keys, one a line: \"KEY ingest,read,admin\" (env RASTRO_API_KEYS).\n"
    "                      Then every route but the health probes needs\n"
    "                      \"Authorization: Bearer KEY\" with the route's scope: ingest for\n"
    "                      commands, read for queries, admin for /metrics.\n"
    "  --insecure          serve on a non-loopback address without API keys (refused\n"
    "                      otherwise)\n"
    "  --max-connections N at most N open connections (default 10000)\n"
    "  --idle-timeout S    close a connection idle (or trickling) for S seconds (default 60)\n"
    "  --max-header-kib N  largest request line and headers, in KiB (4 to 1024; default 16);\n"
    "                      larger ones are answered 431 (a Cookie header counts about\n"
    "                      twice). Each connection holds a buffer this size, cleared after\n"
    "                      every request: 8 costs less CPU a request where clients allow\n"
    "  --verify-every S    serve: check the read models against the log every S seconds\n"
    "                      (as `rastro verify`, at low priority; 0 = never; default 86400)\n"
    "  --ready-max-lag N   /health/ready fails when projections are more than N events\n"
    "                      behind the store (default 10000)\n"
    "  --log-level L       debug, info, warn or error (env RASTRO_LOG_LEVEL; default info)\n"
    "  --from POS          events: first position to print (default 1)\n"
    "  --limit N           events: print at most N events\n"
    "  --stream ID         events: only this stream, e.g. impresion:7f3c...\n"
    "  --type T            events: only this type, e.g. ConversionRegistrada\n";

static const char *env_or(const char *name, const char *dflt)
{
    const char *v = getenv(name);
    return v != NULL && v[0] != '\0' ? v : dflt;
}

/* An integer option in [min, max]; says which option and what it wants. */
static int parse_i64(const char *s, const char *opt, long long min, long long max, int64_t *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (*s == '\0' || *end != '\0' || errno != 0 || v < min || v > max) {
        if (max == LLONG_MAX) {
            fprintf(stderr, "rastro: %s wants an integer >= %lld, got '%s'\n", opt, min, s);
        } else {
            fprintf(stderr, "rastro: %s wants an integer from %lld to %lld, got '%s'\n", opt,
                    min, max, s);
        }
        return -1;
    }
    *out = v;
    return 0;
}

int main(int argc, char **argv)
{
    /* Large blocks (memtables, sort arrays, accumulators: 1 MiB and up)
     * go back to the system when freed. glibc's default threshold climbs
     * to 32 MiB after the first such free, and the arenas then kept what
     * the rebuild's threads had freed: 35 MiB of its peak at 3M events. */
    mallopt(M_MMAP_THRESHOLD, 1 << 20);
    if (argc < 2) {
        fputs(usage, stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0 || strcmp(cmd, "help") == 0) {
        fputs(usage, stdout);
        return 0;
    }
    if (strcmp(cmd, "--version") == 0 || strcmp(cmd, "version") == 0) {
        printf("rastro %s\n", RASTRO_VERSION);
        return 0;
    }
    struct config cfg = {
        .listen = env_or("RASTRO_LISTEN", "127.0.0.1:8000"),
        .data = env_or("RASTRO_DATA", "./data"),
        .store = env_or("RASTRO_STORE", "sqlite"),
        .store_given = getenv("RASTRO_STORE") != NULL && getenv("RASTRO_STORE")[0] != '\0',
        .bus = getenv("RASTRO_BUS") != NULL && getenv("RASTRO_BUS")[0] != '\0'
                   ? getenv("RASTRO_BUS") : NULL,
        .roles_text = env_or("RASTRO_ROLE", "all"),
        .replicas = 1,
        .threads = 0,
        .ready_max_lag = 10000,
        .verify_every = 86400,
        .max_connections = 10000,
        .idle_timeout = 60,
        .max_header_kib = 16,
        .api_key_file = getenv("RASTRO_API_KEYS"),
        .from = 1,
        .limit = -1,
    };
    const char *level = env_or("RASTRO_LOG_LEVEL", "info");
    static const struct option opts[] = {
        { "listen", required_argument, NULL, 'l' },
        { "data", required_argument, NULL, 'd' },
        { "store", required_argument, NULL, 's' },
        { "threads", required_argument, NULL, 'j' },
        { "ready-max-lag", required_argument, NULL, 'R' },
        { "verify-every", required_argument, NULL, 'V' },
        { "max-connections", required_argument, NULL, 'C' },
        { "idle-timeout", required_argument, NULL, 'T' },
        { "max-header-kib", required_argument, NULL, 'H' },
        { "api-key-file", required_argument, NULL, 'K' },
        { "insecure", no_argument, NULL, 'I' },
        { "log-level", required_argument, NULL, 'L' },
        { "from", required_argument, NULL, 'f' },
        { "limit", required_argument, NULL, 'n' },
        { "stream", required_argument, NULL, 'S' },
        { "type", required_argument, NULL, 't' },
        { "bus", required_argument, NULL, 'B' },
        { "role", required_argument, NULL, 'O' },
        { "replicas", required_argument, NULL, 'P' },
        { "node", required_argument, NULL, 'N' },
        { "seq", required_argument, NULL, 'Q' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    /* rastro dlq ACTION [options] */
    const char *dlq_action = NULL;
    optind = 2;
    if (strcmp(cmd, "dlq") == 0) {
        if (argc < 3 || (strcmp(argv[2], "list") != 0 && strcmp(argv[2], "replay") != 0)) {
            fprintf(stderr, "rastro: dlq wants list or replay. Try 'rastro --help'.\n");
            return 2;
        }
        dlq_action = argv[2];
        optind = 3;
    }
    int64_t dlq_seq = 0;
    int c;
    int64_t v;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'l': cfg.listen = optarg; break;
        case 'd': cfg.data = optarg; break;
        case 's': cfg.store = optarg; cfg.store_given = 1; break;
        case 'B': cfg.bus = optarg; break;
        case 'O': cfg.roles_text = optarg; break;
        case 'N': cfg.node = optarg; break;
        case 'P':
            if (parse_i64(optarg, "--replicas", 1, 5, &v) != 0) {
                return 2;
            }
            cfg.replicas = (int)v;
            break;
        case 'Q':
            if (parse_i64(optarg, "--seq", 1, LLONG_MAX, &dlq_seq) != 0) {
                return 2;
            }
            break;
        case 'L': level = optarg; break;
        case 'S': cfg.stream = optarg; break;
        case 't': cfg.type = optarg; break;
        case 'j':
            if (parse_i64(optarg, "--threads", 1, 256, &v) != 0) {
                return 2;
            }
            cfg.threads = (unsigned)v;
            break;
        case 'K': cfg.api_key_file = optarg; break;
        case 'I': cfg.insecure = 1; break;
        case 'C':
            if (parse_i64(optarg, "--max-connections", 1, 1000000, &cfg.max_connections) != 0) {
                return 2;
            }
            break;
        case 'T':
            if (parse_i64(optarg, "--idle-timeout", 1, 86400, &cfg.idle_timeout) != 0) {
                return 2;
            }
            break;
        case 'H':
            if (parse_i64(optarg, "--max-header-kib", 4, 1024, &cfg.max_header_kib) != 0) {
                return 2;
            }
            break;
        case 'V':
            if (parse_i64(optarg, "--verify-every", 0, LLONG_MAX, &cfg.verify_every) != 0) {
                return 2;
            }
            break;
        case 'R':
            if (parse_i64(optarg, "--ready-max-lag", 0, LLONG_MAX, &cfg.ready_max_lag) != 0) {
                return 2;
            }
            break;
        case 'f':
            if (parse_i64(optarg, "--from", 1, LLONG_MAX, &cfg.from) != 0) {
                return 2;
            }
            break;
        case 'n':
            if (parse_i64(optarg, "--limit", 0, LLONG_MAX, &cfg.limit) != 0) {
                return 2;
            }
            break;
        case 'h':
            fputs(usage, stdout);
            return 0;
        default:
            fputs("Try 'rastro --help'.\n", stderr);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "rastro: unexpected argument '%s'. Try 'rastro --help'.\n", argv[optind]);
        return 2;
    }
    enum log_level lvl;
    if (!log_parse_level(level, &lvl)) {
        fprintf(stderr, "rastro: unknown log level '%s' (debug, info, warn, error)\n", level);
        return 2;
    }
    log_set_level(lvl);
    if (dist_parse_roles(cfg.roles_text, &cfg.roles) != 0) {
        fprintf(stderr, "rastro: --role wants all, or a comma list of api, handler, relay, query;"
                        " got '%s'\n", cfg.roles_text);
        return 2;
    }
    if (strcmp(cmd, "serve") == 0 && (cfg.roles != ROLE_ALL) != (cfg.bus != NULL)) {
        fprintf(stderr, cfg.bus == NULL
                            ? "rastro: --role %s needs --bus nats://HOST:PORT (or RASTRO_BUS)\n"
                            : "rastro: --bus needs --role (api, handler, relay, query; got %s)\n",
                cfg.roles_text);
        return 2;
    }
    evstore_global_init();
    if (strcmp(cmd, "serve") == 0) {
        return service_serve(&cfg);
    }
    if (strcmp(cmd, "rebuild") == 0) {
        return service_rebuild(&cfg);
    }
    if (strcmp(cmd, "events") == 0) {
        return service_events(&cfg);
    }
    if (strcmp(cmd, "verify") == 0) {
        return service_verify(&cfg);
    }
    if (strcmp(cmd, "migrate") == 0) {
        return service_migrate(&cfg);
    }
    if (dlq_action != NULL) {
        return service_dlq(&cfg, dlq_action, dlq_seq);
    }
    fprintf(stderr, "rastro: unknown command '%s'. Try 'rastro --help'.\n", cmd);
    return 2;
}
