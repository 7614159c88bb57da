/* Fault commands and event queues of the fake libnvidia-ml.
 *
 * One command language (docs/fake-nvml.md), two ways in:
 *   - the control file: append-only, one command per line, written by any process (FaultInjector,
 *     `nvsentinel nvml inject`). The library keeps a byte cursor and applies only complete lines,
 *     so a writer's single O_APPEND write() is never seen half-done. It is read at nvmlInit (the
 *     whole file: GPU state such as "lost" survives a consumer's restart, while old events find no
 *     registered set and vanish) and then on every NVML call, including every 5 ms of a blocked
 *     nvmlEventSetWait.
 *   - fakeNvmlInject(line), in process.
 * Every function here runs with g.lock held.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "fake_nvml.h"

#define COMMAND_MAX 256      /* longest command line, newline included */
#define READ_CHUNK 65536

/* ---- event queues ---- */

void fake_set_push(struct fake_event_set *s, unsigned int gpu, unsigned long long type,
                   unsigned long long data, unsigned long long seq)
{
    if (s->len == FAKE_QUEUE_LEN) {
        if (!s->overflow_reported) {
            fprintf(stderr, "nvsentinel fake NVML: an event set holds %d unread events; dropping new ones\n",
                    FAKE_QUEUE_LEN);
            s->overflow_reported = 1;
        }
        return;
    }
    struct fake_event *e = &s->queue[(s->head + s->len) % FAKE_QUEUE_LEN];
    e->gpu = gpu;
    e->type = type;
    e->data = data;
    e->seq = seq;
    s->len++;
}

static void purge_gpu(struct fake_event_set *s, unsigned int gpu)
{
    unsigned int kept = 0;
    for (unsigned int i = 0; i < s->len; i++) {
        struct fake_event e = s->queue[(s->head + i) % FAKE_QUEUE_LEN];
        if (e.gpu != gpu)
            s->queue[(s->head + kept++) % FAKE_QUEUE_LEN] = e;
    }
    s->len = kept;
}

void fake_sets_destroy_all(void)
{
    struct fake_event_set *s = g.sets;
    g.sets = NULL;
    while (s != NULL) {
        struct fake_event_set *next = s->next;
        if (s->waiters > 0)
            s->dead = 1; /* the last waiter frees it when it wakes */
        else
            free(s);
        s = next;
    }
    pthread_cond_broadcast(&g.cond);
}

/* ---- faults ---- */

static void deliver(unsigned int gpu, unsigned long long type, unsigned long long data)
{
    if (g.topo.gpus[gpu].lost)
        return; /* a GPU off the bus raises nothing more */
    unsigned long long seq = ++g.seq;
    for (struct fake_event_set *s = g.sets; s != NULL; s = s->next)
        if (s->registered[gpu] & type)
            fake_set_push(s, gpu, type, data, seq);
}

static void lose(unsigned int gpu)
{
    struct fake_gpu *d = &g.topo.gpus[gpu];
    if (d->lost)
        return;
    unsigned long long seq = ++g.seq;
    for (struct fake_event_set *s = g.sets; s != NULL; s = s->next)
        if (s->registered[gpu] & NVML_EVENT_GPU_UNAVAILABLE)
            fake_set_push(s, gpu, NVML_EVENT_GPU_UNAVAILABLE, 0, seq);
    d->lost = 1;
    d->lost_seq = ++g.seq; /* events queued before this are still delivered first */
}

static void recover(unsigned int gpu)
{
    g.topo.gpus[gpu].lost = 0;
}

static void reset(unsigned int gpu)
{
    recover(gpu);
    g.topo.gpus[gpu].recovery_action = NVML_GPU_RECOVERY_ACTION_NONE; /* the reset was the recovery */
    for (struct fake_event_set *s = g.sets; s != NULL; s = s->next)
        purge_gpu(s, gpu);
}

/* The driver's recommended action changes: state (field 230), plus an event where registered. The
 * state is kept even on a lost GPU (readable once it is back); the event is dropped there, like
 * any fault aimed at a GPU off the bus. */
static void set_recovery_action(unsigned int gpu, unsigned int action)
{
    g.topo.gpus[gpu].recovery_action = action;
    deliver(gpu, NVML_EVENT_GPU_RECOVERY_ACTION, action);
}

/* Calls naming the GPU block for `seconds` from now (0 ends a window); api.c waits it out. */
static void hang(unsigned int gpu, double seconds)
{
    struct fake_gpu *d = &g.topo.gpus[gpu];
    if (seconds <= 0.0) {
        d->hung = 0;
        return;
    }
    long long ns = (long long)(seconds * 1e9);
    clock_gettime(CLOCK_MONOTONIC, &d->hang_until);
    d->hang_until.tv_sec += (time_t)(ns / 1000000000LL);
    d->hang_until.tv_nsec += (long)(ns % 1000000000LL);
    if (d->hang_until.tv_nsec >= 1000000000L) {
        d->hang_until.tv_sec++;
        d->hang_until.tv_nsec -= 1000000000L;
    }
    d->hung = 1;
}

