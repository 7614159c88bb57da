/* The fake's GPUs: a built-in 8x H100 node, or a JSON topology file (docs/fake-nvml.md).
 *
 * The JSON reader is a small schema-driven recursive descent: it accepts exactly the documented
 * keys, so a typo is an error with its line and column rather than a silently ignored field.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fake_nvml.h"

#define MIB (1024ULL * 1024ULL)
#define TOPOLOGY_MAX_BYTES (1024 * 1024)

/* ---- the built-in node ---- */

/* PCI buses of the eight GPUs of an HGX H100 board as they commonly enumerate (domain 0). */
static const unsigned int H100_BUSES[8] = {0x18, 0x2a, 0x3a, 0x5d, 0x9a, 0xab, 0xba, 0xdb};

#define H100_NAME "NVIDIA H100 80GB HBM3"
#define H100_PCI_DEVICE_ID 0x233010DEu    /* device 0x2330 (H100 SXM5 80GB), vendor 0x10DE */
#define H100_PCI_SUBSYSTEM_ID 0x16C110DEu
#define H100_MEMORY_MIB 81559ULL          /* what nvidia-smi shows as the total of an H100 80GB */
/* ECC (single/double bit), P-state, XID, clock and MIG change: the event set every driver since
 * R450 reports for an H100. The GPU-unavailable and recovery-action events came with later drivers
 * (R565/R570) and are left out by default, so a consumer is tested without them; a topology file
 * adds them ("supported_events"). */
#define H100_SUPPORTED_EVENTS                                                                  \
    (NVML_EVENT_SINGLE_BIT_ECC | NVML_EVENT_DOUBLE_BIT_ECC | NVML_EVENT_PSTATE |            \
     NVML_EVENT_XID_CRITICAL_ERROR | NVML_EVENT_CLOCK | NVML_EVENT_MIG_CONFIG_CHANGE)
#define DEFAULT_DRIVER_VERSION "570.133.20" /* R570: has NVML_FI_DEV_GET_GPU_RECOVERY_ACTION */
#define DEFAULT_CUDA_DRIVER_VERSION 12080     /* CUDA 12.8, what R570 ships */

