/*
 * tracking.c - see tracking.h. Validation rules live here and only here;
 * tests/unit/test_tracking.c has a table row for each.
 */
#include "domain/tracking.h"

#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <math.h>
#include <sanitizer/asan_interface.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/jsonw.h"
#include "core/timeutil.h"

/* Active ISO 4217 codes (plus a few withdrawn recently, which old data may
 * still carry), sorted for bsearch. */
static const char *const currencies[] = {
    "AED", "AFN", "ALL", "AMD", "ANG", "AOA", "ARS", "AUD", "AWG", "AZN", "BAM", "BBD",
    "BDT", "BGN", "BHD", "BIF", "BMD", "BND", "BOB", "BOV", "BRL", "BSD", "BTN", "BWP",
    "BYN", "BZD", "CAD", "CDF", "CHE", "CHF", "CHW", "CLF", "CLP", "CNY", "COP", "COU",
    "CRC", "CUC", "CUP", "CVE", "CZK", "DJF", "DKK", "DOP", "DZD", "EGP", "ERN", "ETB",
    "EUR", "FJD", "FKP", "GBP", "GEL", "GHS", "GIP", "GMD", "GNF", "GTQ", "GYD", "HKD",
    "HNL", "HRK", "HTG", "HUF", "IDR", "ILS", "INR", "IQD", "IRR", "ISK", "JMD", "JOD",
    "JPY", "KES", "KGS", "KHR", "KMF", "KPW", "KRW", "KWD", "KYD", "KZT", "LAK", "LBP",
    "LKR", "LRD", "LSL", "LYD", "MAD", "MDL", "MGA", "MKD", "MMK", "MNT", "MOP", "MRU",
    "MUR", "MVR", "MWK", "MXN", "MXV", "MYR", "MZN", "NAD", "NGN", "NIO", "NOK", "NPR",
    "NZD", "OMR", "PAB", "PEN", "PGK", "PHP", "PKR", "PLN", "PYG", "QAR", "RON", "RSD",
    "RUB", "RWF", "SAR", "SBD", "SCR", "SDG", "SEK", "SGD", "SHP", "SLE", "SLL", "SOS",
    "SRD", "SSP", "STN", "SVC", "SYP", "SZL", "THB", "TJS", "TMT", "TND", "TOP", "TRY",
    "TTD", "TWD", "TZS", "UAH", "UGX", "USD", "USN", "UYI", "UYU", "UYW", "UZS", "VED",
    "VES", "VND", "VUV", "WST", "XAF", "XAG", "XAU", "XBA", "XBB", "XBC", "XBD", "XCD",
    "XCG", "XDR", "XOF", "XPD", "XPF", "XPT", "XSU", "XTS", "XUA", "YER", "ZAR", "ZMW",
    "ZWG", "ZWL"
};

static int cmp_code(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

bool moneda_is_valid(const char *s)
{
    if (strlen(s) != 3) {
        return false;
    }
    for (int i = 0; i < 3; i++) {
        if (s[i] < 'A' || s[i] > 'Z') {
            return false;
        }
    }
    return bsearch(&s, currencies, ARRAY_LEN(currencies), sizeof(currencies[0]),
                   cmp_code) != NULL;
}

bool text_is_clean(const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        unsigned c = p[i];
        if (c < 0x80) {
            if (c < 0x20 || c == 0x7f) {
                return false;
            }
            i++;
            continue;
        }
        size_t len;
        unsigned cp;
        if ((c & 0xe0) == 0xc0) {
            len = 2;
            cp = c & 0x1f;
        } else if ((c & 0xf0) == 0xe0) {
            len = 3;
            cp = c & 0x0f;
        } else if ((c & 0xf8) == 0xf0) {
            len = 4;
            cp = c & 0x07;
        } else {
            return false;
        }
        if (i + len > n) {
            return false;
        }
        for (size_t k = 1; k < len; k++) {
            if ((p[i + k] & 0xc0) != 0x80) {
                return false;
            }
            cp = cp << 6 | (p[i + k] & 0x3f);
        }
        /* overlong forms, surrogates, beyond U+10FFFF */
        if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) ||
            (cp >= 0xd800 && cp <= 0xdfff) || cp > 0x10ffff) {
            return false;
        }
        i += len;
    }
    return true;
}