/* A board swap in this slot: new identity, clean state; index, PCI location and name stay. */
static void replace(unsigned int gpu, const char *uuid, const char *serial)
{
    struct fake_gpu *d = &g.topo.gpus[gpu];
    char derived[FAKE_UUID_LEN];
    char derived_serial[FAKE_SERIAL_LEN];
    if (uuid == NULL) {
        fake_replacement_uuid(d->uuid, derived, sizeof(derived));
        uuid = derived;
    }
    if (serial == NULL) {
        fake_replacement_serial(d->serial, derived_serial, sizeof(derived_serial));
        serial = derived_serial;
    }
    snprintf(d->uuid, sizeof(d->uuid), "%s", uuid);
    snprintf(d->serial, sizeof(d->serial), "%s", serial);
    d->lost = 0;
    d->hung = 0;
    d->recovery_action = NVML_GPU_RECOVERY_ACTION_NONE;
    for (struct fake_event_set *s = g.sets; s != NULL; s = s->next)
        purge_gpu(s, gpu);
}

/* ---- the command language ---- */

static int parse_u64(const char *text, unsigned long long *out)
{
    char *end = NULL;
    if (text == NULL || text[0] == '\0' || text[0] == '-' || text[0] == '+')
        return -1;
    errno = 0;
    *out = strtoull(text, &end, 0);
    return (*end != '\0' || errno != 0) ? -1 : 0;
}

static const char *const RECOVERY_ACTION_NAMES[] = {
    "NONE", "GPU_RESET", "NODE_REBOOT", "DRAIN_P2P", "DRAIN_AND_RESET", "RECOVER_IMEX_DOMAIN", "BUS_RESET",
    "SYSTEM_REBOOT",
}; /* index == NVML_GPU_RECOVERY_ACTION_* value */

static int parse_recovery_action(const char *text, unsigned int *out)
{
    unsigned long long v;
    for (unsigned int i = 0; i < sizeof(RECOVERY_ACTION_NAMES) / sizeof(RECOVERY_ACTION_NAMES[0]); i++) {
        if (strcasecmp(text, RECOVERY_ACTION_NAMES[i]) == 0) {
            *out = i;
            return 0;
        }
    }
    if (parse_u64(text, &v) < 0 || v > 0xFFFFFFFFULL)
        return -1;
    *out = (unsigned int)v;
    return 0;
}

/* A plain decimal number of seconds ("2", "0.25"), 0..FAKE_HANG_MAX_S: no sign, exponent, hex, inf. */
static int parse_seconds(const char *text, double *out)
{
    int digits = 0, dots = 0;
    for (const char *c = text; *c; c++) {
        if (*c >= '0' && *c <= '9')
            digits++;
        else if (*c == '.' && dots == 0)
            dots++;
        else
            return -1;
    }
    if (digits == 0 || strlen(text) > 32)
        return -1;
    *out = strtod(text, NULL);
    return *out <= FAKE_HANG_MAX_S ? 0 : -1;
}

/* Resolve a GPU index, UUID, or "*"/"all" to [*lo, *hi). */
static int resolve_target(const char *target, unsigned int *lo, unsigned int *hi, char *err, size_t errlen)
{
    unsigned long long index;
    if (strcmp(target, "*") == 0 || strcmp(target, "all") == 0) {
        *lo = 0;
        *hi = g.topo.count;
        return 0;
    }
    if (strncasecmp(target, "GPU-", 4) == 0) {
        for (unsigned int i = 0; i < g.topo.count; i++) {
            if (strcasecmp(g.topo.gpus[i].uuid, target) == 0) {
                *lo = i;
                *hi = i + 1;
                return 0;
            }
        }
        snprintf(err, errlen, "no GPU has uuid %s", target);
        return -1;
    }
    if (parse_u64(target, &index) < 0) {
        snprintf(err, errlen, "bad GPU \"%s\" (an index, a GPU-... uuid, or *)", target);
        return -1;
    }
    if (index >= g.topo.count) {
        snprintf(err, errlen, "GPU %llu is not in the topology (%u GPUs)", index, g.topo.count);
        return -1;
    }
    *lo = (unsigned int)index;
    *hi = (unsigned int)index + 1;
    return 0;
}

