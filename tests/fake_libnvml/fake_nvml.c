/*
 * A fake libnvidia-ml.so.1 for tests: the real nvidia-ml-py (pynvml) loads it
 * through the library search path and calls it exactly as it calls NVIDIA's.
 *
 * Signatures, structure layouts, struct-version constants and return codes
 * are those of nvml.h as nvidia-ml-py's ctypes structures use them. What the
 * library reports comes from a JSON state file named by $FAKE_NVML_STATE,
 * re-read whenever the file changes (path, inode, size or mtime), so a test
 * can change GPUs, processes and injected faults while a daemon runs.
 * README.md beside this file describes the state file.
 *
 * Thread-safe: one mutex guards the state; injected delays sleep outside it.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>

#define EXPORT __attribute__((visibility("default")))

/* ---- nvml.h types ------------------------------------------------------ */

typedef int nvmlReturn_t;
enum {
    NVML_SUCCESS = 0,
    NVML_ERROR_UNINITIALIZED = 1,
    NVML_ERROR_INVALID_ARGUMENT = 2,
    NVML_ERROR_NOT_SUPPORTED = 3,
    NVML_ERROR_NO_PERMISSION = 4,
    NVML_ERROR_NOT_FOUND = 6,
    NVML_ERROR_INSUFFICIENT_SIZE = 7,
    NVML_ERROR_DRIVER_NOT_LOADED = 9,
    NVML_ERROR_TIMEOUT = 10,
    NVML_ERROR_FUNCTION_NOT_FOUND = 13,
    NVML_ERROR_GPU_IS_LOST = 15,
    NVML_ERROR_LIB_RM_VERSION_MISMATCH = 18,
    NVML_ERROR_MEMORY = 20,
    NVML_ERROR_ARGUMENT_VERSION_MISMATCH = 25,
    NVML_ERROR_UNKNOWN = 999,
};

typedef struct nvmlDevice_st { unsigned int index; } *nvmlDevice_t;

typedef struct { unsigned long long total, free, used; } nvmlMemory_t;
typedef struct {
    unsigned int version;
    unsigned long long total, reserved, free, used;
} nvmlMemory_v2_t;
typedef struct { unsigned int gpu, memory; } nvmlUtilization_t;
typedef struct { unsigned int pid; unsigned long long usedGpuMemory; } nvmlProcessInfo_v1_t;
typedef struct {
    unsigned int pid;
    unsigned long long usedGpuMemory;
    unsigned int gpuInstanceId, computeInstanceId;
} nvmlProcessInfo_v2_t; /* also nvmlProcessInfo_v3_t and nvmlProcessInfo_t */
typedef struct {
    unsigned int version;
    unsigned int sensorType;
    int temperature;
} nvmlTemperature_v1_t;

typedef struct {
    char busIdLegacy[16];
    unsigned int domain, bus, device, pciDeviceId, pciSubSystemId;
    char busId[32];
} nvmlPciInfo_t;

/* nvmlEventSet_t is opaque in nvml.h; here it is one of the slots in g_sets. */
typedef struct nvmlEventSet_st *nvmlEventSet_t;
typedef struct {
    nvmlDevice_t device;
    unsigned long long eventType;
    unsigned long long eventData; /* the Xid code, for nvmlEventTypeXidCriticalError */
    unsigned int gpuInstanceId, computeInstanceId;
} nvmlEventData_t;

#define NVML_STRUCT_VERSION(size, ver) ((unsigned int)(size) | ((unsigned int)(ver) << 24U))
#define nvmlMemory_v2 NVML_STRUCT_VERSION(sizeof(nvmlMemory_v2_t), 2)
#define nvmlTemperature_v1 NVML_STRUCT_VERSION(sizeof(nvmlTemperature_v1_t), 1)
#define NOT_AVAILABLE 0xFFFFFFFFFFFFFFFFULL

/* ---- the state --------------------------------------------------------- */

#define MAX_GPUS 64
#define MAX_PROCS 256
#define MAX_RULES 64
#define MAX_EVENTS 256
#define MAX_SETS 32
#define TEXT 96

enum { KIND_COMPUTE = 1, KIND_GRAPHICS = 2 };
enum { SEEN_ALWAYS, SEEN_COUNT_ONLY, SEEN_LIST_ONLY };

typedef struct { int present; long long value; } figure_t; /* absent: NOT_SUPPORTED */

typedef struct {
    unsigned int pid;
    unsigned long long used; /* NOT_AVAILABLE when hidden */
    int kinds;               /* KIND_* bits */
    int seen;                /* SEEN_*: "vanishes"/"appears" between size query and fill */
} proc_t;

typedef struct {
    char uuid[TEXT], name[TEXT];
    int lost;
    figure_t total, used, reserved, util_gpu, util_mem, temp, power, power_limit, fan;
    figure_t event_types;  /* nvmlDeviceGetSupportedEventTypes' mask */
    figure_t ecc[2][2];    /* [error type: corrected, uncorrected][counter: volatile, aggregate] */
    int has_retired;       /* page retirement (Kepler to Volta); absent: NOT_SUPPORTED */
    long long retired[2];  /* [cause: multiple single-bit, double-bit] */
    int retired_pending;
    int has_remap;         /* row remapping (Ampere and later); absent: NOT_SUPPORTED */
    unsigned int remap_corr, remap_unc, remap_pending, remap_failure;
    int nprocs;
    proc_t procs[MAX_PROCS];
} gpu_t;

/* One injected event (an Xid, an ECC error, ...), delivered once to each event set
 * that registered its GPU and type before the event's id was written. */
typedef struct {
    long long id;
    int gpu;
    unsigned long long type, data;
} event_t;

typedef struct {
    char call[TEXT]; /* exact name, "*" for every call, or a prefix ending in '*' */
    int gpu;         /* -1: any */
    nvmlReturn_t error;
    long times;      /* -1: every call */
    long delay_ms;   /* -1: until the state file changes */
} rule_t;

typedef struct {
    int loaded;
    nvmlReturn_t init_error;
    char driver_version[TEXT], nvml_version[TEXT];
    int cuda_version;
    int ngpus;
    gpu_t gpus[MAX_GPUS];
    int nrules;
    rule_t rules[MAX_RULES];
    int nevents;
    event_t events[MAX_EVENTS];
} state_t;

/* An event set: the event types registered per GPU, and per GPU the newest event id
 * already delivered or older than the registration (NVML delivers only later events). */
struct nvmlEventSet_st {
    int used;
    unsigned long long mask[MAX_GPUS];
    long long seen[MAX_GPUS];
};

typedef struct { dev_t dev; ino_t ino; off_t size; struct timespec mtime; int exists; } sig_t_;

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static state_t g_state;
static sig_t_ g_sig;
static int g_refcount;
static struct nvmlDevice_st g_handles[MAX_GPUS];
static long g_calls[96]; /* by F_* below */
static struct nvmlEventSet_st g_sets[MAX_SETS];

/* ---- a minimal JSON reader --------------------------------------------- */

enum { J_NULL, J_BOOL, J_NUM, J_STR, J_ARR, J_OBJ };

typedef struct jnode {
    int type;
    char *key; /* member name inside an object */
    char *str;
    double num;
    unsigned long long u; /* exact value of a non-negative integer */
    int is_uint;
    struct jnode *child, *next;
} jnode;

typedef struct { const char *p; int error; } jparser;

static void jfree(jnode *n) {
    while (n) {
        jnode *next = n->next;
        jfree(n->child);
        free(n->key);
        free(n->str);
        free(n);
        n = next;
    }
}

static void jspace(jparser *jp) {
    while (*jp->p == ' ' || *jp->p == '\t' || *jp->p == '\n' || *jp->p == '\r') jp->p++;
}

