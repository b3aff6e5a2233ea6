/*
 * json_bench.c - micro-benchmark of JSON parsing for rastro's request path.
 *
 * Measures the cost of parsing one realistic ~310-byte tracking command body,
 * reading three string fields ("campaña_id", "influencer_id", "id") and
 * freeing the document, with three Debian-packaged C JSON libraries: cJSON,
 * json-c and jansson. Why: to choose the JSON library for rastro's request
 * path (POST /tracking/... bodies; src/domain/tracking.c uses cJSON today).
 *
 * Method: per library, a warm-up pass, then RUNS timed runs of ITERS
 * iterations (CLOCK_MONOTONIC); the best run is reported, to reduce noise on
 * a shared 2-core machine. Every iteration checks the three values and aborts
 * on a mismatch, so the optimizer cannot drop the work.
 *
 * Build note: <json.h> (json-c) and <jansson.h> cannot share a translation
 * unit (both declare json_object, json_type, ...), so the Makefile compiles
 * this file twice: with -DJANSSON_PART (run_jansson only) and without (the
 * rest). Both .so files also export json_object_get; jansson is therefore
 * called through the unambiguous json_object_getn, and json-c's
 * json_object_get is never used. */
#define _POSIX_C_SOURCE 199309L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define K_CAMP "campa\xc3\xb1" "a_id" /* UTF-8 "campaña_id" */
#define K_INFL "influencer_id"
#define K_ID   "id"
#define V_CAMP "camp-4821"
#define V_INFL "inf-77123"
#define V_ID   "7f3c2a9e-1b4d-4c8e-9f2a-3d5e6f7a8b9c"
void check(const char *got, const char *want, const char *lib);
void run_jansson(const char *body, size_t len);

#ifdef JANSSON_PART /* ---------- translation unit 1: jansson only ---------- */
#include <jansson.h> /* GETN: key length known at compile time */
#define GETN(o, k) json_object_getn((o), (k), sizeof(k) - 1)

void run_jansson(const char *body, size_t len)
{
    json_error_t err;
    json_t *doc = json_loadb(body, len, 0, &err);
    if (doc == NULL) abort(); /* json_string_value(): NULL if missing/non-string */
    check(json_string_value(GETN(doc, K_CAMP)), V_CAMP, "jansson");
    check(json_string_value(GETN(doc, K_INFL)), V_INFL, "jansson");
    check(json_string_value(GETN(doc, K_ID)), V_ID, "jansson");
    json_decref(doc);
}

#else /* ------- translation unit 2: cJSON, json-c and the driver ------- */
#include <cJSON.h> /* -I/usr/include/cjson  via pkg-config */
#include <json.h>  /* -I/usr/include/json-c via pkg-config */

#define ITERS 2000000L /* per timed run */
#define WARMUP 200000L
#define RUNS 5

/* The body, shaped like the ones rastro receives (bench/post_impresion.lua). */
static const char BODY[] =
    "{\"id\":\"" V_ID "\",\"" K_CAMP "\":\"" V_CAMP "\","
    "\"influencer_id\":\"" V_INFL "\",\"usuario_id\":\"user-553211\","
    "\"tipo_evento\":\"IMPRESION\","
    "\"user_agent\":\"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36\","
    "\"ip_address\":\"203.0.113.41\",\"referrer\":\"https://example.com/p/4821\","
    "\"timestamp\":\"2026-11-28T10:15:00Z\"}";

/* Abort unless a looked-up field is present and has the expected value. */
void check(const char *got, const char *want, const char *lib)
{
    if (got == NULL || strcmp(got, want) != 0) {
        fprintf(stderr, "%s: bad value %s (want %s)\n", lib, got ? got : "(null)", want);
        abort();
    }
}

/* One iteration of each library: parse, read 3 string fields, free. */
static void run_cjson(const char *body, size_t len)
{
    cJSON *doc = cJSON_ParseWithLength(body, len);
    if (doc == NULL) abort(); /* cJSON_GetStringValue(): NULL if missing/non-string */
    check(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(doc, K_CAMP)), V_CAMP, "cjson");
    check(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(doc, K_INFL)), V_INFL, "cjson");
    check(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(doc, K_ID)), V_ID, "cjson");
    cJSON_Delete(doc);
}

/* json-c: the string value of key, or NULL if missing / not a string. */
static const char *jc_str(struct json_object *o, const char *key)
{
    struct json_object *v;
    if (!json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_string))
        return NULL;
    return json_object_get_string(v);
}

static void run_jsonc(const char *body, size_t len)
{
    /* A fresh tokener per body, as json_tokener_parse() would do, but with
     * the explicit length like the other two libraries. */
    struct json_tokener *tok = json_tokener_new();
    struct json_object *doc = json_tokener_parse_ex(tok, body, (int)len);
    if (doc == NULL) abort();
    check(jc_str(doc, K_CAMP), V_CAMP, "json-c");
    check(jc_str(doc, K_INFL), V_INFL, "json-c");
    check(jc_str(doc, K_ID), V_ID, "json-c");
    json_object_put(doc);
    json_tokener_free(tok);
}

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

/* Warm up, then return the best ns/iteration over RUNS timed runs. */
static double bench(void (*fn)(const char *, size_t), size_t len)
{
    for (long i = 0; i < WARMUP; i++) fn(BODY, len);
    double best = 0;
    for (int r = 0; r < RUNS; r++) {
        double t0 = now_ns();
        for (long i = 0; i < ITERS; i++) fn(BODY, len);
        double ns = (now_ns() - t0) / (double)ITERS;
        if (r == 0 || ns < best) best = ns;
    }
    return best;
}

int main(void)
{
    static const struct { const char *name; void (*fn)(const char *, size_t); } libs[] =
        { { "cjson", run_cjson }, { "json-c", run_jsonc }, { "jansson", run_jansson } };
    const size_t len = strlen(BODY);
    printf("body: %zu bytes; %ld iterations x %d runs (best of), %ld warm-up\n",
           len, ITERS, RUNS, WARMUP);
    double base = 0;
    for (size_t i = 0; i < sizeof libs / sizeof libs[0]; i++) {
        double ns = bench(libs[i].fn, len);
        if (i == 0) base = ns;
        printf("%-8s %5.2f us/op  (%6.1f ns/op, %.2fx cjson)\n",
               libs[i].name, ns / 1000.0, ns, ns / base);
        fflush(stdout);
    }
    return 0;
}
#endif