/* splitmix64: a fixed, well-mixed sequence, so the default UUIDs look random yet never change. */
static unsigned long long splitmix64(unsigned long long *state)
{
    unsigned long long z = (*state += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

static void format_uuid(unsigned long long *state, char *out, size_t outlen)
{
    unsigned long long hi = splitmix64(state);
    unsigned long long lo = splitmix64(state);
    snprintf(out, outlen, "GPU-%08llx-%04llx-%04llx-%04llx-%012llx", hi >> 32, (hi >> 16) & 0xFFFFULL,
             hi & 0xFFFFULL, lo >> 48, lo & 0xFFFFFFFFFFFFULL);
}

static void default_uuid(unsigned int index, char *out, size_t outlen)
{
    unsigned long long state = 0x6E7673656E74696EULL ^ ((unsigned long long)index << 32); /* "nvsentin" */
    format_uuid(&state, out, outlen);
}

/* A 13-digit board serial (no leading zero), like those nvidia-smi shows for an H100. */
static void format_serial(unsigned long long *state, char *out, size_t outlen)
{
    snprintf(out, outlen, "%llu", 1000000000000ULL + splitmix64(state) % 9000000000000ULL);
}

static void default_serial(unsigned int index, char *out, size_t outlen)
{
    unsigned long long state = 0x73657269616C6E6FULL ^ ((unsigned long long)index << 32); /* "serialno" */
    format_serial(&state, out, outlen);
}

/* FNV-1a over the text, ASCII letters folded to lower case (UUIDs compare case-insensitively). */
static unsigned long long fnv1a(const char *text)
{
    unsigned long long h = 0xCBF29CE484222325ULL;
    for (const unsigned char *c = (const unsigned char *)text; *c; c++) {
        unsigned char b = (*c >= 'A' && *c <= 'Z') ? (unsigned char)(*c + 32) : *c;
        h = (h ^ b) * 0x100000001B3ULL;
    }
    return h;
}

void fake_replacement_uuid(const char *old_uuid, char *out, size_t outlen)
{
    unsigned long long state = fnv1a(old_uuid);
    format_uuid(&state, out, outlen);
}

void fake_replacement_serial(const char *old_serial, char *out, size_t outlen)
{
    unsigned long long state = fnv1a(old_serial);
    format_serial(&state, out, outlen);
}

static void default_gpu(unsigned int index, struct fake_gpu *gpu)
{
    memset(gpu, 0, sizeof(*gpu));
    gpu->index = index;
    snprintf(gpu->name, sizeof(gpu->name), "%s", H100_NAME);
    default_uuid(index, gpu->uuid, sizeof(gpu->uuid));
    gpu->domain = index / 8; /* GPUs past the first eight go to further PCI domains */
    gpu->bus = H100_BUSES[index % 8];
    gpu->device = 0;
    gpu->pci_device_id = H100_PCI_DEVICE_ID;
    gpu->pci_subsystem_id = H100_PCI_SUBSYSTEM_ID;
    gpu->memory_total = H100_MEMORY_MIB * MIB;
    gpu->memory_reserved = 0;
    gpu->supported_events = H100_SUPPORTED_EVENTS;
    default_serial(index, gpu->serial, sizeof(gpu->serial));
    gpu->recovery_action_supported = -1; /* resolve_recovery_support() decides from the driver */
}

/* The major number of "570.133.20"; 0 when the string does not start with one. */
static unsigned long driver_major(const char *version)
{
    char *end = NULL;
    if (version[0] < '0' || version[0] > '9')
        return 0;
    errno = 0;
    unsigned long major = strtoul(version, &end, 10);
    return (errno != 0 || (*end != '.' && *end != '\0')) ? 0 : major;
}

/* Field 230 exists from R565 on, unless the topology said so explicitly for this GPU. */
static void resolve_recovery_support(const struct fake_topology *t, struct fake_gpu *gpu)
{
    if (gpu->recovery_action_supported < 0)
        gpu->recovery_action_supported = driver_major(t->driver_version) >= FAKE_RECOVERY_ACTION_MIN_DRIVER;
}

static void derive_nvml_version(struct fake_topology *t)
{
    /* NVML's version string is "<CUDA major>.<driver version>", e.g. "12.570.133.20" */
    snprintf(t->nvml_version, sizeof(t->nvml_version), "%d.%.64s", t->cuda_driver_version / 1000,
             t->driver_version);
}

void fake_default_topology(struct fake_topology *t, unsigned int count)
{
    memset(t, 0, sizeof(*t));
    snprintf(t->driver_version, sizeof(t->driver_version), "%s", DEFAULT_DRIVER_VERSION);
    t->cuda_driver_version = DEFAULT_CUDA_DRIVER_VERSION;
    derive_nvml_version(t);
    t->count = count;
    for (unsigned int i = 0; i < count; i++) {
        default_gpu(i, &t->gpus[i]);
        resolve_recovery_support(t, &t->gpus[i]);
    }
}

/* ---- JSON reader ---- */

struct jp {
    const char *s;
    size_t n, pos;
    size_t key_at; /* where the last object key started, for "unknown key" errors */
    char *err;
    size_t errlen;
};

__attribute__((format(printf, 2, 3))) static int jp_fail(struct jp *p, const char *fmt, ...)
{
    unsigned int line = 1, col = 1;
    for (size_t i = 0; i < p->pos && i < p->n; i++) {
        if (p->s[i] == '\n') {
            line++;
            col = 1;
        } else {
            col++;
        }
    }
    int used = snprintf(p->err, p->errlen, "line %u, column %u: ", line, col);
    if (used < 0 || (size_t)used >= p->errlen)
        return -1;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->err + used, p->errlen - (size_t)used, fmt, ap);
    va_end(ap);
    return -1;
}

static void jp_ws(struct jp *p)
{
    while (p->pos < p->n && (p->s[p->pos] == ' ' || p->s[p->pos] == '\t' || p->s[p->pos] == '\n' ||
                             p->s[p->pos] == '\r'))
        p->pos++;
}

static int jp_peek(struct jp *p)
{
    jp_ws(p);
    return p->pos < p->n ? (unsigned char)p->s[p->pos] : -1;
}

static int jp_expect(struct jp *p, char c, const char *what)
{
    if (jp_peek(p) != (unsigned char)c)
        return jp_fail(p, "expected %s", what);
    p->pos++;
    return 0;
}

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* A JSON string into out (NUL-terminated). Escapes are decoded; \u only below 0x80 (ASCII). */
static int jp_string(struct jp *p, char *out, size_t outlen, const char *what)
{
    if (jp_peek(p) != '"')
        return jp_fail(p, "expected %s (a string)", what);
    p->pos++;
    size_t len = 0;
    for (;;) {
        if (p->pos >= p->n)
            return jp_fail(p, "unterminated string");
        unsigned char c = (unsigned char)p->s[p->pos++];
        if (c == '"')
            break;
        if (c < 0x20)
            return jp_fail(p, "control character in string");
        if (c == '\\') {
            if (p->pos >= p->n)
                return jp_fail(p, "unterminated string");
            char e = p->s[p->pos++];
            switch (e) {
            case '"': c = '"'; break;
            case '\\': c = '\\'; break;
            case '/': c = '/'; break;
            case 'b': c = '\b'; break;
            case 'f': c = '\f'; break;
            case 'n': c = '\n'; break;
            case 'r': c = '\r'; break;
            case 't': c = '\t'; break;
            case 'u': {
                int v = 0;
                for (int k = 0; k < 4; k++) {
                    int h = p->pos < p->n ? hexval((unsigned char)p->s[p->pos]) : -1;
                    if (h < 0)
                        return jp_fail(p, "bad \\u escape");
                    v = v * 16 + h;
                    p->pos++;
                }
                if (v == 0 || v >= 0x80)
                    return jp_fail(p, "only ASCII \\u escapes are supported");
                c = (unsigned char)v;
                break;
            }
            default:
                return jp_fail(p, "bad escape \\%c", e);
            }
        }
        if (len + 1 >= outlen)
            return jp_fail(p, "%s is longer than %zu bytes", what, outlen - 1);
        out[len++] = (char)c;
    }
    out[len] = '\0';
    return 0;
}

/* A non-negative JSON integer, or a string holding one in decimal or 0x-hex. */
static int jp_uint(struct jp *p, unsigned long long max, unsigned long long *out, const char *what)
{
    int c = jp_peek(p);
    if (c == '"') {
        char buf[32];
        size_t at = p->pos;
        if (jp_string(p, buf, sizeof(buf), what) < 0)
            return -1;
        char *end = NULL;
        errno = 0;
        unsigned long long v = strtoull(buf, &end, 0);
        if (buf[0] == '\0' || buf[0] == '-' || *end != '\0' || errno != 0) {
            p->pos = at;
            return jp_fail(p, "%s must be a number (decimal, or a string in 0x hex)", what);
        }
        if (v > max) {
            p->pos = at;
            return jp_fail(p, "%s must be at most %llu", what, max);
        }
        *out = v;
        return 0;
    }
    if (c < '0' || c > '9')
        return jp_fail(p, "expected %s (a non-negative integer)", what);
    size_t at = p->pos;
    unsigned long long v = 0;
    while (p->pos < p->n && p->s[p->pos] >= '0' && p->s[p->pos] <= '9') {
        unsigned int d = (unsigned int)(p->s[p->pos] - '0');
        if (v > (max - d) / 10) {
            p->pos = at;
            return jp_fail(p, "%s must be at most %llu", what, max);
        }
        v = v * 10 + d;
        p->pos++;
    }
    if (p->pos < p->n && (p->s[p->pos] == '.' || p->s[p->pos] == 'e' || p->s[p->pos] == 'E'))
        return jp_fail(p, "%s must be an integer", what);
    if (p->s[at] == '0' && p->pos - at > 1) {
        p->pos = at;
        return jp_fail(p, "%s: leading zeros are not JSON", what);
    }
    *out = v;
    return 0;
}

static int jp_bool(struct jp *p, int *out, const char *what)
{
    jp_peek(p);
    if (p->n - p->pos >= 4 && strncmp(p->s + p->pos, "true", 4) == 0) {
        p->pos += 4;
        *out = 1;
    } else if (p->n - p->pos >= 5 && strncmp(p->s + p->pos, "false", 5) == 0) {
        p->pos += 5;
        *out = 0;
    } else {
        return jp_fail(p, "expected %s (true or false)", what);
    }
    int c = p->pos < p->n ? (unsigned char)p->s[p->pos] : -1;
    if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'))
        return jp_fail(p, "expected %s (true or false)", what);
    return 0;
}

/* Iterate an object: *first is 1 before the first key. Returns 1 with the key read and the ':'
 * consumed, 0 at the closing brace, -1 on error. */
static int jp_next_key(struct jp *p, int *first, char *key, size_t keylen, const char *where)
{
    if (*first) {
        if (jp_peek(p) != '{')
            return jp_fail(p, "expected an object for %s", where);
        p->pos++;
        if (jp_peek(p) == '}') {
            p->pos++;
            return 0;
        }
        *first = 0;
    } else {
        int c = jp_peek(p);
        if (c == '}') {
            p->pos++;
            return 0;
        }
        if (c != ',')
            return jp_fail(p, "expected ',' or '}' in %s", where);
        p->pos++;
    }
    jp_ws(p);
    p->key_at = p->pos;
    if (jp_string(p, key, keylen, "a key") < 0)
        return -1;
    if (jp_expect(p, ':', "':' after a key") < 0)
        return -1;
    jp_ws(p); /* so a value's errors point at the value */
    return 1;
}

/* Iterate an array: like jp_next_key; returns 1 when a value follows. */
static int jp_next_item(struct jp *p, int *first, const char *where)
{
    if (*first) {
        if (jp_peek(p) != '[')
            return jp_fail(p, "expected an array for %s", where);
        p->pos++;
        *first = 0;
        if (jp_peek(p) == ']') {
            p->pos++;
            return 0;
        }
        return 1;
    }
    int c = jp_peek(p);
    if (c == ']') {
        p->pos++;
        return 0;
    }
    if (c != ',')
        return jp_fail(p, "expected ',' or ']' in %s", where);
    p->pos++;
    return 1;
}

/* ---- the topology schema ---- */

enum {
    F_NAME = 1 << 0,
    F_UUID = 1 << 1,
    F_BUS_ID = 1 << 2,
    F_PCI_DEVICE_ID = 1 << 3,
    F_PCI_SUBSYSTEM_ID = 1 << 4,
    F_MEMORY = 1 << 5,
    F_RESERVED = 1 << 6,
    F_EVENTS = 1 << 7,
    F_SERIAL = 1 << 8,
    F_RECOVERY_SUPPORTED = 1 << 9,
};

struct gpu_spec {
    unsigned int set; /* F_* of the fields given */
    struct fake_gpu v;
};

static const struct {
    const char *name;
    unsigned long long bit;
} EVENT_NAMES[] = {
    {"single_bit_ecc", NVML_EVENT_SINGLE_BIT_ECC},
    {"double_bit_ecc", NVML_EVENT_DOUBLE_BIT_ECC},
    {"pstate", NVML_EVENT_PSTATE},
    {"xid", NVML_EVENT_XID_CRITICAL_ERROR},
    {"clock", NVML_EVENT_CLOCK},
    {"power_source_change", NVML_EVENT_POWER_SOURCE_CHANGE},
    {"mig_config_change", NVML_EVENT_MIG_CONFIG_CHANGE},
    {"single_bit_ecc_storm", NVML_EVENT_SBE_STORM},
    {"dram_retirement", NVML_EVENT_DRAM_RETIREMENT},
    {"dram_retirement_failure", NVML_EVENT_DRAM_RETIREMENT_FAIL},
    {"non_fatal_poison", NVML_EVENT_NON_FATAL_POISON},
    {"fatal_poison", NVML_EVENT_FATAL_POISON},
    {"gpu_unavailable", NVML_EVENT_GPU_UNAVAILABLE},
    {"gpu_recovery_action", NVML_EVENT_GPU_RECOVERY_ACTION},
};

static int parse_events(struct jp *p, unsigned long long *out, const char *where)
{
    if (jp_peek(p) != '[') {
        if (jp_uint(p, ~0ULL, out, "supported_events") < 0)
            return -1;
        if (*out & ~NVML_EVENT_ALL_KNOWN)
            return jp_fail(p, "supported_events of %s has unknown bits 0x%llx", where,
                           *out & ~NVML_EVENT_ALL_KNOWN);
        return 0;
    }
    int first = 1, r;
    *out = 0;
    while ((r = jp_next_item(p, &first, "supported_events")) == 1) {
        char name[48];
        size_t at = p->pos;
        if (jp_string(p, name, sizeof(name), "an event name") < 0)
            return -1;
        unsigned long long bit = 0;
        for (size_t i = 0; i < sizeof(EVENT_NAMES) / sizeof(EVENT_NAMES[0]); i++)
            if (strcmp(name, EVENT_NAMES[i].name) == 0)
                bit = EVENT_NAMES[i].bit;
        if (!bit) {
            p->pos = at;
            return jp_fail(p, "unknown event name \"%s\" in %s (see docs/fake-nvml.md)", name, where);
        }
        *out |= bit;
    }
    return r;
}

static int parse_bus_id(const char *text, struct fake_gpu *gpu)
{
    /* "00000000:18:00.0" (NVML) or "0000:18:00.0" (lspci); function must be 0 */
    unsigned int domain, bus, device, function;
    char tail;
    for (const char *c = text; *c; c++)
        if (hexval((unsigned char)*c) < 0 && *c != ':' && *c != '.')
            return -1;
    if (sscanf(text, "%8x:%2x:%2x.%1x%c", &domain, &bus, &device, &function, &tail) != 4)
        return -1;
    if (bus > 0xFF || device > 0x1F || function != 0)
        return -1;
    gpu->domain = domain;
    gpu->bus = bus;
    gpu->device = device;
    return 0;
}

int fake_valid_uuid(const char *uuid)
{
    if (strncmp(uuid, "GPU-", 4) != 0 || strlen(uuid) < 5)
        return 0;
    for (const char *c = uuid + 4; *c; c++)
        if (!((*c >= '0' && *c <= '9') || (*c >= 'a' && *c <= 'f') || (*c >= 'A' && *c <= 'F') ||
              *c == '-'))
            return 0;
    return 1;
}

/* 1 to 29 letters, digits or dashes: fits pynvml's 30-byte buffer, and one control-command word. */
int fake_valid_serial(const char *serial)
{
    size_t len = strlen(serial);
    if (len == 0 || len >= FAKE_SERIAL_LEN)
        return 0;
    for (const char *c = serial; *c; c++)
        if (!((*c >= '0' && *c <= '9') || (*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || *c == '-'))
            return 0;
    return 1;
}

/* One GPU object (or "defaults" when allow_identity is 0: no uuid or pci_bus_id there). */
static int parse_gpu(struct jp *p, struct gpu_spec *spec, int allow_identity, const char *where)
{
    int first = 1, r;
    char key[48];
    while ((r = jp_next_key(p, &first, key, sizeof(key), where)) == 1) {
        size_t at = p->pos, key_at = p->key_at;
        unsigned int bit;
        unsigned long long v;
        if (strcmp(key, "name") == 0) {
            bit = F_NAME;
            if (jp_string(p, spec->v.name, sizeof(spec->v.name), "name") < 0)
                return -1;
            if (spec->v.name[0] == '\0')
                return jp_fail(p, "name of %s is empty", where);
        } else if (strcmp(key, "uuid") == 0 && allow_identity) {
            bit = F_UUID;
            if (jp_string(p, spec->v.uuid, sizeof(spec->v.uuid), "uuid") < 0)
                return -1;
            if (!fake_valid_uuid(spec->v.uuid)) {
                p->pos = at;
                return jp_fail(p, "uuid of %s must look like GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx",
                               where);
            }
        } else if (strcmp(key, "pci_bus_id") == 0 && allow_identity) {
            char text[40];
            bit = F_BUS_ID;
            if (jp_string(p, text, sizeof(text), "pci_bus_id") < 0)
                return -1;
            if (parse_bus_id(text, &spec->v) < 0) {
                p->pos = at;
                return jp_fail(p, "pci_bus_id of %s must look like 00000000:18:00.0", where);
            }
        } else if (strcmp(key, "serial") == 0 && allow_identity) {
            char text[64];
            bit = F_SERIAL;
            if (jp_string(p, text, sizeof(text), "serial") < 0)
                return -1;
            if (!fake_valid_serial(text)) {
                p->pos = at;
                return jp_fail(p, "serial of %s must be 1 to %d letters, digits or dashes", where,
                               FAKE_SERIAL_LEN - 1);
            }
            memcpy(spec->v.serial, text, strlen(text) + 1);
        } else if (strcmp(key, "recovery_action_supported") == 0) {
            bit = F_RECOVERY_SUPPORTED;
            if (jp_bool(p, &spec->v.recovery_action_supported, "recovery_action_supported") < 0)
                return -1;
        } else if (strcmp(key, "pci_device_id") == 0) {
            bit = F_PCI_DEVICE_ID;
            if (jp_uint(p, 0xFFFFFFFFULL, &v, "pci_device_id") < 0)
                return -1;
            spec->v.pci_device_id = (unsigned int)v;
        } else if (strcmp(key, "pci_subsystem_id") == 0) {
            bit = F_PCI_SUBSYSTEM_ID;
            if (jp_uint(p, 0xFFFFFFFFULL, &v, "pci_subsystem_id") < 0)
                return -1;
            spec->v.pci_subsystem_id = (unsigned int)v;
        } else if (strcmp(key, "memory_total_mib") == 0) {
            bit = F_MEMORY;
            if (jp_uint(p, 1ULL << 30, &v, "memory_total_mib") < 0) /* 1 PiB is plenty */
                return -1;
            if (v == 0) {
                p->pos = at;
                return jp_fail(p, "memory_total_mib of %s must be positive", where);
            }
            spec->v.memory_total = v * MIB;
        } else if (strcmp(key, "memory_reserved_mib") == 0) {
            bit = F_RESERVED;
            if (jp_uint(p, 1ULL << 30, &v, "memory_reserved_mib") < 0)
                return -1;
            spec->v.memory_reserved = v * MIB;
        } else if (strcmp(key, "supported_events") == 0) {
            bit = F_EVENTS;
            if (parse_events(p, &spec->v.supported_events, where) < 0)
                return -1;
        } else {
            p->pos = key_at;
            return jp_fail(p, "unknown key \"%s\" in %s%s", key, where,
                           (!allow_identity && (strcmp(key, "uuid") == 0 || strcmp(key, "pci_bus_id") == 0 ||
                                                strcmp(key, "serial") == 0))
                               ? " (it must be unique, so it belongs in a gpus[] entry)"
                               : "");
        }
        if (spec->set & bit) {
            p->pos = key_at;
            return jp_fail(p, "duplicate key \"%s\" in %s", key, where);
        }
        spec->set |= bit;
    }
    return r;
}

static void overlay(struct fake_gpu *gpu, const struct gpu_spec *spec)
{
    const struct fake_gpu *v = &spec->v;
    if (spec->set & F_NAME)
        memcpy(gpu->name, v->name, sizeof(gpu->name));
    if (spec->set & F_UUID)
        memcpy(gpu->uuid, v->uuid, sizeof(gpu->uuid));
    if (spec->set & F_BUS_ID) {
        gpu->domain = v->domain;
        gpu->bus = v->bus;
        gpu->device = v->device;
    }
    if (spec->set & F_PCI_DEVICE_ID)
        gpu->pci_device_id = v->pci_device_id;
    if (spec->set & F_PCI_SUBSYSTEM_ID)
        gpu->pci_subsystem_id = v->pci_subsystem_id;
    if (spec->set & F_MEMORY)
        gpu->memory_total = v->memory_total;
    if (spec->set & F_RESERVED)
        gpu->memory_reserved = v->memory_reserved;
    if (spec->set & F_EVENTS)
        gpu->supported_events = v->supported_events;
    if (spec->set & F_SERIAL)
        memcpy(gpu->serial, v->serial, sizeof(gpu->serial));
    if (spec->set & F_RECOVERY_SUPPORTED)
        gpu->recovery_action_supported = v->recovery_action_supported;
}

enum { T_DRIVER = 1, T_NVML = 2, T_CUDA = 4, T_COUNT = 8, T_GPUS = 16, T_DEFAULTS = 32 };

static int parse_topology(struct jp *p, struct fake_topology *t, struct gpu_spec *specs)
{
    struct gpu_spec defaults;
    unsigned int seen = 0, ngpus = 0;
    unsigned long long count = 8, cuda = DEFAULT_CUDA_DRIVER_VERSION;
    int first = 1, r;
    char key[48];

    memset(&defaults, 0, sizeof(defaults));
    fake_default_topology(t, 0);
    while ((r = jp_next_key(p, &first, key, sizeof(key), "the topology")) == 1) {
        size_t key_at = p->key_at;
        unsigned int bit;
        if (strcmp(key, "driver_version") == 0) {
            bit = T_DRIVER;
            if (jp_string(p, t->driver_version, sizeof(t->driver_version), "driver_version") < 0)
                return -1;
            if (t->driver_version[0] == '\0')
                return jp_fail(p, "driver_version is empty");
        } else if (strcmp(key, "nvml_version") == 0) {
            bit = T_NVML;
            if (jp_string(p, t->nvml_version, sizeof(t->nvml_version), "nvml_version") < 0)
                return -1;
            if (t->nvml_version[0] == '\0')
                return jp_fail(p, "nvml_version is empty");
        } else if (strcmp(key, "cuda_driver_version") == 0) {
            bit = T_CUDA;
            if (jp_uint(p, 0x7FFFFFFF, &cuda, "cuda_driver_version") < 0)
                return -1;
        } else if (strcmp(key, "gpu_count") == 0) {
            bit = T_COUNT;
            if (jp_uint(p, FAKE_MAX_GPUS, &count, "gpu_count") < 0)
                return -1;
        } else if (strcmp(key, "gpus") == 0) {
            int ifirst = 1;
            bit = T_GPUS;
            while ((r = jp_next_item(p, &ifirst, "gpus")) == 1) {
                char where[32];
                if (ngpus == FAKE_MAX_GPUS)
                    return jp_fail(p, "more than %d GPUs", FAKE_MAX_GPUS);
                snprintf(where, sizeof(where), "gpus[%u]", ngpus);
                if (parse_gpu(p, &specs[ngpus], 1, where) < 0)
                    return -1;
                ngpus++;
            }
            if (r < 0)
                return -1;
        } else if (strcmp(key, "defaults") == 0) {
            bit = T_DEFAULTS;
            if (parse_gpu(p, &defaults, 0, "defaults") < 0)
                return -1;
        } else {
            p->pos = key_at;
            return jp_fail(p, "unknown key \"%s\" in the topology (see docs/fake-nvml.md)", key);
        }
        if (seen & bit) {
            p->pos = key_at;
            return jp_fail(p, "duplicate key \"%s\"", key);
        }
        seen |= bit;
    }
    if (r < 0)
        return -1;
    if (jp_peek(p) != -1)
        return jp_fail(p, "unexpected text after the topology object");
    if ((seen & T_COUNT) && (seen & T_GPUS))
        return jp_fail(p, "give either gpu_count or gpus, not both");

    t->cuda_driver_version = (int)cuda;
    if (!(seen & T_NVML))
        derive_nvml_version(t);
    t->count = (seen & T_GPUS) ? ngpus : (unsigned int)count;
    for (unsigned int i = 0; i < t->count; i++) {
        struct fake_gpu *gpu = &t->gpus[i];
        default_gpu(i, gpu);
        overlay(gpu, &defaults);
        if (seen & T_GPUS)
            overlay(gpu, &specs[i]);
        resolve_recovery_support(t, gpu);
        if (gpu->memory_reserved > gpu->memory_total)
            return jp_fail(p, "gpus[%u]: memory_reserved_mib is larger than memory_total_mib", i);
        for (unsigned int j = 0; j < i; j++) {
            if (strcasecmp(t->gpus[j].uuid, gpu->uuid) == 0)
                return jp_fail(p, "gpus[%u] and gpus[%u] have the same uuid %s", j, i, gpu->uuid);
            if (t->gpus[j].domain == gpu->domain && t->gpus[j].bus == gpu->bus &&
                t->gpus[j].device == gpu->device)
                return jp_fail(p, "gpus[%u] and gpus[%u] have the same pci_bus_id", j, i);
            if (strcmp(t->gpus[j].serial, gpu->serial) == 0)
                return jp_fail(p, "gpus[%u] and gpus[%u] have the same serial %s", j, i, gpu->serial);
        }
    }
    return 0;
}

int fake_load_topology(const char *path, struct fake_topology *t, char *err, size_t errlen)
{
    if (path == NULL || path[0] == '\0') {
        fake_default_topology(t, 8);
        return 0;
    }
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, errlen, "topology %s: cannot open: %s", path, strerror(errno));
        return -1;
    }
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_size > TOPOLOGY_MAX_BYTES) {
        snprintf(err, errlen, "topology %s: not a regular file of at most %d bytes", path,
                 TOPOLOGY_MAX_BYTES);
        close(fd);
        return -1;
    }
    char *text = malloc((size_t)st.st_size + 1);
    struct gpu_spec *specs = calloc(FAKE_MAX_GPUS, sizeof(*specs));
    if (text == NULL || specs == NULL) {
        snprintf(err, errlen, "topology %s: out of memory", path);
        free(text);
        free(specs);
        close(fd);
        return -1;
    }
    size_t got = 0;
    while (got < (size_t)st.st_size) {
        ssize_t n = read(fd, text + got, (size_t)st.st_size - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    close(fd);
    text[got] = '\0';

    char why[FAKE_ERR_LEN - 64];
    struct jp p = {.s = text, .n = got, .pos = 0, .err = why, .errlen = sizeof(why)};
    int rc = 0;
    if (memchr(text, '\0', got) != NULL) {
        snprintf(why, sizeof(why), "contains a NUL byte (not a JSON text file)");
        rc = -1;
    } else if (jp_peek(&p) == -1) {
        snprintf(why, sizeof(why), "the file is empty");
        rc = -1;
    } else {
        rc = parse_topology(&p, t, specs);
    }
    if (rc < 0)
        snprintf(err, errlen, "topology %s: %s", path, why);
    free(text);
    free(specs);
    return rc;
}