int fake_apply_command(const char *line, char *err, size_t errlen)
{
    char buf[COMMAND_MAX + 1];
    char *tok[5];
    int ntok = 0;
    char *save = NULL;

    if (strlen(line) > COMMAND_MAX) {
        snprintf(err, errlen, "command longer than %d bytes", COMMAND_MAX);
        return -1;
    }
    snprintf(buf, sizeof(buf), "%s", line);
    for (char *t = strtok_r(buf, " \t\r\n", &save); t != NULL; t = strtok_r(NULL, " \t\r\n", &save)) {
        if (ntok == 5) {
            snprintf(err, errlen, "too many words in \"%s\"", line);
            return -1;
        }
        tok[ntok++] = t;
    }
    if (ntok == 0 || tok[0][0] == '#')
        return 0; /* blank line or comment */

    const char *verb = tok[0];
    const char *usage = NULL;
    int want; /* words after the GPU */
    if (strcmp(verb, "xid") == 0) {
        want = 1;
        usage = "xid GPU XID";
    } else if (strcmp(verb, "event") == 0) {
        want = ntok >= 4 ? 2 : 1; /* event GPU TYPE [DATA] */
        usage = "event GPU TYPE [DATA]";
    } else if (strcmp(verb, "recovery-action") == 0) {
        want = 1;
        usage = "recovery-action GPU NAME|N";
    } else if (strcmp(verb, "hang") == 0) {
        want = 1;
        usage = "hang GPU SECONDS";
    } else if (strcmp(verb, "replace") == 0) {
        want = ntok >= 3 ? ntok - 2 : 0; /* replace GPU [UUID|- [SERIAL]] */
        if (want > 2)
            want = 2;
        usage = "replace GPU [UUID|- [SERIAL]]";
    } else if (strcmp(verb, "dbe") == 0 || strcmp(verb, "sbe") == 0 || strcmp(verb, "lose") == 0 ||
               strcmp(verb, "recover") == 0 || strcmp(verb, "reset") == 0) {
        want = 0;
        usage = "VERB GPU";
    } else {
        snprintf(err, errlen,
                 "unknown command \"%s\" (xid, dbe, sbe, event, lose, recover, reset, recovery-action, hang, "
                 "replace)",
                 verb);
        return -1;
    }
    if (ntok != 2 + want) {
        snprintf(err, errlen, "usage: %s", usage);
        return -1;
    }
    unsigned int lo, hi;
    if (resolve_target(tok[1], &lo, &hi, err, errlen) < 0)
        return -1;

    unsigned long long type = 0, data = 0;
    if (strcmp(verb, "xid") == 0) {
        type = NVML_EVENT_XID_CRITICAL_ERROR;
        if (parse_u64(tok[2], &data) < 0 || data == 0 || data > 0xFFFFFFFFULL) {
            snprintf(err, errlen, "bad XID \"%s\" (1..4294967295)", tok[2]);
            return -1;
        }
    } else if (strcmp(verb, "dbe") == 0) {
        type = NVML_EVENT_DOUBLE_BIT_ECC;
    } else if (strcmp(verb, "sbe") == 0) {
        type = NVML_EVENT_SINGLE_BIT_ECC;
    } else if (strcmp(verb, "event") == 0) {
        if (parse_u64(tok[2], &type) < 0 || type == 0 || (type & (type - 1)) != 0 ||
            (type & ~NVML_EVENT_ALL_KNOWN) != 0) {
            snprintf(err, errlen, "bad event type \"%s\" (one NVML event bit, e.g. 0x8000)", tok[2]);
            return -1;
        }
        if (ntok == 4 && parse_u64(tok[3], &data) < 0) {
            snprintf(err, errlen, "bad event data \"%s\"", tok[3]);
            return -1;
        }
    }

    unsigned int action = 0;
    double seconds = 0.0;
    const char *new_uuid = NULL, *new_serial = NULL;
    if (strcmp(verb, "recovery-action") == 0 && parse_recovery_action(tok[2], &action) < 0) {
        snprintf(err, errlen,
                 "bad recovery action \"%s\" (NONE, GPU_RESET, NODE_REBOOT, DRAIN_P2P, DRAIN_AND_RESET, "
                 "RECOVER_IMEX_DOMAIN, BUS_RESET, SYSTEM_REBOOT, or 0..4294967295)",
                 tok[2]);
        return -1;
    }
    if (strcmp(verb, "hang") == 0) {
        if (parse_seconds(tok[2], &seconds) < 0) {
            snprintf(err, errlen, "bad hang \"%s\" (decimal seconds, 0..%d; 0 ends a hang)", tok[2],
                     FAKE_HANG_MAX_S);
            return -1;
        }
        if (g.control_replaying)
            return 0; /* a window starts when it is read: one written before this nvmlInit is over */
    }
    if (strcmp(verb, "replace") == 0 && want >= 1) {
        if (strcmp(tok[2], "-") != 0) {
            new_uuid = tok[2];
            if (!fake_valid_uuid(new_uuid) || strlen(new_uuid) >= FAKE_UUID_LEN) {
                snprintf(err, errlen, "bad uuid \"%s\" (GPU- followed by hex digits and dashes)", new_uuid);
                return -1;
            }
        }
        if (want == 2) {
            new_serial = tok[3];
            if (!fake_valid_serial(new_serial)) {
                snprintf(err, errlen, "bad serial \"%s\" (1 to %d letters, digits or dashes)", new_serial,
                         FAKE_SERIAL_LEN - 1);
                return -1;
            }
        }
        if ((new_uuid != NULL || new_serial != NULL) && hi - lo != 1) {
            snprintf(err, errlen, "replace with a new uuid or serial names one GPU, not \"%s\"", tok[1]);
            return -1;
        }
        for (unsigned int i = 0; i < g.topo.count; i++) {
            if (new_uuid != NULL && strcasecmp(g.topo.gpus[i].uuid, new_uuid) == 0) {
                snprintf(err, errlen, "uuid %s is already GPU %u's", new_uuid, i);
                return -1;
            }
            if (new_serial != NULL && strcmp(g.topo.gpus[i].serial, new_serial) == 0) {
                snprintf(err, errlen, "serial %s is already GPU %u's", new_serial, i);
                return -1;
            }
        }
    }

    for (unsigned int gpu = lo; gpu < hi; gpu++) {
        if (type != 0)
            deliver(gpu, type, data);
        else if (strcmp(verb, "recovery-action") == 0)
            set_recovery_action(gpu, action);
        else if (strcmp(verb, "hang") == 0)
            hang(gpu, seconds);
        else if (strcmp(verb, "replace") == 0)
            replace(gpu, new_uuid, new_serial);
        else if (strcmp(verb, "lose") == 0)
            lose(gpu);
        else if (strcmp(verb, "recover") == 0)
            recover(gpu);
        else
            reset(gpu);
    }
    pthread_cond_broadcast(&g.cond);
    return 0;
}