static char *jstring(jparser *jp) {
    size_t cap = 16, len = 0;
    char *out = malloc(cap);
    jp->p++; /* opening quote */
    while (*jp->p && *jp->p != '"') {
        char c = *jp->p++;
        if (c == '\\') {
            c = *jp->p++;
            switch (c) {
            case 'n': c = '\n'; break;
            case 't': c = '\t'; break;
            case 'r': c = '\r'; break;
            case 'b': c = '\b'; break;
            case 'f': c = '\f'; break;
            case 'u': {
                unsigned v = 0;
                for (int i = 0; i < 4 && *jp->p; i++, jp->p++)
                    v = v * 16 + (unsigned)(*jp->p <= '9' ? *jp->p - '0' : (*jp->p | 32) - 'a' + 10);
                c = v < 128 ? (char)v : '?';
                break;
            }
            case '\0': jp->error = 1; free(out); return NULL;
            default: break; /* \" \\ \/ */
            }
        }
        if (len + 2 > cap) out = realloc(out, cap *= 2);
        out[len++] = c;
    }
    if (*jp->p != '"') { jp->error = 1; free(out); return NULL; }
    jp->p++;
    out[len] = '\0';
    return out;
}

static jnode *jvalue(jparser *jp, int depth);

static jnode *jcontainer(jparser *jp, jnode *n, char close, int depth) {
    jnode **tail = &n->child;
    jp->p++;
    jspace(jp);
    if (*jp->p == close) { jp->p++; return n; }
    for (;;) {
        char *key = NULL;
        if (close == '}') {
            jspace(jp);
            if (*jp->p != '"' || !(key = jstring(jp))) break;
            jspace(jp);
            if (*jp->p++ != ':') { free(key); break; }
        }
        jnode *item = jvalue(jp, depth + 1);
        if (!item) { free(key); break; }
        item->key = key;
        *tail = item;
        tail = &item->next;
        jspace(jp);
        if (*jp->p == ',') { jp->p++; continue; }
        if (*jp->p == close) { jp->p++; return n; }
        break;
    }
    jp->error = 1;
    return n;
}

static jnode *jvalue(jparser *jp, int depth) {
    jspace(jp);
    if (depth > 32 || jp->error) { jp->error = 1; return NULL; }
    jnode *n = calloc(1, sizeof *n);
    const char *p = jp->p;
    if (*p == '{') { n->type = J_OBJ; return jcontainer(jp, n, '}', depth); }
    if (*p == '[') { n->type = J_ARR; return jcontainer(jp, n, ']', depth); }
    if (*p == '"') {
        n->type = J_STR;
        if (!(n->str = jstring(jp))) { free(n); return NULL; }
        return n;
    }
    if (!strncmp(p, "null", 4)) { n->type = J_NULL; jp->p += 4; return n; }
    if (!strncmp(p, "true", 4)) { n->type = J_BOOL; n->num = 1; jp->p += 4; return n; }
    if (!strncmp(p, "false", 5)) { n->type = J_BOOL; jp->p += 5; return n; }
    if (*p == '-' || (*p >= '0' && *p <= '9')) {
        char *end;
        n->type = J_NUM;
        n->num = strtod(p, &end);
        size_t span = (size_t)(end - p);
        if (*p != '-' && !memchr(p, '.', span) && !memchr(p, 'e', span) && !memchr(p, 'E', span)) {
            errno = 0;
            n->u = strtoull(p, NULL, 10);
            n->is_uint = errno == 0;
        }
        jp->p = end;
        return n;
    }
    free(n);
    jp->error = 1;
    return NULL;
}

static jnode *jget(const jnode *obj, const char *key) {
    if (!obj || obj->type != J_OBJ) return NULL;
    for (jnode *c = obj->child; c; c = c->next)
        if (c->key && !strcmp(c->key, key)) return c;
    return NULL;
}

static int jnum(const jnode *n, long long *out) {
    if (!n || n->type != J_NUM) return 0;
    *out = n->is_uint ? (long long)n->u : (long long)n->num;
    return 1;
}

static void jtext(const jnode *obj, const char *key, char *out, const char *fallback) {
    const jnode *n = jget(obj, key);
    snprintf(out, TEXT, "%s", n && n->type == J_STR ? n->str : fallback);
}

static figure_t jfigure(const jnode *obj, const char *key) {
    figure_t f = {0, 0};
    f.present = jnum(jget(obj, key), &f.value);
    return f;
}

/* ---- error names ------------------------------------------------------- */

static const struct { nvmlReturn_t code; const char *name, *text; } ERRORS[] = {
    {0, "SUCCESS", "Success"},
    {1, "UNINITIALIZED", "Uninitialized"},
    {2, "INVALID_ARGUMENT", "Invalid Argument"},
    {3, "NOT_SUPPORTED", "Not Supported"},
    {4, "NO_PERMISSION", "Insufficient Permissions"},
    {5, "ALREADY_INITIALIZED", "Already Initialized"},
    {6, "NOT_FOUND", "Not Found"},
    {7, "INSUFFICIENT_SIZE", "Insufficient Size"},
    {8, "INSUFFICIENT_POWER", "Insufficient External Power"},
    {9, "DRIVER_NOT_LOADED", "Driver Not Loaded"},
    {10, "TIMEOUT", "Timeout"},
    {11, "IRQ_ISSUE", "Interrupt request issue"},
    {12, "LIBRARY_NOT_FOUND", "NVML Shared Library Not Found"},
    {13, "FUNCTION_NOT_FOUND", "Function Not Found"},
    {14, "CORRUPTED_INFOROM", "Corrupted infoROM"},
    {15, "GPU_IS_LOST", "GPU is lost"},
    {16, "RESET_REQUIRED", "GPU requires restart"},
    {17, "OPERATING_SYSTEM", "The operating system has blocked the request."},
    {18, "LIB_RM_VERSION_MISMATCH", "RM has detected an NVML/RM version mismatch."},
    {19, "IN_USE", "In use by another client"},
    {20, "MEMORY", "Insufficient Memory"},
    {21, "NO_DATA", "No data"},
    {25, "ARGUMENT_VERSION_MISMATCH", "Argument version mismatch"},
    {26, "DEPRECATED", "Deprecated"},
    {27, "NOT_READY", "Not ready"},
    {28, "GPU_NOT_FOUND", "GPU not found"},
    {29, "INVALID_STATE", "Invalid state"},
    {999, "UNKNOWN", "Unknown Error"},
};
#define NERRORS (sizeof ERRORS / sizeof ERRORS[0])

static nvmlReturn_t jerror(const jnode *n) {
    long long code;
    if (jnum(n, &code)) return (nvmlReturn_t)code;
    if (!n || n->type != J_STR) return NVML_SUCCESS;
    const char *name = n->str;
    if (!strncmp(name, "NVML_ERROR_", 11)) name += 11;
    for (size_t i = 0; i < NERRORS; i++)
        if (!strcasecmp(ERRORS[i].name, name)) return ERRORS[i].code;
    fprintf(stderr, "fake libnvidia-ml: unknown error name '%s', using UNKNOWN\n", n->str);
    return NVML_ERROR_UNKNOWN;
}

/* nvmlEventType* by the name after "nvmlEventType" (as nvml.h and pynvml spell them). */
static const struct { const char *name; unsigned long long mask; } EVENT_TYPES[] = {
    {"SingleBitEccError", 0x1ULL},      {"DoubleBitEccError", 0x2ULL},
    {"PState", 0x4ULL},                 {"XidCriticalError", 0x8ULL},
    {"Clock", 0x10ULL},                 {"PowerSourceChange", 0x80ULL},
    {"MigConfigChange", 0x100ULL},      {"SingleBitEccErrorStorm", 0x200ULL},
    {"DramRetirementEvent", 0x400ULL},  {"DramRetirementFailure", 0x800ULL},
    {"NonFatalPoisonError", 0x1000ULL}, {"FatalPoisonError", 0x2000ULL},
    {"GpuUnavailableError", 0x4000ULL}, {"GpuRecoveryAction", 0x8000ULL},
};
#define NEVENT_TYPES (sizeof EVENT_TYPES / sizeof EVENT_TYPES[0])