bool valor_parse_decimal(const char *s, int64_t *out)
{
    const char *p = s;
    int64_t whole = 0;
    int nd = 0;
    while (*p >= '0' && *p <= '9') {
        if (whole > VALOR_MAX / VALOR_SCALE) {
            return false;
        }
        whole = whole * 10 + (*p - '0');
        p++;
        nd++;
    }
    int64_t frac = 0;
    int nf = 0;
    if (*p == '.') {
        p++;
        while (*p >= '0' && *p <= '9') {
            if (nf == 4) {
                if (*p != '0') {
                    return false;       /* more precision than we keep */
                }
            } else {
                frac = frac * 10 + (*p - '0');
                nf++;
            }
            p++;
        }
        if (nf == 0 && p[-1] == '.') {
            return false;
        }
    }
    if (nd == 0 || *p != '\0') {
        return false;
    }
    for (int i = nf; i < 4; i++) {
        frac *= 10;
    }
    int64_t v = whole * VALOR_SCALE + frac;
    if (v > VALOR_MAX) {
        return false;
    }
    *out = v;
    return true;
}

bool valor_from_double(double v, int64_t *out)
{
    if (!isfinite(v) || v < 0 || v > (double)VALOR_MAX / VALOR_SCALE) {
        return false;
    }
    double scaled = nearbyint(v * VALOR_SCALE);
    int64_t ticks = (int64_t)scaled;
    /* Exact only if these ticks are the decimal the client wrote: dividing
     * back must give the very same double. 0.00005 fails; 0.1 passes. */
    if ((double)ticks / VALOR_SCALE != v) {
        return false;
    }
    *out = ticks;
    return true;
}

static const char *const conv_names[CONV__COUNT] = {
    "VENTA", "REGISTRO", "SUSCRIPCION", "DESCARGAR", "CLICK",
};

const char *conv_type_name(enum conv_type t)
{
    return (unsigned)t < CONV__COUNT ? conv_names[t] : "VENTA";
}

bool conv_type_parse(const char *s, enum conv_type *out)
{
    for (int i = 0; i < CONV__COUNT; i++) {
        if (strcmp(s, conv_names[i]) == 0) {
            *out = (enum conv_type)i;
            return true;
        }
    }
    return false;
}

const char *tracking_event_type_name(enum tracking_kind kind)
{
    return kind == KIND_IMPRESION ? "ImpresionRegistrada" : "ConversionRegistrada";
}

enum event_type event_type_parse(const char *name)
{
    if (strcmp(name, "ImpresionRegistrada") == 0) {
        return EV_IMPRESSION_RECORDED;
    }
    if (strcmp(name, "ConversionRegistrada") == 0) {
        return EV_CONVERSION_RECORDED;
    }
    return EV_UNKNOWN;
}

void tracking_stream_id(enum tracking_kind kind, const char *id, char *out)
{
    size_t n = strlen(id);
    const char *prefix = kind == KIND_IMPRESION ? "impresion:" : "conversion:";
    size_t p = strlen(prefix);
    if (n > ID_MAX) {
        n = ID_MAX;
    }
    memcpy(out, prefix, p);
    memcpy(out + p, id, n);
    out[p + n] = '\0';
}

/* ---- parsing ---------------------------------------------------------- */

#define K_CAMPANA "campa\xc3\xb1" "a_id"

/* The fields a command may carry. */
enum fidx {
    F_ID, F_CAMPANA, F_CAMPANA_ALIAS, F_INFLUENCER, F_USUARIO, F_TIPO_EVENTO, F_USER_AGENT,
    F_IP, F_REFERRER, F_TIMESTAMP, F_TIPO_CONVERSION, F_VALOR, F_MONEDA, F__COUNT
};