/* ---- the control file ---- */

void fake_control_start(const char *path)
{
    snprintf(g.control_active, sizeof(g.control_active), "%s", path ? path : "");
    g.control_cursor = 0;
    g.control_dev = 0;
    g.control_ino = 0;
    g.control_error_reported = 0;
    g.control_replaying = 1;
    fake_control_poll();
    g.control_replaying = 0;
}

static void report_once(const char *what)
{
    if (!g.control_error_reported)
        fprintf(stderr, "nvsentinel fake NVML: control %s: %s\n", g.control_active, what);
    g.control_error_reported = 1;
}

void fake_control_poll(void)
{
    struct stat st;
    if (g.control_active[0] == '\0')
        return;
    if (stat(g.control_active, &st) < 0) {
        if (errno == ENOENT) { /* not written yet, or removed: the next file starts afresh */
            g.control_cursor = 0;
            g.control_ino = 0;
            g.control_dev = 0;
        } else {
            report_once(strerror(errno));
        }
        return;
    }
    if (st.st_ino != g.control_ino || st.st_dev != g.control_dev || st.st_size < g.control_cursor) {
        g.control_cursor = 0; /* replaced or truncated: a new command stream */
        g.control_ino = st.st_ino;
        g.control_dev = st.st_dev;
    }
    if (st.st_size == g.control_cursor)
        return;

    int fd = open(g.control_active, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        report_once(strerror(errno));
        return;
    }
    g.control_error_reported = 0;
    static char chunk[READ_CHUNK + 1];
    for (;;) {
        ssize_t n = pread(fd, chunk, READ_CHUNK, g.control_cursor);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        chunk[n] = '\0';
        char *start = chunk;
        char *nl;
        while ((nl = memchr(start, '\n', (size_t)(chunk + n - start))) != NULL) {
            char err[FAKE_ERR_LEN];
            *nl = '\0';
            if (memchr(start, '\0', (size_t)(nl - start)) != NULL)
                fprintf(stderr, "nvsentinel fake NVML: control %s: NUL byte in a command (line ignored)\n",
                        g.control_active);
            else if (fake_apply_command(start, err, sizeof(err)) < 0)
                fprintf(stderr, "nvsentinel fake NVML: control %s: %s (line ignored)\n", g.control_active, err);
            g.control_cursor += (nl - start) + 1;
            start = nl + 1;
        }
        if (start == chunk) {
            if (n == READ_CHUNK) { /* 64 KiB without a newline: not a command stream */
                fprintf(stderr, "nvsentinel fake NVML: control %s: no newline in %d bytes (skipped)\n",
                        g.control_active, READ_CHUNK);
                g.control_cursor += n;
                continue;
            }
            break; /* an incomplete last line: wait for its newline */
        }
        if (n < READ_CHUNK)
            break;
    }
    close(fd);
}