/* An event type or mask: a number, a name, or a list of names; *ok 0 if absent or unknown. */
static unsigned long long jevent_types(const jnode *n, int *ok) {
    long long v;
    *ok = 1;
    if (jnum(n, &v)) return (unsigned long long)v;
    if (n && n->type == J_STR) {
        for (size_t i = 0; i < NEVENT_TYPES; i++)
            if (!strcmp(EVENT_TYPES[i].name, n->str)) return EVENT_TYPES[i].mask;
        fprintf(stderr, "fake libnvidia-ml: unknown event type '%s'\n", n->str);
    }
    if (n && n->type == J_ARR) {
        unsigned long long mask = 0;
        for (const jnode *c = n->child; c; c = c->next) {
            int one;
            mask |= jevent_types(c, &one);
        }
        return mask;
    }
    *ok = 0;
    return 0;
}

static int jflag(const jnode *obj, const char *key) {
    const jnode *n = jget(obj, key);
    return n && (n->type == J_BOOL || n->type == J_NUM) && n->num != 0;
}

/* ---- loading the state ------------------------------------------------- */

static void read_gpu(const jnode *obj, int index, gpu_t *g) {
    char fallback[TEXT];
    memset(g, 0, sizeof *g);
    snprintf(fallback, TEXT, "GPU-fa4e0000-0000-4000-8000-%012d", index);
    jtext(obj, "uuid", g->uuid, fallback);
    jtext(obj, "name", g->name, "NVIDIA Fake GPU");
    const jnode *lost = jget(obj, "lost");
    g->lost = lost && lost->type == J_BOOL && lost->num != 0;
    g->total = jfigure(obj, "memory_total");
    g->used = jfigure(obj, "memory_used");
    g->reserved = jfigure(obj, "memory_reserved");
    g->util_gpu = jfigure(obj, "utilization_gpu");
    g->util_mem = jfigure(obj, "utilization_memory");
    g->temp = jfigure(obj, "temperature");
    g->power = jfigure(obj, "power_mw");
    g->power_limit = jfigure(obj, "power_limit_mw");
    g->fan = jfigure(obj, "fan_speed");
    int ok;
    g->event_types.value = (long long)jevent_types(jget(obj, "event_types"), &ok);
    g->event_types.present = ok;
    const jnode *ecc = jget(obj, "ecc");
    if (ecc && ecc->type == J_OBJ) {
        g->ecc[0][0] = jfigure(ecc, "volatile_corrected");
        g->ecc[1][0] = jfigure(ecc, "volatile_uncorrected");
        g->ecc[0][1] = jfigure(ecc, "aggregate_corrected");
        g->ecc[1][1] = jfigure(ecc, "aggregate_uncorrected");
    }
    const jnode *retired = jget(obj, "retired_pages");
    if (retired && retired->type == J_OBJ) {
        g->has_retired = 1;
        jnum(jget(retired, "single_bit_ecc"), &g->retired[0]);
        jnum(jget(retired, "double_bit_ecc"), &g->retired[1]);
        g->retired_pending = jflag(retired, "pending");
    }
    const jnode *remap = jget(obj, "remapped_rows");
    if (remap && remap->type == J_OBJ) {
        long long v = 0;
        g->has_remap = 1;
        g->remap_corr = jnum(jget(remap, "correctable"), &v) ? (unsigned int)v : 0;
        g->remap_unc = jnum(jget(remap, "uncorrectable"), &v) ? (unsigned int)v : 0;
        g->remap_pending = (unsigned int)jflag(remap, "pending");
        g->remap_failure = (unsigned int)jflag(remap, "failure");
    }
    const jnode *procs = jget(obj, "processes");
    for (const jnode *p = procs ? procs->child : NULL; p && g->nprocs < MAX_PROCS; p = p->next) {
        proc_t *pr = &g->procs[g->nprocs++];
        long long v = 0;
        jnum(jget(p, "pid"), &v);
        pr->pid = (unsigned int)v;
        pr->used = jnum(jget(p, "used_memory"), &v) ? (unsigned long long)v : NOT_AVAILABLE;
        const jnode *type = jget(p, "type");
        const char *t = type && type->type == J_STR ? type->str : "compute";
        pr->kinds = !strcmp(t, "graphics") ? KIND_GRAPHICS
                    : !strcmp(t, "both")   ? KIND_COMPUTE | KIND_GRAPHICS
                                           : KIND_COMPUTE;
        const jnode *vanish = jget(p, "vanishes"), *appear = jget(p, "appears");
        pr->seen = vanish && vanish->num ? SEEN_COUNT_ONLY
                   : appear && appear->num ? SEEN_LIST_ONLY
                                          : SEEN_ALWAYS;
    }
}

static void read_rule(const jnode *obj, rule_t *r) {
    long long v;
    jtext(obj, "call", r->call, "*");
    r->gpu = jnum(jget(obj, "gpu"), &v) ? (int)v : -1;
    r->error = jerror(jget(obj, "error"));
    r->times = jnum(jget(obj, "times"), &v) ? (long)v : -1;
    r->delay_ms = jnum(jget(obj, "delay_ms"), &v) ? (long)v : 0;
}

static int parse_state(const char *text, state_t *s) {
    jparser jp = {text, 0};
    jnode *root = jvalue(&jp, 0);
    if (!root || jp.error || root->type != J_OBJ) { jfree(root); return 0; }
    memset(s, 0, sizeof *s);
    s->loaded = 1;
    s->init_error = jerror(jget(root, "init_error"));
    jtext(root, "driver_version", s->driver_version, "550.54.15");
    jtext(root, "nvml_version", s->nvml_version, "12.550.54.15");
    long long v;
    s->cuda_version = jnum(jget(root, "cuda_driver_version"), &v) ? (int)v : 12040;
    const jnode *gpus = jget(root, "gpus");
    for (const jnode *g = gpus ? gpus->child : NULL; g && s->ngpus < MAX_GPUS; g = g->next) {
        read_gpu(g, s->ngpus, &s->gpus[s->ngpus]);
        s->ngpus++;
    }
    const jnode *rules = jget(root, "errors");
    for (const jnode *r = rules ? rules->child : NULL; r && s->nrules < MAX_RULES; r = r->next)
        read_rule(r, &s->rules[s->nrules++]);
    const jnode *events = jget(root, "events");
    for (const jnode *e = events ? events->child : NULL; e && s->nevents < MAX_EVENTS; e = e->next) {
        event_t *ev = &s->events[s->nevents++];
        int ok;
        ev->id = jnum(jget(e, "id"), &v) ? v : s->nevents;
        ev->gpu = jnum(jget(e, "gpu"), &v) ? (int)v : 0;
        ev->type = jevent_types(jget(e, "type"), &ok);
        if (!ok) ev->type = 0x8ULL; /* nvmlEventTypeXidCriticalError */
        ev->data = jnum(jget(e, "data"), &v) ? (unsigned long long)v : 0;
    }
    jfree(root);
    return 1;
}

static sig_t_ file_signature(const char *path) {
    sig_t_ sig;
    struct stat st;
    memset(&sig, 0, sizeof sig);
    if (path && stat(path, &st) == 0) {
        sig.exists = 1;
        sig.dev = st.st_dev;
        sig.ino = st.st_ino;
        sig.size = st.st_size;
        sig.mtime = st.st_mtim;
    }
    return sig;
}

static int same_sig(const sig_t_ *a, const sig_t_ *b) {
    return a->exists == b->exists && a->dev == b->dev && a->ino == b->ino && a->size == b->size &&
           a->mtime.tv_sec == b->mtime.tv_sec && a->mtime.tv_nsec == b->mtime.tv_nsec;
}

/* Re-read the state file if it changed; with g_lock held. A file that does not
 * parse (half written by a writer that does not rename) keeps the last state. */