static const char *const fnames[F__COUNT] = {
    [F_ID] = "id", [F_CAMPANA] = K_CAMPANA, [F_CAMPANA_ALIAS] = "campana_id",
    [F_INFLUENCER] = "influencer_id", [F_USUARIO] = "usuario_id",
    [F_TIPO_EVENTO] = "tipo_evento", [F_USER_AGENT] = "user_agent", [F_IP] = "ip_address",
    [F_REFERRER] = "referrer", [F_TIMESTAMP] = "timestamp",
    [F_TIPO_CONVERSION] = "tipo_conversion", [F_VALOR] = "valor", [F_MONEDA] = "moneda",
};

/* Each field's value in the body (NULL when absent). */
struct slots {
    const cJSON *v[F__COUNT];
};

/* One pass over the object's members instead of a linear search per field
 * (cJSON's lookup is a strcmp per member). The first of duplicate keys
 * wins, as with cJSON_GetObjectItem. Unknown members are ignored. */
static void collect(const cJSON *obj, struct slots *sl)
{
    memset(sl, 0, sizeof(*sl));
    for (const cJSON *c = obj->child; c != NULL; c = c->next) {
        const char *k = c->string;
        if (k == NULL) {
            continue;
        }
        for (int f = 0; f < F__COUNT; f++) {
            if (k[0] == fnames[f][0] && strcmp(k, fnames[f]) == 0) {
                if (sl->v[f] == NULL) {
                    sl->v[f] = c;
                }
                break;
            }
        }
    }
}

/* A string field: absent or null leaves dst empty (unless required). */
static int get_string(const struct slots *sl, enum fidx f, char *dst, size_t max, bool required,
                      struct err *e)
{
    const cJSON *it = sl->v[f];
    const char *field = fnames[f];
    dst[0] = '\0';
    if (it == NULL || cJSON_IsNull(it)) {
        if (required) {
            return err_field(e, ERR_INVALID, field, "%s is required", field);
        }
        return ERR_OK;
    }
    if (!cJSON_IsString(it) || it->valuestring == NULL) {
        return err_field(e, ERR_INVALID, field, "%s must be a string", field);
    }
    size_t n = strlen(it->valuestring);
    if (n == 0 && required) {
        return err_field(e, ERR_INVALID, field, "%s must not be empty", field);
    }
    if (n > max) {
        return err_field(e, ERR_INVALID, field, "%s is longer than %zu bytes", field, max);
    }
    if (!text_is_clean(it->valuestring, n)) {
        return err_field(e, ERR_INVALID, field,
                         "%s must be UTF-8 text without control characters", field);
    }
    memcpy(dst, it->valuestring, n + 1);
    return ERR_OK;
}

static bool is_token(const char *s)
{
    for (; *s != '\0'; s++) {
        char c = *s;
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-')) {
            return false;
        }
    }
    return true;
}

static int parse_timestamp(const struct slots *sl, struct tracking *t, struct err *e)
{
    const cJSON *it = sl->v[F_TIMESTAMP];
    t->ts_given = false;
    t->timestamp_us = 0;
    if (it == NULL || cJSON_IsNull(it)) {
        return ERR_OK;
    }
    int64_t us;
    if (cJSON_IsString(it) && it->valuestring != NULL) {
        if (!time_parse_iso8601(it->valuestring, &us)) {
            return err_field(e, ERR_INVALID, "timestamp",
                             "timestamp must be ISO-8601, e.g. 2026-11-28T10:15:00Z");
        }
    } else if (cJSON_IsNumber(it)) {
        /* Unix seconds, as the earlier service's parser also took them. */
        double v = it->valuedouble;
        if (!isfinite(v) || v < 0 || v > 253402300799.0) {
            return err_field(e, ERR_INVALID, "timestamp", "timestamp out of range");
        }
        us = (int64_t)llround(v * 1e6);
    } else {
        return err_field(e, ERR_INVALID, "timestamp", "timestamp must be a string");
    }
    if (us < 0) {
        return err_field(e, ERR_INVALID, "timestamp", "timestamp before 1970 is not accepted");
    }
    t->timestamp_us = us;
    t->ts_given = true;
    return ERR_OK;
}