static void refresh(void) {
    const char *path = getenv("FAKE_NVML_STATE");
    sig_t_ sig = file_signature(path);
    if (g_state.loaded && same_sig(&sig, &g_sig)) return;
    if (!sig.exists) {
        if (g_sig.exists || !g_state.loaded) {
            fprintf(stderr, "fake libnvidia-ml: no state file (FAKE_NVML_STATE=%s): "
                            "reporting DRIVER_NOT_LOADED\n", path ? path : "unset");
        }
        memset(&g_state, 0, sizeof g_state);
        g_state.loaded = 1;
        g_state.init_error = NVML_ERROR_DRIVER_NOT_LOADED;
        g_sig = sig;
        return;
    }
    FILE *f = fopen(path, "rb");
    char *text = f ? calloc(1, (size_t)sig.size + 1) : NULL;
    size_t got = text ? fread(text, 1, (size_t)sig.size, f) : 0;
    if (f) fclose(f);
    static state_t parsed; /* large: not on the stack */
    if (text && got == (size_t)sig.size && parse_state(text, &parsed)) {
        g_state = parsed;
        g_sig = sig;
    } else if (!g_state.loaded) {
        fprintf(stderr, "fake libnvidia-ml: cannot parse %s\n", path);
    }
    free(text);
}

/* ---- the entry every function goes through ----------------------------- */

enum {
    F_nvmlInit, F_nvmlInit_v2, F_nvmlInitWithFlags, F_nvmlShutdown, F_nvmlSystemGetDriverVersion,
    F_nvmlSystemGetNVMLVersion, F_nvmlSystemGetCudaDriverVersion,
    F_nvmlSystemGetCudaDriverVersion_v2, F_nvmlDeviceGetCount, F_nvmlDeviceGetCount_v2,
    F_nvmlDeviceGetHandleByIndex, F_nvmlDeviceGetHandleByIndex_v2, F_nvmlDeviceGetHandleByUUID,
    F_nvmlDeviceGetIndex,
    F_nvmlDeviceGetUUID, F_nvmlDeviceGetName, F_nvmlDeviceGetMemoryInfo,
    F_nvmlDeviceGetMemoryInfo_v2, F_nvmlDeviceGetUtilizationRates, F_nvmlDeviceGetTemperature,
    F_nvmlDeviceGetTemperatureV, F_nvmlDeviceGetPowerUsage, F_nvmlDeviceGetEnforcedPowerLimit,
    F_nvmlDeviceGetPowerManagementLimit, F_nvmlDeviceGetFanSpeed,
    F_nvmlDeviceGetEncoderUtilization, F_nvmlDeviceGetDecoderUtilization,
    F_nvmlDeviceGetComputeRunningProcesses, F_nvmlDeviceGetComputeRunningProcesses_v2,
    F_nvmlDeviceGetComputeRunningProcesses_v3, F_nvmlDeviceGetGraphicsRunningProcesses,
    F_nvmlDeviceGetGraphicsRunningProcesses_v2, F_nvmlDeviceGetGraphicsRunningProcesses_v3,
    F_nvmlDeviceGetProcessUtilization, F_nvmlDeviceGetMigMode, F_nvmlDeviceIsMigDeviceHandle,
    F_nvmlDeviceGetPciInfo_v3, F_nvmlDeviceGetComputeMode, F_nvmlDeviceGetDisplayActive,
    F_nvmlDeviceGetPersistenceMode, F_nvmlDeviceGetPerformanceState,
    F_nvmlDeviceGetTotalEccErrors, F_nvmlDeviceGetDriverModel, F_nvmlDeviceGetDriverModel_v2,
    F_nvmlDeviceGetRetiredPages, F_nvmlDeviceGetRetiredPagesPendingStatus,
    F_nvmlDeviceGetRemappedRows, F_nvmlDeviceGetSupportedEventTypes, F_nvmlEventSetCreate,
    F_nvmlDeviceRegisterEvents, F_nvmlEventSetWait_v2, F_nvmlEventSetFree,
    F_COUNT
};
static const char *const NAMES[F_COUNT] = {
    "nvmlInit", "nvmlInit_v2", "nvmlInitWithFlags", "nvmlShutdown", "nvmlSystemGetDriverVersion",
    "nvmlSystemGetNVMLVersion", "nvmlSystemGetCudaDriverVersion",
    "nvmlSystemGetCudaDriverVersion_v2", "nvmlDeviceGetCount", "nvmlDeviceGetCount_v2",
    "nvmlDeviceGetHandleByIndex", "nvmlDeviceGetHandleByIndex_v2", "nvmlDeviceGetHandleByUUID",
    "nvmlDeviceGetIndex",
    "nvmlDeviceGetUUID", "nvmlDeviceGetName", "nvmlDeviceGetMemoryInfo",
    "nvmlDeviceGetMemoryInfo_v2", "nvmlDeviceGetUtilizationRates", "nvmlDeviceGetTemperature",
    "nvmlDeviceGetTemperatureV", "nvmlDeviceGetPowerUsage", "nvmlDeviceGetEnforcedPowerLimit",
    "nvmlDeviceGetPowerManagementLimit", "nvmlDeviceGetFanSpeed",
    "nvmlDeviceGetEncoderUtilization", "nvmlDeviceGetDecoderUtilization",
    "nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetComputeRunningProcesses_v2",
    "nvmlDeviceGetComputeRunningProcesses_v3", "nvmlDeviceGetGraphicsRunningProcesses",
    "nvmlDeviceGetGraphicsRunningProcesses_v2", "nvmlDeviceGetGraphicsRunningProcesses_v3",
    "nvmlDeviceGetProcessUtilization", "nvmlDeviceGetMigMode", "nvmlDeviceIsMigDeviceHandle",
    "nvmlDeviceGetPciInfo_v3", "nvmlDeviceGetComputeMode", "nvmlDeviceGetDisplayActive",
    "nvmlDeviceGetPersistenceMode", "nvmlDeviceGetPerformanceState",
    "nvmlDeviceGetTotalEccErrors", "nvmlDeviceGetDriverModel", "nvmlDeviceGetDriverModel_v2",
    "nvmlDeviceGetRetiredPages", "nvmlDeviceGetRetiredPagesPendingStatus",
    "nvmlDeviceGetRemappedRows", "nvmlDeviceGetSupportedEventTypes", "nvmlEventSetCreate",
    "nvmlDeviceRegisterEvents", "nvmlEventSetWait_v2", "nvmlEventSetFree",
};

_Static_assert(F_COUNT <= (int)(sizeof g_calls / sizeof g_calls[0]), "g_calls too small");

static int rule_matches(const rule_t *r, const char *call, int gpu) {
    if (r->times == 0 || (r->gpu >= 0 && r->gpu != gpu)) return 0;
    size_t n = strlen(r->call);
    if (n && r->call[n - 1] == '*') return !strncmp(r->call, call, n - 1);
    return !strcmp(r->call, call);
}

static void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) == -1 && errno == EINTR) {}
}

/* Sleep for an injected delay, outside the lock; -1 waits until the state file changes. */
static void delay(long ms, const sig_t_ *seen) {
    if (ms > 0) { sleep_ms(ms); return; }
    const char *path = getenv("FAKE_NVML_STATE");
    for (;;) {
        sleep_ms(5);
        sig_t_ now = file_signature(path);
        if (!same_sig(&now, seen)) return;
    }
}

/*
 * Start a call: count it, reload the state, check initialisation and the
 * device handle, apply a lost GPU and the first matching injected rule.
 * Returns NVML_SUCCESS with g_lock held (the caller must leave()), or an
 * error with the lock released. *gpu gets the device's state entry.
 */
static nvmlReturn_t enter(int fn, nvmlDevice_t dev, int want_init, gpu_t **gpu) {
    pthread_mutex_lock(&g_lock);
    g_calls[fn]++;
    refresh();
    nvmlReturn_t err = NVML_SUCCESS;
    int index = -1;
    if (want_init && g_refcount == 0) err = NVML_ERROR_UNINITIALIZED;
    if (!err && dev) {
        if (dev < g_handles || dev >= g_handles + MAX_GPUS || dev - g_handles >= g_state.ngpus)
            err = NVML_ERROR_INVALID_ARGUMENT;
        else
            index = (int)(dev - g_handles);
    }
    if (!err && index >= 0 && g_state.gpus[index].lost) err = NVML_ERROR_GPU_IS_LOST;
    long wait = 0;
    for (int i = 0; !err && i < g_state.nrules; i++) {
        rule_t *r = &g_state.rules[i];
        if (!rule_matches(r, NAMES[fn], index)) continue;
        if (r->times > 0) r->times--;
        err = r->error;
        wait = r->delay_ms;
        break;
    }
    if (wait) {
        sig_t_ seen = g_sig;
        pthread_mutex_unlock(&g_lock);
        delay(wait, &seen);
        pthread_mutex_lock(&g_lock);
        refresh();
        if (!err && index >= g_state.ngpus) err = NVML_ERROR_INVALID_ARGUMENT;
    }
    if (err) {
        pthread_mutex_unlock(&g_lock);
        return err;
    }
    if (gpu) *gpu = index >= 0 ? &g_state.gpus[index] : NULL;
    return NVML_SUCCESS;
}

static nvmlReturn_t leave(nvmlReturn_t ret) {
    pthread_mutex_unlock(&g_lock);
    return ret;
}

/* enter() for a per-device call: a NULL handle is an invalid argument. */
static nvmlReturn_t enter_dev(int fn, nvmlDevice_t dev, gpu_t **gpu) {
    if (!dev) {
        pthread_mutex_lock(&g_lock);
        g_calls[fn]++;
        pthread_mutex_unlock(&g_lock);
        return NVML_ERROR_INVALID_ARGUMENT;
    }
    return enter(fn, dev, 1, gpu);
}

static nvmlReturn_t copy_text(const char *text, char *out, unsigned int length) {
    if (!out) return NVML_ERROR_INVALID_ARGUMENT;
    if (strlen(text) + 1 > length) return NVML_ERROR_INSUFFICIENT_SIZE;
    memcpy(out, text, strlen(text) + 1);
    return NVML_SUCCESS;
}

/* A figure the state leaves out is NOT_SUPPORTED, as on a GPU without that sensor. */
#define FIGURE(fn, field)                                                             \
    EXPORT nvmlReturn_t fn(nvmlDevice_t device, unsigned int *out) {                  \
        gpu_t *g;                                                                     \
        nvmlReturn_t r = enter_dev(F_##fn, device, &g);                               \
        if (r) return r;                                                              \
        if (!out) return leave(NVML_ERROR_INVALID_ARGUMENT);                          \
        if (!g->field.present) return leave(NVML_ERROR_NOT_SUPPORTED);               \
        *out = (unsigned int)g->field.value;                                          \
        return leave(NVML_SUCCESS);                                                   \
    }

/* ---- init, shutdown, system -------------------------------------------- */

static nvmlReturn_t do_init(int fn) {
    nvmlReturn_t r = enter(fn, NULL, 0, NULL);
    if (r) return r;
    if (g_state.init_error) return leave(g_state.init_error);
    g_refcount++;
    return leave(NVML_SUCCESS);
}

EXPORT nvmlReturn_t nvmlInit(void) { return do_init(F_nvmlInit); }
EXPORT nvmlReturn_t nvmlInit_v2(void) { return do_init(F_nvmlInit_v2); }
EXPORT nvmlReturn_t nvmlInitWithFlags(unsigned int flags) {
    (void)flags;
    return do_init(F_nvmlInitWithFlags);
}

EXPORT nvmlReturn_t nvmlShutdown(void) {
    nvmlReturn_t r = enter(F_nvmlShutdown, NULL, 1, NULL);
    if (r) return r;
    g_refcount--;
    return leave(NVML_SUCCESS);
}

EXPORT const char *nvmlErrorString(nvmlReturn_t result) {
    for (size_t i = 0; i < NERRORS; i++)
        if (ERRORS[i].code == result) return ERRORS[i].text;
    return "Unknown Error";
}

EXPORT nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length) {
    nvmlReturn_t r = enter(F_nvmlSystemGetDriverVersion, NULL, 1, NULL);
    return r ? r : leave(copy_text(g_state.driver_version, version, length));
}

EXPORT nvmlReturn_t nvmlSystemGetNVMLVersion(char *version, unsigned int length) {
    nvmlReturn_t r = enter(F_nvmlSystemGetNVMLVersion, NULL, 0, NULL);
    return r ? r : leave(copy_text(g_state.nvml_version, version, length));
}

static nvmlReturn_t cuda_version(int fn, int *out) {
    nvmlReturn_t r = enter(fn, NULL, 0, NULL);
    if (r) return r;
    if (!out) return leave(NVML_ERROR_INVALID_ARGUMENT);
    *out = g_state.cuda_version;
    return leave(NVML_SUCCESS);
}
EXPORT nvmlReturn_t nvmlSystemGetCudaDriverVersion(int *v) {
    return cuda_version(F_nvmlSystemGetCudaDriverVersion, v);
}
EXPORT nvmlReturn_t nvmlSystemGetCudaDriverVersion_v2(int *v) {
    return cuda_version(F_nvmlSystemGetCudaDriverVersion_v2, v);
}

/* ---- devices ----------------------------------------------------------- */

static nvmlReturn_t device_count(int fn, unsigned int *count) {
    nvmlReturn_t r = enter(fn, NULL, 1, NULL);
    if (r) return r;
    if (!count) return leave(NVML_ERROR_INVALID_ARGUMENT);
    *count = (unsigned int)g_state.ngpus;
    return leave(NVML_SUCCESS);
}
EXPORT nvmlReturn_t nvmlDeviceGetCount(unsigned int *c) {
    return device_count(F_nvmlDeviceGetCount, c);
}
EXPORT nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *c) {
    return device_count(F_nvmlDeviceGetCount_v2, c);
}

static nvmlReturn_t handle_by_index(int fn, unsigned int index, nvmlDevice_t *device) {
    /* Enter through the handle so a lost GPU and per-GPU rules apply here too. */
    nvmlDevice_t probe = index < MAX_GPUS ? &g_handles[index] : NULL;
    nvmlReturn_t r = enter(fn, probe, 1, NULL);
    if (r) return r;
    if (!device) return leave(NVML_ERROR_INVALID_ARGUMENT);
    if (!probe) return leave(NVML_ERROR_INVALID_ARGUMENT);
    *device = probe;
    return leave(NVML_SUCCESS);
}
EXPORT nvmlReturn_t nvmlDeviceGetHandleByIndex(unsigned int i, nvmlDevice_t *d) {
    return handle_by_index(F_nvmlDeviceGetHandleByIndex, i, d);
}
EXPORT nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int i, nvmlDevice_t *d) {
    return handle_by_index(F_nvmlDeviceGetHandleByIndex_v2, i, d);
}

EXPORT nvmlReturn_t nvmlDeviceGetHandleByUUID(const char *uuid, nvmlDevice_t *device) {
    nvmlReturn_t r = enter(F_nvmlDeviceGetHandleByUUID, NULL, 1, NULL);
    if (r) return r;
    if (!uuid || !device) return leave(NVML_ERROR_INVALID_ARGUMENT);
    for (int i = 0; i < g_state.ngpus; i++) {
        if (strcmp(g_state.gpus[i].uuid, uuid)) continue;
        if (g_state.gpus[i].lost) return leave(NVML_ERROR_GPU_IS_LOST);
        *device = &g_handles[i];
        return leave(NVML_SUCCESS);
    }
    return leave(NVML_ERROR_NOT_FOUND);
}

EXPORT nvmlReturn_t nvmlDeviceGetIndex(nvmlDevice_t device, unsigned int *index) {
    nvmlReturn_t r = enter_dev(F_nvmlDeviceGetIndex, device, NULL);
    if (r) return r;
    if (!index) return leave(NVML_ERROR_INVALID_ARGUMENT);
    *index = (unsigned int)(device - g_handles);
    return leave(NVML_SUCCESS);
}