static int parse_valor(const struct slots *sl, struct tracking *t, struct err *e)
{
    const cJSON *it = sl->v[F_VALOR];
    t->valor = 0;
    if (it == NULL || cJSON_IsNull(it)) {
        return ERR_OK;
    }
    bool ok;
    if (cJSON_IsNumber(it)) {
        ok = valor_from_double(it->valuedouble, &t->valor);
    } else if (cJSON_IsString(it) && it->valuestring != NULL) {
        ok = valor_parse_decimal(it->valuestring, &t->valor);
    } else {
        return err_field(e, ERR_INVALID, "valor", "valor must be a number");
    }
    if (!ok) {
        return err_field(e, ERR_INVALID, "valor",
                         "valor must be a finite number >= 0 and <= 100000000000 "
                         "with at most 4 decimals");
    }
    return ERR_OK;
}

/* Fields common to both kinds, then the conversion-only ones. */
static int parse_fields(const struct slots *sl, struct tracking *t, struct err *e)
{
    int rc = get_string(sl, F_ID, t->id, ID_MAX, false, e);
    if (rc != ERR_OK) {
        return rc;
    }
    const cJSON *id = sl->v[F_ID];
    if (id != NULL && cJSON_IsString(id) && t->id[0] == '\0') {
        return err_field(e, ERR_INVALID, "id", "id must not be empty (omit it to get one)");
    }
    t->id_given = t->id[0] != '\0';

    /* campaña_id, or its ASCII alias; if both come they must agree */
    char alias[ID_MAX + 1];
    rc = get_string(sl, F_CAMPANA, t->campana_id, ID_MAX, false, e);
    if (rc == ERR_OK) {
        rc = get_string(sl, F_CAMPANA_ALIAS, alias, ID_MAX, false, e);
    }
    if (rc != ERR_OK) {
        return rc;
    }
    if (t->campana_id[0] == '\0') {
        memcpy(t->campana_id, alias, sizeof(alias));
    } else if (alias[0] != '\0' && strcmp(alias, t->campana_id) != 0) {
        return err_field(e, ERR_INVALID, K_CAMPANA,
                         K_CAMPANA " and campana_id disagree; send one of them");
    }
    if (t->campana_id[0] == '\0') {
        return err_field(e, ERR_INVALID, K_CAMPANA, K_CAMPANA " is required and must not be empty");
    }

    struct {
        enum fidx f;
        char *dst;
        size_t max;
    } opt[] = {
        { F_INFLUENCER, t->influencer_id, ID_MAX },
        { F_USUARIO, t->usuario_id, ID_MAX },
        { F_TIPO_EVENTO, t->tipo_evento, TIPO_MAX },
        { F_USER_AGENT, t->user_agent, UA_MAX },
        { F_IP, t->ip_address, IP_MAX },
        { F_REFERRER, t->referrer, REF_MAX },
    };
    for (size_t i = 0; i < ARRAY_LEN(opt); i++) {
        rc = get_string(sl, opt[i].f, opt[i].dst, opt[i].max, false, e);
        if (rc != ERR_OK) {
            return rc;
        }
    }
    if (t->tipo_evento[0] == '\0') {
        strcpy(t->tipo_evento, t->kind == KIND_IMPRESION ? "IMPRESION" : "CONVERSION");
    } else if (!is_token(t->tipo_evento)) {
        return err_field(e, ERR_INVALID, "tipo_evento",
                         "tipo_evento may hold only letters, digits, '_' and '-'");
    }
    if (t->ip_address[0] != '\0') {
        unsigned char addr[16];
        if (inet_pton(AF_INET, t->ip_address, addr) != 1 &&
            inet_pton(AF_INET6, t->ip_address, addr) != 1) {
            return err_field(e, ERR_INVALID, "ip_address",
                             "ip_address must be an IPv4 or IPv6 address");
        }
    }
    rc = parse_timestamp(sl, t, e);
    if (rc != ERR_OK || t->kind != KIND_CONVERSION) {
        return rc;
    }

    char tipo[TIPO_MAX + 1];
    rc = get_string(sl, F_TIPO_CONVERSION, tipo, TIPO_MAX, false, e);
    if (rc != ERR_OK) {
        return rc;
    }
    t->tipo_conversion = CONV_VENTA;
    if (tipo[0] != '\0' && !conv_type_parse(tipo, &t->tipo_conversion)) {
        return err_field(e, ERR_INVALID, "tipo_conversion",
                         "tipo_conversion must be one of VENTA, REGISTRO, SUSCRIPCION, "
                         "DESCARGAR, CLICK");
    }
    rc = parse_valor(sl, t, e);
    if (rc != ERR_OK) {
        return rc;
    }
    char moneda[16];
    rc = get_string(sl, F_MONEDA, moneda, sizeof(moneda) - 1, false, e);
    if (rc == ERR_OK && moneda[0] == '\0') {
        strcpy(moneda, "COP");
    }
    if (rc != ERR_OK || !moneda_is_valid(moneda)) {
        return err_field(e, ERR_INVALID, "moneda",
                         "moneda must be an ISO 4217 code of three upper-case letters");
    }
    memcpy(t->moneda, moneda, 4);
    return ERR_OK;
}