EXPORT nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t device, char *uuid, unsigned int length) {
    gpu_t *g;
    nvmlReturn_t r = enter_dev(F_nvmlDeviceGetUUID, device, &g);
    return r ? r : leave(copy_text(g->uuid, uuid, length));
}

EXPORT nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t device, char *name, unsigned int length) {
    gpu_t *g;
    nvmlReturn_t r = enter_dev(F_nvmlDeviceGetName, device, &g);
    return r ? r : leave(copy_text(g->name, name, length));
}

/* v1 "used" includes what the driver reserves; v2 reports it apart (nvml.h, driver 510+). */
EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t device, nvmlMemory_t *memory) {
    gpu_t *g;
    nvmlReturn_t r = enter_dev(F_nvmlDeviceGetMemoryInfo, device, &g);
    if (r) return r;
    if (!memory) return leave(NVML_ERROR_INVALID_ARGUMENT);
    if (!g->total.present) return leave(NVML_ERROR_NOT_SUPPORTED);
    unsigned long long total = (unsigned long long)g->total.value;
    unsigned long long used = (unsigned long long)(g->used.value + g->reserved.value);
    memory->total = total;
    memory->used = used;
    memory->free = total > used ? total - used : 0;
    return leave(NVML_SUCCESS);
}

EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t device, nvmlMemory_v2_t *memory) {
    gpu_t *g;
    nvmlReturn_t r = enter_dev(F_nvmlDeviceGetMemoryInfo_v2, device, &g);
    if (r) return r;
    if (!memory) return leave(NVML_ERROR_INVALID_ARGUMENT);
    if (memory->version != nvmlMemory_v2) return leave(NVML_ERROR_ARGUMENT_VERSION_MISMATCH);
    if (!g->total.present) return leave(NVML_ERROR_NOT_SUPPORTED);
    unsigned long long total = (unsigned long long)g->total.value;
    unsigned long long used = (unsigned long long)g->used.value;
    unsigned long long reserved = (unsigned long long)g->reserved.value;
    memory->total = total;
    memory->reserved = reserved;
    memory->used = used;
    memory->free = total > used + reserved ? total - used - reserved : 0;
    return leave(NVML_SUCCESS);
}

EXPORT nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t device, nvmlUtilization_t *u) {
    gpu_t *g;
    nvmlReturn_t r = enter_dev(F_nvmlDeviceGetUtilizationRates, device, &g);
    if (r) return r;
    if (!u) return leave(NVML_ERROR_INVALID_ARGUMENT);
    if (!g->util_gpu.present) return leave(NVML_ERROR_NOT_SUPPORTED);
    u->gpu = (unsigned int)g->util_gpu.value;
    u->memory = g->util_mem.present ? (unsigned int)g->util_mem.value : 0;
    return leave(NVML_SUCCESS);
}

EXPORT nvmlReturn_t nvmlDeviceGetTemperature(nvmlDevice_t device, int sensor, unsigned int *t) {
    gpu_t *g;
    nvmlReturn_t r = enter_dev(F_nvmlDeviceGetTemperature, device, &g);
    if (r) return r;
    if (!t || sensor != 0) return leave(NVML_ERROR_INVALID_ARGUMENT);
    if (!g->temp.present) return leave(NVML_ERROR_NOT_SUPPORTED);
    *t = (unsigned int)g->temp.value;
    return leave(NVML_SUCCESS);
}

EXPORT nvmlReturn_t nvmlDeviceGetTemperatureV(nvmlDevice_t device, nvmlTemperature_v1_t *t) {
    gpu_t *g;
    nvmlReturn_t r = enter_dev(F_nvmlDeviceGetTemperatureV, device, &g);
    if (r) return r;
    if (!t || t->sensorType != 0) return leave(NVML_ERROR_INVALID_ARGUMENT);
    if (t->version != nvmlTemperature_v1) return leave(NVML_ERROR_ARGUMENT_VERSION_MISMATCH);
    if (!g->temp.present) return leave(NVML_ERROR_NOT_SUPPORTED);
    t->temperature = (int)g->temp.value;
    return leave(NVML_SUCCESS);
}

FIGURE(nvmlDeviceGetPowerUsage, power)
FIGURE(nvmlDeviceGetEnforcedPowerLimit, power_limit)
FIGURE(nvmlDeviceGetPowerManagementLimit, power_limit)
FIGURE(nvmlDeviceGetFanSpeed, fan)

static nvmlReturn_t codec(int fn, nvmlDevice_t device, unsigned int *u, unsigned int *period) {
    nvmlReturn_t r = enter_dev(fn, device, NULL);
    if (r) return r;
    if (!u || !period) return leave(NVML_ERROR_INVALID_ARGUMENT);
    *u = 0;
    *period = 167000;
    return leave(NVML_SUCCESS);
}
EXPORT nvmlReturn_t nvmlDeviceGetEncoderUtilization(nvmlDevice_t d, unsigned *u, unsigned *p) {
    return codec(F_nvmlDeviceGetEncoderUtilization, d, u, p);
}
EXPORT nvmlReturn_t nvmlDeviceGetDecoderUtilization(nvmlDevice_t d, unsigned *u, unsigned *p) {
    return codec(F_nvmlDeviceGetDecoderUtilization, d, u, p);
}

/* Not a MIG-capable GPU: what a consumer or older datacenter card answers. */
EXPORT nvmlReturn_t nvmlDeviceGetMigMode(nvmlDevice_t device, unsigned int *cur, unsigned int *pend) {
    (void)cur;
    (void)pend;
    nvmlReturn_t r = enter_dev(F_nvmlDeviceGetMigMode, device, NULL);
    return r ? r : leave(NVML_ERROR_NOT_SUPPORTED);
}

EXPORT nvmlReturn_t nvmlDeviceIsMigDeviceHandle(nvmlDevice_t device, unsigned int *is_mig) {
    nvmlReturn_t r = enter_dev(F_nvmlDeviceIsMigDeviceHandle, device, NULL);
    if (r) return r;
    if (!is_mig) return leave(NVML_ERROR_INVALID_ARGUMENT);
    *is_mig = 0;
    return leave(NVML_SUCCESS);
}

/* No utilisation samples recorded: NVML's answer when nothing ran since lastSeenTimeStamp. */
EXPORT nvmlReturn_t nvmlDeviceGetProcessUtilization(nvmlDevice_t device, void *samples,
                                                    unsigned int *count,
                                                    unsigned long long last_seen) {
    (void)samples;
    (void)last_seen;
    nvmlReturn_t r = enter_dev(F_nvmlDeviceGetProcessUtilization, device, NULL);
    if (r) return r;
    if (!count) return leave(NVML_ERROR_INVALID_ARGUMENT);
    *count = 0;
    return leave(NVML_ERROR_NOT_FOUND);
}

/* What nvitop's full-screen view reads besides the figures: fixed, plausible answers. */
EXPORT nvmlReturn_t nvmlDeviceGetPciInfo_v3(nvmlDevice_t device, nvmlPciInfo_t *pci) {
    nvmlReturn_t r = enter_dev(F_nvmlDeviceGetPciInfo_v3, device, NULL);
    if (r) return r;
    if (!pci) return leave(NVML_ERROR_INVALID_ARGUMENT);
    unsigned int bus = 0x10U + (unsigned int)(device - g_handles);
    memset(pci, 0, sizeof *pci);
    pci->bus = bus;
    pci->pciDeviceId = 0x20B510DEU;
    snprintf(pci->busIdLegacy, sizeof pci->busIdLegacy, "0000:%02X:00.0", bus);
    snprintf(pci->busId, sizeof pci->busId, "00000000:%02X:00.0", bus);
    return leave(NVML_SUCCESS);
}