/*
 * cJSON decodes "\u0000" into a C string and so silently cuts the value
 * short ("u\u0000x" would become "u"). Such a value is refused instead;
 * this finds the key whose string value holds the escape, for the error.
 * Returns false when there is none.
 */
static bool find_nul_escape(const char *body, size_t n, char *field, size_t max)
{
    if (memmem(body, n, "u0000", 5) == NULL) {
        return false;           /* the common case costs one scan */
    }
    char last_key[64] = "body";
    size_t i = 0;
    while (i < n) {
        if (body[i] != '"') {
            i++;
            continue;
        }
        size_t start = ++i;
        bool has_nul = false;
        while (i < n && body[i] != '"') {
            if (body[i] == '\\' && i + 1 < n) {
                if (body[i + 1] == 'u' && i + 5 < n && memcmp(body + i + 2, "0000", 4) == 0) {
                    has_nul = true;
                }
                i += 2;
                continue;
            }
            i++;
        }
        size_t end = i++;
        size_t j = i;
        while (j < n && (body[j] == ' ' || body[j] == '\t' || body[j] == '\r' || body[j] == '\n')) {
            j++;
        }
        if (j < n && body[j] == ':') {
            snprintf(last_key, sizeof(last_key), "%.*s", (int)(end - start), body + start);
            if (has_nul) {
                snprintf(field, max, "body");
                return true;
            }
        } else if (has_nul) {
            snprintf(field, max, "%s", last_key);
            return true;
        }
    }
    return false;
}

/*
 * cJSON allocates every node and every string of a body separately; while
 * one body is parsed those allocations come from a per-thread arena instead
 * (a bump pointer; freeing one of them is a no-op), and from malloc once the
 * arena is full. Rebuilds decode 13-22 % faster (malloc and free were a
 * tenth of the decoding thread). The tree never outlives
 * tracking_parse_command: tree_free() deletes it and, under AddressSanitizer,
 * poisons the arena again, so reads past a node or after the delete are still
 * caught. The hooks are set before main(), while there is one thread.
 */
#define ARENA_BYTES 16384
static _Thread_local _Alignas(16) char arena[ARENA_BYTES];
static _Thread_local size_t arena_used;
static _Thread_local bool arena_on;

static void *arena_alloc(size_t n)
{
    size_t need = (n + 15) & ~(size_t)15;
    if (arena_on && need >= n && need <= ARENA_BYTES - arena_used) {
        void *p = arena + arena_used;
        arena_used += need;
        ASAN_UNPOISON_MEMORY_REGION(p, n);
        return p;
    }
    return malloc(n);
}

static void arena_free(void *p)
{
    if ((char *)p < arena || (char *)p >= arena + ARENA_BYTES) {
        free(p);
    }
}

__attribute__((constructor)) static void arena_hooks(void)
{
    cJSON_Hooks h = { .malloc_fn = arena_alloc, .free_fn = arena_free };
    cJSON_InitHooks(&h);
}

static cJSON *parse_in_arena(const char *body, size_t n, const char **end)
{
    arena_used = 0;
    ASAN_POISON_MEMORY_REGION(arena, ARENA_BYTES);
    arena_on = true;
    cJSON *root = cJSON_ParseWithLengthOpts(body, n, end, false);
    arena_on = false;
    return root;
}

static void tree_free(cJSON *root)
{
    cJSON_Delete(root);
    ASAN_POISON_MEMORY_REGION(arena, ARENA_BYTES);
}

/* The body must be one JSON object and nothing else but white space. */
static int parse_object(const char *body, size_t n, cJSON **out, struct err *e)
{
    /* JSON has no raw NUL anywhere (in strings it must be escaped), and a
     * raw one would cut a C string short without anyone noticing. */
    if (memchr(body, '\0', n) != NULL) {
        return err_field(e, ERR_INVALID, "body", "body contains a NUL byte");
    }
    const char *end = NULL;
    cJSON *root = parse_in_arena(body, n, &end);
    if (root == NULL) {
        return err_field(e, ERR_INVALID, "body", "body is not valid JSON");
    }
    if (!cJSON_IsObject(root)) {
        tree_free(root);
        return err_field(e, ERR_INVALID, "body", "body must be a JSON object");
    }
    for (const char *p = end; p != NULL && p < body + n; p++) {
        if (*p != ' ' && *p != '\t' && *p != '\r' && *p != '\n') {
            tree_free(root);
            return err_field(e, ERR_INVALID, "body", "body has data after the JSON object");
        }
    }
    /* only now, on valid JSON, can the escape be traced to its key */
    char nul_field[64];
    if (find_nul_escape(body, n, nul_field, sizeof(nul_field))) {
        tree_free(root);
        if (nul_field[0] == '\0') {
            snprintf(nul_field, sizeof(nul_field), "body");
        }
        return err_field(e, ERR_INVALID, nul_field, "%s must not contain NUL characters", nul_field);
    }
    *out = root;
    return ERR_OK;
}

int tracking_parse_command(enum tracking_kind kind, const char *body, size_t n,
                           struct tracking *out, struct err *e)
{
    cJSON *root = NULL;
    int rc = parse_object(body, n, &root, e);
    if (rc != ERR_OK) {
        return rc;
    }
    memset(out, 0, sizeof(*out));
    out->kind = kind;
    struct slots sl;
    collect(root, &sl);
    rc = parse_fields(&sl, out, e);
    tree_free(root);
    return rc;
}

void tracking_fill_defaults(struct tracking *t, const char *new_id, int64_t now_us)
{
    if (!t->id_given) {
        snprintf(t->id, sizeof(t->id), "%s", new_id);
    }
    if (!t->ts_given) {
        t->timestamp_us = now_us;
    }
}

static void opt_str(struct jsonw *w, const char *k, const char *v)
{
    jsonw_key(w, k);
    if (v[0] == '\0') {
        jsonw_null(w);
    } else {
        jsonw_str(w, v);
    }
}