static nvmlReturn_t constant(int fn, nvmlDevice_t device, unsigned int *out, unsigned int value) {
    nvmlReturn_t r = enter_dev(fn, device, NULL);
    if (r) return r;
    if (!out) return leave(NVML_ERROR_INVALID_ARGUMENT);
    *out = value;
    return leave(NVML_SUCCESS);
}
EXPORT nvmlReturn_t nvmlDeviceGetComputeMode(nvmlDevice_t d, unsigned int *mode) {
    return constant(F_nvmlDeviceGetComputeMode, d, mode, 0); /* NVML_COMPUTEMODE_DEFAULT */
}
EXPORT nvmlReturn_t nvmlDeviceGetDisplayActive(nvmlDevice_t d, unsigned int *active) {
    return constant(F_nvmlDeviceGetDisplayActive, d, active, 0);
}
EXPORT nvmlReturn_t nvmlDeviceGetPersistenceMode(nvmlDevice_t d, unsigned int *mode) {
    return constant(F_nvmlDeviceGetPersistenceMode, d, mode, 1);
}
EXPORT nvmlReturn_t nvmlDeviceGetPerformanceState(nvmlDevice_t d, unsigned int *state) {
    return constant(F_nvmlDeviceGetPerformanceState, d, state, 0); /* P0 */
}

/*
 * errorType: NVML_MEMORY_ERROR_TYPE_CORRECTED 0, _UNCORRECTED 1; counterType:
 * NVML_VOLATILE_ECC 0 (since the driver loaded), NVML_AGGREGATE_ECC 1 (lifetime).
 * A counter the state leaves out is NOT_SUPPORTED, as with ECC off or on a GPU without it.
 */
EXPORT nvmlReturn_t nvmlDeviceGetTotalEccErrors(nvmlDevice_t device, int error_type,
                                                int counter_type, unsigned long long *count) {
    gpu_t *g;
    nvmlReturn_t r = enter_dev(F_nvmlDeviceGetTotalEccErrors, device, &g);
    if (r) return r;
    if (!count || error_type < 0 || error_type > 1 || counter_type < 0 || counter_type > 1)
        return leave(NVML_ERROR_INVALID_ARGUMENT);
    figure_t f = g->ecc[error_type][counter_type];
    if (!f.present) return leave(NVML_ERROR_NOT_SUPPORTED);
    *count = (unsigned long long)f.value;
    return leave(NVML_SUCCESS);
}

/*
 * Page retirement (Kepler to Volta; Ampere and later remap rows instead and answer
 * NOT_SUPPORTED). cause: NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS 0,
 * _DOUBLE_BIT_ECC_ERROR 1. The two-call protocol of the process lists: a count too
 * small (0 with no buffer, as pynvml's first call) answers INSUFFICIENT_SIZE and the
 * count (SUCCESS when there are none), then the addresses are filled.
 */
EXPORT nvmlReturn_t nvmlDeviceGetRetiredPages(nvmlDevice_t device, int cause,
                                              unsigned int *count, unsigned long long *addresses) {
    gpu_t *g;
    nvmlReturn_t r = enter_dev(F_nvmlDeviceGetRetiredPages, device, &g);
    if (r) return r;
    if (!count || cause < 0 || cause > 1) return leave(NVML_ERROR_INVALID_ARGUMENT);
    if (!g->has_retired) return leave(NVML_ERROR_NOT_SUPPORTED);
    unsigned int n = (unsigned int)g->retired[cause];
    if (!addresses || *count < n) {
        *count = n;
        return leave(n ? NVML_ERROR_INSUFFICIENT_SIZE : NVML_SUCCESS);
    }
    for (unsigned int i = 0; i < n; i++)
        addresses[i] = ((unsigned long long)(cause + 1) << 32) | ((unsigned long long)i << 12);
    *count = n;
    return leave(NVML_SUCCESS);
}

/* nvmlEnableState_t: 1 when retired pages wait for the next reset (or reboot) to be retired. */
EXPORT nvmlReturn_t nvmlDeviceGetRetiredPagesPendingStatus(nvmlDevice_t device, int *pending) {
    gpu_t *g;
    nvmlReturn_t r = enter_dev(F_nvmlDeviceGetRetiredPagesPendingStatus, device, &g);
    if (r) return r;
    if (!pending) return leave(NVML_ERROR_INVALID_ARGUMENT);
    if (!g->has_retired) return leave(NVML_ERROR_NOT_SUPPORTED);
    *pending = g->retired_pending;
    return leave(NVML_SUCCESS);
}

/* Row remapping (Ampere and later): rows remapped for correctable and uncorrectable
 * errors, a remap waiting for the next reset, and whether a remap ever failed. */
EXPORT nvmlReturn_t nvmlDeviceGetRemappedRows(nvmlDevice_t device, unsigned int *corr,
                                              unsigned int *unc, unsigned int *pending,
                                              unsigned int *failure) {
    gpu_t *g;
    nvmlReturn_t r = enter_dev(F_nvmlDeviceGetRemappedRows, device, &g);
    if (r) return r;
    if (!corr || !unc || !pending || !failure) return leave(NVML_ERROR_INVALID_ARGUMENT);
    if (!g->has_remap) return leave(NVML_ERROR_NOT_SUPPORTED);
    *corr = g->remap_corr;
    *unc = g->remap_unc;
    *pending = g->remap_pending;
    *failure = g->remap_failure;
    return leave(NVML_SUCCESS);
}

/* ---- events ------------------------------------------------------------ */

static int set_valid(nvmlEventSet_t set) {
    return set && set >= g_sets && set < g_sets + MAX_SETS && set->used;
}

EXPORT nvmlReturn_t nvmlDeviceGetSupportedEventTypes(nvmlDevice_t device,
                                                     unsigned long long *types) {
    gpu_t *g;
    nvmlReturn_t r = enter_dev(F_nvmlDeviceGetSupportedEventTypes, device, &g);
    if (r) return r;
    if (!types) return leave(NVML_ERROR_INVALID_ARGUMENT);
    if (!g->event_types.present) return leave(NVML_ERROR_NOT_SUPPORTED);
    *types = (unsigned long long)g->event_types.value;
    return leave(NVML_SUCCESS);
}

EXPORT nvmlReturn_t nvmlEventSetCreate(nvmlEventSet_t *set) {
    nvmlReturn_t r = enter(F_nvmlEventSetCreate, NULL, 1, NULL);
    if (r) return r;
    if (!set) return leave(NVML_ERROR_INVALID_ARGUMENT);
    for (int i = 0; i < MAX_SETS; i++) {
        if (g_sets[i].used) continue;
        memset(&g_sets[i], 0, sizeof g_sets[i]);
        g_sets[i].used = 1;
        *set = &g_sets[i];
        return leave(NVML_SUCCESS);
    }
    return leave(NVML_ERROR_MEMORY);
}

/* Types the GPU does not support make the whole call NOT_SUPPORTED, as nvml.h says.
 * Events already in the state when a GPU is first registered are never delivered. */
EXPORT nvmlReturn_t nvmlDeviceRegisterEvents(nvmlDevice_t device, unsigned long long types,
                                             nvmlEventSet_t set) {
    gpu_t *g;
    nvmlReturn_t r = enter_dev(F_nvmlDeviceRegisterEvents, device, &g);
    if (r) return r;
    if (!set_valid(set)) return leave(NVML_ERROR_INVALID_ARGUMENT);
    if (!g->event_types.present || (types & ~(unsigned long long)g->event_types.value))
        return leave(NVML_ERROR_NOT_SUPPORTED);
    int index = (int)(device - g_handles);
    if (!set->mask[index]) {
        long long newest = 0;
        for (int i = 0; i < g_state.nevents; i++)
            if (g_state.events[i].id > newest) newest = g_state.events[i].id;
        set->seen[index] = newest;
    }
    set->mask[index] |= types;
    return leave(NVML_SUCCESS);
}

/* With g_lock held: the oldest undelivered event for the set (SUCCESS), else GPU_IS_LOST
 * when a registered GPU is lost (its pending events come first), else NOT_FOUND. */
static nvmlReturn_t next_event(nvmlEventSet_t set, nvmlEventData_t *data) {
    const event_t *best = NULL;
    for (int i = 0; i < g_state.nevents; i++) {
        const event_t *e = &g_state.events[i];
        if (e->gpu < 0 || e->gpu >= g_state.ngpus || !(set->mask[e->gpu] & e->type)) continue;
        if (e->id <= set->seen[e->gpu] || (best && best->id <= e->id)) continue;
        best = e;
    }
    if (best) {
        set->seen[best->gpu] = best->id;
        memset(data, 0, sizeof *data);
        data->device = &g_handles[best->gpu];
        data->eventType = best->type;
        data->eventData = best->data;
        data->gpuInstanceId = 0xFFFFFFFFU; /* not a MIG device */
        data->computeInstanceId = 0xFFFFFFFFU;
        return NVML_SUCCESS;
    }
    for (int i = 0; i < g_state.ngpus; i++)
        if (set->mask[i] && g_state.gpus[i].lost) return NVML_ERROR_GPU_IS_LOST;
    return NVML_ERROR_NOT_FOUND;
}

static long elapsed_ms(const struct timespec *since) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (now.tv_sec - since->tv_sec) * 1000L + (now.tv_nsec - since->tv_nsec) / 1000000L;
}

/* Waits up to timeout_ms for an event, polling the state file every 5 ms outside the
 * lock (other threads' calls go on); TIMEOUT when none came. Injected rules apply once
 * per call, so {"call": "nvmlEventSetWait_v2", "delay_ms": -1} is a wait that hangs. */
EXPORT nvmlReturn_t nvmlEventSetWait_v2(nvmlEventSet_t set, nvmlEventData_t *data,
                                        unsigned int timeout_ms) {
    struct timespec start;
    clock_gettime(CLOCK_MONOTONIC, &start);
    nvmlReturn_t r = enter(F_nvmlEventSetWait_v2, NULL, 1, NULL);
    if (r) return r;
    if (!data || !set_valid(set)) return leave(NVML_ERROR_INVALID_ARGUMENT);
    for (;;) {
        if (g_refcount == 0) return leave(NVML_ERROR_UNINITIALIZED);
        nvmlReturn_t got = next_event(set, data);
        if (got != NVML_ERROR_NOT_FOUND) return leave(got);
        long left = (long)timeout_ms - elapsed_ms(&start);
        if (left <= 0) return leave(NVML_ERROR_TIMEOUT);
        pthread_mutex_unlock(&g_lock);
        sleep_ms(left < 5 ? left : 5);
        pthread_mutex_lock(&g_lock);
        refresh();
        if (!set->used) return leave(NVML_ERROR_INVALID_ARGUMENT); /* freed meanwhile */
    }
}

EXPORT nvmlReturn_t nvmlEventSetFree(nvmlEventSet_t set) {
    nvmlReturn_t r = enter(F_nvmlEventSetFree, NULL, 1, NULL);
    if (r) return r;
    if (!set_valid(set)) return leave(NVML_ERROR_INVALID_ARGUMENT);
    set->used = 0;
    return leave(NVML_SUCCESS);
}

/* Windows only (WDDM/TCC): Linux drivers export it and answer NOT_SUPPORTED. */
static nvmlReturn_t driver_model(int fn, nvmlDevice_t device) {
    nvmlReturn_t r = enter_dev(fn, device, NULL);
    return r ? r : leave(NVML_ERROR_NOT_SUPPORTED);
}
EXPORT nvmlReturn_t nvmlDeviceGetDriverModel(nvmlDevice_t d, unsigned int *c, unsigned int *p) {
    (void)c;
    (void)p;
    return driver_model(F_nvmlDeviceGetDriverModel, d);
}
EXPORT nvmlReturn_t nvmlDeviceGetDriverModel_v2(nvmlDevice_t d, unsigned int *c, unsigned int *p) {
    (void)c;
    (void)p;
    return driver_model(F_nvmlDeviceGetDriverModel_v2, d);
}

/* ---- running processes ------------------------------------------------- */

/*
 * NVML's two-call protocol: with infos NULL (or *count 0) it answers
 * INSUFFICIENT_SIZE and the number of processes (SUCCESS when there are none);
 * then it fills up to *count entries. A process marked "vanishes" is counted
 * but not listed, one marked "appears" is listed but not counted: the race
 * between the two calls on a real machine.
 */
static nvmlReturn_t processes(int fn, int kind, int version, nvmlDevice_t device,
                              unsigned int *count, void *infos) {
    gpu_t *g;
    nvmlReturn_t r = enter_dev(fn, device, &g);
    if (r) return r;
    if (!count) return leave(NVML_ERROR_INVALID_ARGUMENT);
    int sizing = infos == NULL || *count == 0;
    unsigned int n = 0;
    for (int i = 0; i < g->nprocs; i++) {
        const proc_t *p = &g->procs[i];
        if ((p->kinds & kind) && p->seen != (sizing ? SEEN_LIST_ONLY : SEEN_COUNT_ONLY)) n++;
    }
    if (sizing) {
        *count = n;
        return leave(n ? NVML_ERROR_INSUFFICIENT_SIZE : NVML_SUCCESS);
    }
    if (n > *count) {
        *count = n;
        return leave(NVML_ERROR_INSUFFICIENT_SIZE);
    }
    unsigned int k = 0;
    for (int i = 0; i < g->nprocs; i++) {
        const proc_t *p = &g->procs[i];
        if (!(p->kinds & kind) || p->seen == SEEN_COUNT_ONLY) continue;
        if (version == 1) {
            nvmlProcessInfo_v1_t *out = (nvmlProcessInfo_v1_t *)infos + k++;
            out->pid = p->pid;
            out->usedGpuMemory = p->used;
        } else {
            nvmlProcessInfo_v2_t *out = (nvmlProcessInfo_v2_t *)infos + k++;
            out->pid = p->pid;
            out->usedGpuMemory = p->used;
            out->gpuInstanceId = 0xFFFFFFFFU; /* not a MIG device */
            out->computeInstanceId = 0xFFFFFFFFU;
        }
    }
    *count = k;
    return leave(NVML_SUCCESS);
}

#define PROCESSES(fn, kind, version)                                                   \
    EXPORT nvmlReturn_t fn(nvmlDevice_t device, unsigned int *count, void *infos) {    \
        return processes(F_##fn, kind, version, device, count, infos);                 \
    }
PROCESSES(nvmlDeviceGetComputeRunningProcesses, KIND_COMPUTE, 1)
PROCESSES(nvmlDeviceGetComputeRunningProcesses_v2, KIND_COMPUTE, 2)
PROCESSES(nvmlDeviceGetComputeRunningProcesses_v3, KIND_COMPUTE, 3)
PROCESSES(nvmlDeviceGetGraphicsRunningProcesses, KIND_GRAPHICS, 1)
PROCESSES(nvmlDeviceGetGraphicsRunningProcesses_v2, KIND_GRAPHICS, 2)
PROCESSES(nvmlDeviceGetGraphicsRunningProcesses_v3, KIND_GRAPHICS, 3)

/* ---- for tests: how often each function was called --------------------- */

EXPORT long fakeNvmlCallCount(const char *name) {
    long n = -1;
    pthread_mutex_lock(&g_lock);
    for (int i = 0; i < F_COUNT; i++)
        if (!strcmp(NAMES[i], name)) n = g_calls[i];
    pthread_mutex_unlock(&g_lock);
    return n;
}

/* Forget every nvmlInit, every call count and the loaded state (between in-process tests). */
EXPORT void fakeNvmlReset(void) {
    pthread_mutex_lock(&g_lock);
    memset(g_calls, 0, sizeof g_calls);
    memset(g_sets, 0, sizeof g_sets);
    g_refcount = 0;
    g_state.loaded = 0;
    pthread_mutex_unlock(&g_lock);
}