int tracking_to_json(const struct tracking *t, struct buf *out)
{
    struct jsonw w;
    char ts[TS_STR_LEN + 1];
    time_format_iso8601(t->timestamp_us, ts);
    jsonw_init(&w, out);
    jsonw_obj_open(&w);
    jsonw_kstr(&w, "id", t->id);
    jsonw_kstr(&w, K_CAMPANA, t->campana_id);
    opt_str(&w, "influencer_id", t->influencer_id);
    opt_str(&w, "usuario_id", t->usuario_id);
    jsonw_kstr(&w, "tipo_evento", t->tipo_evento);
    opt_str(&w, "user_agent", t->user_agent);
    opt_str(&w, "ip_address", t->ip_address);
    opt_str(&w, "referrer", t->referrer);
    jsonw_kstr(&w, "timestamp", ts);
    if (t->kind == KIND_CONVERSION) {
        jsonw_kstr(&w, "tipo_conversion", conv_type_name(t->tipo_conversion));
        jsonw_key(&w, "valor");
        jsonw_fixed4(&w, t->valor);
        jsonw_kstr(&w, "moneda", t->moneda);
    }
    jsonw_obj_close(&w);
    return jsonw_status(&w);
}

int tracking_from_json(enum tracking_kind kind, const char *json, size_t n,
                       struct tracking *out, struct err *e)
{
    /* Stored data goes through the same rules as a command: an event that
     * would not validate today is reported, never half-applied. */
    int rc = tracking_parse_command(kind, json, n, out, e);
    if (rc != ERR_OK) {
        return rc;
    }
    if (!out->id_given || !out->ts_given) {
        return err_field(e, ERR_INVALID, out->id_given ? "timestamp" : "id",
                         "stored event lacks %s", out->id_given ? "timestamp" : "id");
    }
    return ERR_OK;
}

/* dst <- src up to and with its NUL (src is NUL-terminated within n). */
static void copy_text(char *dst, const char *src, size_t n)
{
    size_t len = strnlen(src, n - 1);
    memcpy(dst, src, len);
    dst[len] = '\0';
}

void tracking_copy(struct tracking *dst, const struct tracking *src)
{
    dst->kind = src->kind;
    dst->id_given = src->id_given;
    dst->ts_given = src->ts_given;
    dst->timestamp_us = src->timestamp_us;
    dst->tipo_conversion = src->tipo_conversion;
    dst->valor = src->valor;
    copy_text(dst->id, src->id, sizeof(dst->id));
    copy_text(dst->campana_id, src->campana_id, sizeof(dst->campana_id));
    copy_text(dst->influencer_id, src->influencer_id, sizeof(dst->influencer_id));
    copy_text(dst->usuario_id, src->usuario_id, sizeof(dst->usuario_id));
    copy_text(dst->tipo_evento, src->tipo_evento, sizeof(dst->tipo_evento));
    copy_text(dst->user_agent, src->user_agent, sizeof(dst->user_agent));
    copy_text(dst->ip_address, src->ip_address, sizeof(dst->ip_address));
    copy_text(dst->referrer, src->referrer, sizeof(dst->referrer));
    copy_text(dst->moneda, src->moneda, sizeof(dst->moneda));
}

bool tracking_same_payload(const struct tracking *stored, const struct tracking *cmd)
{
    if (stored->kind != cmd->kind || strcmp(stored->id, cmd->id) != 0 ||
        strcmp(stored->campana_id, cmd->campana_id) != 0 ||
        strcmp(stored->influencer_id, cmd->influencer_id) != 0 ||
        strcmp(stored->usuario_id, cmd->usuario_id) != 0 ||
        strcmp(stored->tipo_evento, cmd->tipo_evento) != 0 ||
        strcmp(stored->user_agent, cmd->user_agent) != 0 ||
        strcmp(stored->ip_address, cmd->ip_address) != 0 ||
        strcmp(stored->referrer, cmd->referrer) != 0) {
        return false;
    }
    if (cmd->ts_given && stored->timestamp_us != cmd->timestamp_us) {
        return false;
    }
    if (cmd->kind == KIND_CONVERSION &&
        (stored->tipo_conversion != cmd->tipo_conversion || stored->valor != cmd->valor ||
         strcmp(stored->moneda, cmd->moneda) != 0)) {
        return false;
    }
    return true;
}
