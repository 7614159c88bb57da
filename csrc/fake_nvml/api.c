/* The exported NVML functions of the fake libnvidia-ml, plus its fakeNvml* control symbols.
 *
 * Return codes follow NVML's documented contract for each call: UNINITIALIZED before nvmlInit,
 * INVALID_ARGUMENT for a NULL pointer or a handle we never gave out, INSUFFICIENT_SIZE for a short
 * buffer, GPU_IS_LOST for any call naming a lost GPU. A function NVML has but this file lacks is
 * simply not exported, so pynvml raises NVMLError_FunctionNotFound. One mutex guards all state:
 * the fake is about behaviour, not throughput. A call naming a hung GPU (the `hang` command) waits
 * on the condition variable, so the mutex is free for every other call while it blocks.
 */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "fake_nvml.h"

struct fake_state g = {.lock = PTHREAD_MUTEX_INITIALIZER};

static pthread_once_t cond_once = PTHREAD_ONCE_INIT;
static __thread char last_error[FAKE_ERR_LEN]; /* fakeNvmlLastError(), per calling thread */

static void init_cond(void)
{
    /* a monotonic clock, so a wall-clock step cannot stretch or cut an event wait */
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&g.cond, &attr);
    pthread_condattr_destroy(&attr);
}

static void lock(void)
{
    pthread_once(&cond_once, init_cond);
    pthread_mutex_lock(&g.lock);
}

static nvmlReturn_t leave(nvmlReturn_t rc)
{
    pthread_mutex_unlock(&g.lock);
    return rc;
}

/* Lock and check nvmlInit; on success the lock stays held and new control commands are applied. */
static nvmlReturn_t enter(void)
{
    lock();
    if (g.refcount == 0)
        return leave(NVML_ERROR_UNINITIALIZED);
    fake_control_poll();
    return NVML_SUCCESS;
}

static int before(const struct timespec *a, const struct timespec *b)
{
    return a->tv_sec < b->tv_sec || (a->tv_sec == b->tv_sec && a->tv_nsec < b->tv_nsec);
}

static struct timespec deadline_after(unsigned int ms)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    t.tv_sec += ms / 1000;
    t.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (t.tv_nsec >= 1000000000L) {
        t.tv_sec++;
        t.tv_nsec -= 1000000000L;
    }
    return t;
}

/* The next wake-up of a blocked call: the poll interval from now, or `deadline` if that is sooner. */
static struct timespec poll_wake(const struct timespec *deadline)
{
    struct timespec wake = deadline_after(0);
    wake.tv_nsec += FAKE_POLL_NS;
    if (wake.tv_nsec >= 1000000000L) {
        wake.tv_sec++;
        wake.tv_nsec -= 1000000000L;
    }
    return before(deadline, &wake) ? *deadline : wake;
}

/* Is `gpu` inside a hang window? An expired window is cleared here. */
static int hung(struct fake_gpu *gpu)
{
    if (!gpu->hung)
        return 0;
    struct timespec now = deadline_after(0);
    if (before(&now, &gpu->hang_until))
        return 1;
    gpu->hung = 0;
    return 0;
}

/* Block (lock held on entry and exit, released while waiting) until `gpu` is out of its hang
 * window. The control file is read every 5 ms meanwhile, so `hang GPU 0` or `replace` from another
 * process ends it early; UNINITIALIZED if the last nvmlShutdown happened during the wait. */
static nvmlReturn_t wait_out_hang(struct fake_gpu *gpu)
{
    while (hung(gpu)) {
        struct timespec wake = poll_wake(&gpu->hang_until);
        pthread_cond_timedwait(&g.cond, &g.lock, &wake);
        if (g.refcount == 0)
            return NVML_ERROR_UNINITIALIZED;
        fake_control_poll();
    }
    return NVML_SUCCESS;
}

static int gpu_index(nvmlDevice_t device)
{
    uintptr_t p = (uintptr_t)device, base = (uintptr_t)&g.topo.gpus[0];
    if (p < base || (p - base) % sizeof(struct fake_gpu) != 0)
        return -1;
    uintptr_t index = (p - base) / sizeof(struct fake_gpu);
    return index < g.topo.count ? (int)index : -1;
}

/* enter() plus a valid, reachable GPU, after any hang window of it; the lock stays held only on
 * success. */
static nvmlReturn_t enter_gpu(nvmlDevice_t device, struct fake_gpu **gpu)
{
    nvmlReturn_t rc = enter();
    if (rc != NVML_SUCCESS)
        return rc;
    int index = gpu_index(device);
    if (index < 0)
        return leave(NVML_ERROR_INVALID_ARGUMENT);
    rc = wait_out_hang(&g.topo.gpus[index]);
    if (rc != NVML_SUCCESS)
        return leave(rc);
    if (gpu_index(device) < 0) /* a new nvmlInit during the wait loaded a smaller topology */
        return leave(NVML_ERROR_INVALID_ARGUMENT);
    if (g.topo.gpus[index].lost)
        return leave(NVML_ERROR_GPU_IS_LOST);
    *gpu = &g.topo.gpus[index];
    return NVML_SUCCESS;
}

static int set_live(nvmlEventSet_t set)
{
    for (struct fake_event_set *s = g.sets; s != NULL; s = s->next)
        if (s == set)
            return 1;
    return 0;
}

static nvmlReturn_t copy_out(char *buf, unsigned int length, const char *text)
{
    size_t need = strlen(text) + 1;
    if (buf == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (length < need)
        return NVML_ERROR_INSUFFICIENT_SIZE;
    memcpy(buf, text, need);
    return NVML_SUCCESS;
}

static void set_last_error(const char *text)
{
    snprintf(last_error, sizeof(last_error), "%s", text);
}

/* ---- init and shutdown ---- */

FAKE_EXPORT nvmlReturn_t nvmlInitWithFlags(unsigned int flags)
{
    (void)flags; /* NO_GPUS / NO_ATTACH / FORCE_INIT change nothing for a fake */
    lock();
    if (g.refcount == 0) {
        const char *topology = g.topology_configured ? g.topology_path : getenv(FAKE_ENV_TOPOLOGY);
        const char *control = g.control_configured ? g.control_path : getenv(FAKE_ENV_CONTROL);
        struct fake_topology *topo = malloc(sizeof(*topo));
        char err[FAKE_ERR_LEN];
        if (topo == NULL)
            return leave(NVML_ERROR_MEMORY);
        if (fake_load_topology(topology, topo, err, sizeof(err)) < 0) {
            free(topo);
            fprintf(stderr, "nvsentinel fake NVML: %s\n", err);
            set_last_error(err);
            return leave(NVML_ERROR_UNKNOWN);
        }
        fake_sets_destroy_all();
        g.topo = *topo;
        free(topo);
        g.seq = 0;
        fake_control_start(control); /* replays the GPU state the control file holds */
    }
    g.refcount++;
    set_last_error("");
    return leave(NVML_SUCCESS);
}

FAKE_EXPORT nvmlReturn_t nvmlInit_v2(void)
{
    return nvmlInitWithFlags(0);
}

FAKE_EXPORT nvmlReturn_t nvmlInit(void)
{
    return nvmlInitWithFlags(0);
}

FAKE_EXPORT nvmlReturn_t nvmlShutdown(void)
{
    lock();
    if (g.refcount == 0)
        return leave(NVML_ERROR_UNINITIALIZED);
    if (--g.refcount == 0)
        fake_sets_destroy_all(); /* waiters wake and answer UNINITIALIZED */
    return leave(NVML_SUCCESS);
}

FAKE_EXPORT const char *nvmlErrorString(nvmlReturn_t result)
{
    switch (result) {
    case NVML_SUCCESS: return "Success";
    case NVML_ERROR_UNINITIALIZED: return "Uninitialized";
    case NVML_ERROR_INVALID_ARGUMENT: return "Invalid Argument";
    case NVML_ERROR_NOT_SUPPORTED: return "Not Supported";
    case NVML_ERROR_NO_PERMISSION: return "Insufficient Permissions";
    case NVML_ERROR_ALREADY_INITIALIZED: return "Already Initialized";
    case NVML_ERROR_NOT_FOUND: return "Not Found";
    case NVML_ERROR_INSUFFICIENT_SIZE: return "Insufficient Size";
    case NVML_ERROR_INSUFFICIENT_POWER: return "Insufficient External Power";
    case NVML_ERROR_DRIVER_NOT_LOADED: return "Driver Not Loaded";
    case NVML_ERROR_TIMEOUT: return "Timeout";
    case NVML_ERROR_IRQ_ISSUE: return "Interrupt Request Issue";
    case NVML_ERROR_LIBRARY_NOT_FOUND: return "NVML Shared Library Not Found";
    case NVML_ERROR_FUNCTION_NOT_FOUND: return "Function Not Found";
    case NVML_ERROR_CORRUPTED_INFOROM: return "Corrupted infoROM";
    case NVML_ERROR_GPU_IS_LOST: return "GPU is lost";
    case NVML_ERROR_RESET_REQUIRED: return "GPU requires restart";
    case NVML_ERROR_OPERATING_SYSTEM: return "The operating system has blocked the request.";
    case NVML_ERROR_LIB_RM_VERSION_MISMATCH: return "RM has detected an NVML/RM version mismatch.";
    case NVML_ERROR_IN_USE: return "In use by another client";
    case NVML_ERROR_MEMORY: return "Insufficient Memory";
    case NVML_ERROR_NO_DATA: return "No data";
    case NVML_ERROR_ARGUMENT_VERSION_MISMATCH: return "Argument version mismatch";
    case NVML_ERROR_NOT_READY: return "Not ready";
    case NVML_ERROR_GPU_NOT_FOUND: return "GPU not found";
    case NVML_ERROR_INVALID_STATE: return "Invalid state";
    case NVML_ERROR_UNKNOWN: return "Unknown Error (fake NVML: see stderr)";
    default: return "Unknown Error";
    }
}

/* ---- system queries ---- */

FAKE_EXPORT nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length)
{
    nvmlReturn_t rc = enter();
    return rc != NVML_SUCCESS ? rc : leave(copy_out(version, length, g.topo.driver_version));
}

FAKE_EXPORT nvmlReturn_t nvmlSystemGetNVMLVersion(char *version, unsigned int length)
{
    nvmlReturn_t rc = enter();
    return rc != NVML_SUCCESS ? rc : leave(copy_out(version, length, g.topo.nvml_version));
}

FAKE_EXPORT nvmlReturn_t nvmlSystemGetCudaDriverVersion_v2(int *version)
{
    nvmlReturn_t rc = enter();
    if (rc != NVML_SUCCESS)
        return rc;
    if (version == NULL)
        return leave(NVML_ERROR_INVALID_ARGUMENT);
    *version = g.topo.cuda_driver_version;
    return leave(NVML_SUCCESS);
}

FAKE_EXPORT nvmlReturn_t nvmlSystemGetCudaDriverVersion(int *version)
{
    return nvmlSystemGetCudaDriverVersion_v2(version);
}

/* ---- device enumeration ---- */

FAKE_EXPORT nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *count)
{
    nvmlReturn_t rc = enter();
    if (rc != NVML_SUCCESS)
        return rc;
    if (count == NULL)
        return leave(NVML_ERROR_INVALID_ARGUMENT);
    *count = g.topo.count; /* a lost GPU still counts: it is there, but unreachable */
    return leave(NVML_SUCCESS);
}

FAKE_EXPORT nvmlReturn_t nvmlDeviceGetCount(unsigned int *count)
{
    return nvmlDeviceGetCount_v2(count);
}

FAKE_EXPORT nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device)
{
    nvmlReturn_t rc = enter();
    if (rc != NVML_SUCCESS)
        return rc;
    if (device == NULL)
        return leave(NVML_ERROR_INVALID_ARGUMENT);
    for (;;) {
        if (index >= g.topo.count)
            return leave(NVML_ERROR_INVALID_ARGUMENT);
        if (!hung(&g.topo.gpus[index]))
            break;
        if ((rc = wait_out_hang(&g.topo.gpus[index])) != NVML_SUCCESS)
            return leave(rc);
    }
    if (g.topo.gpus[index].lost)
        return leave(NVML_ERROR_GPU_IS_LOST);
    *device = &g.topo.gpus[index];
    return leave(NVML_SUCCESS);
}

FAKE_EXPORT nvmlReturn_t nvmlDeviceGetHandleByIndex(unsigned int index, nvmlDevice_t *device)
{
    return nvmlDeviceGetHandleByIndex_v2(index, device);
}

FAKE_EXPORT nvmlReturn_t nvmlDeviceGetHandleByUUID(const char *uuid, nvmlDevice_t *device)
{
    nvmlReturn_t rc = enter();
    if (rc != NVML_SUCCESS)
        return rc;
    if (uuid == NULL || device == NULL)
        return leave(NVML_ERROR_INVALID_ARGUMENT);
    for (unsigned int i = 0; i < g.topo.count; i++) {
        if (strcasecmp(g.topo.gpus[i].uuid, uuid) == 0) {
            if (hung(&g.topo.gpus[i])) { /* wait, then look again: a replace may change the answer */
                if ((rc = wait_out_hang(&g.topo.gpus[i])) != NVML_SUCCESS)
                    return leave(rc);
                i = (unsigned int)-1;
                continue;
            }
            if (g.topo.gpus[i].lost)
                return leave(NVML_ERROR_GPU_IS_LOST);
            *device = &g.topo.gpus[i];
            return leave(NVML_SUCCESS);
        }
    }
    return leave(NVML_ERROR_NOT_FOUND);
}

FAKE_EXPORT nvmlReturn_t nvmlDeviceGetHandleByPciBusId_v2(const char *bus_id, nvmlDevice_t *device)
{
    unsigned int domain, bus, dev, function;
    char tail;
    nvmlReturn_t rc = enter();
    if (rc != NVML_SUCCESS)
        return rc;
    if (bus_id == NULL || device == NULL ||
        sscanf(bus_id, "%8x:%2x:%2x.%1x%c", &domain, &bus, &dev, &function, &tail) != 4)
        return leave(NVML_ERROR_INVALID_ARGUMENT);
    for (unsigned int i = 0; i < g.topo.count; i++) {
        struct fake_gpu *gpu = &g.topo.gpus[i];
        if (gpu->domain == domain && gpu->bus == bus && gpu->device == dev && function == 0) {
            if (hung(gpu)) {
                if ((rc = wait_out_hang(gpu)) != NVML_SUCCESS)
                    return leave(rc);
                i = (unsigned int)-1;
                continue;
            }
            if (gpu->lost)
                return leave(NVML_ERROR_GPU_IS_LOST);
            *device = gpu;
            return leave(NVML_SUCCESS);
        }
    }
    return leave(NVML_ERROR_NOT_FOUND);
}

FAKE_EXPORT nvmlReturn_t nvmlDeviceGetHandleByPciBusId(const char *bus_id, nvmlDevice_t *device)
{
    return nvmlDeviceGetHandleByPciBusId_v2(bus_id, device);
}

/* ---- device queries ---- */

FAKE_EXPORT nvmlReturn_t nvmlDeviceGetIndex(nvmlDevice_t device, unsigned int *index)
{
    struct fake_gpu *gpu;
    nvmlReturn_t rc = enter_gpu(device, &gpu);
    if (rc != NVML_SUCCESS)
        return rc;
    if (index == NULL)
        return leave(NVML_ERROR_INVALID_ARGUMENT);
    *index = gpu->index;
    return leave(NVML_SUCCESS);
}

FAKE_EXPORT nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t device, char *uuid, unsigned int length)
{
    struct fake_gpu *gpu;
    nvmlReturn_t rc = enter_gpu(device, &gpu);
    return rc != NVML_SUCCESS ? rc : leave(copy_out(uuid, length, gpu->uuid));
}

FAKE_EXPORT nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t device, char *name, unsigned int length)
{
    struct fake_gpu *gpu;
    nvmlReturn_t rc = enter_gpu(device, &gpu);
    return rc != NVML_SUCCESS ? rc : leave(copy_out(name, length, gpu->name));
}

FAKE_EXPORT nvmlReturn_t nvmlDeviceGetSerial(nvmlDevice_t device, char *serial, unsigned int length)
{
    struct fake_gpu *gpu;
    nvmlReturn_t rc = enter_gpu(device, &gpu);
    return rc != NVML_SUCCESS ? rc : leave(copy_out(serial, length, gpu->serial));
}

/* Each value carries its own result, as in NVML: the call succeeds while a field the GPU lacks
 * answers NOT_SUPPORTED in its slot. Only NVML_FI_DEV_GET_GPU_RECOVERY_ACTION exists here. */
FAKE_EXPORT nvmlReturn_t nvmlDeviceGetFieldValues(nvmlDevice_t device, int count, nvmlFieldValue_t *values)
{
    struct fake_gpu *gpu;
    nvmlReturn_t rc = enter_gpu(device, &gpu);
    if (rc != NVML_SUCCESS)
        return rc;
    if (count < 0 || (count > 0 && values == NULL))
        return leave(NVML_ERROR_INVALID_ARGUMENT);
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    long long usec = (long long)now.tv_sec * 1000000LL + now.tv_nsec / 1000;
    for (int i = 0; i < count; i++) {
        nvmlFieldValue_t *v = &values[i];
        v->timestamp = usec;
        v->latencyUsec = 0;
        memset(&v->value, 0, sizeof(v->value));
        if (v->fieldId == NVML_FI_DEV_GET_GPU_RECOVERY_ACTION && gpu->recovery_action_supported) {
            v->valueType = NVML_VALUE_TYPE_UNSIGNED_INT;
            v->nvmlReturn = NVML_SUCCESS;
            v->value.uiVal = gpu->recovery_action;
        } else {
            v->valueType = NVML_VALUE_TYPE_DOUBLE;
            v->nvmlReturn = NVML_ERROR_NOT_SUPPORTED;
        }
    }
    return leave(NVML_SUCCESS);
}

static void bus_ids(const struct fake_gpu *gpu, char *full, size_t fulllen, char *legacy, size_t legacylen)
{
    /* NVML_DEVICE_PCI_BUS_ID_FMT "%08X:%02X:%02X.0" and the legacy "%04X:%02X:%02X.0" */
    snprintf(full, fulllen, "%08X:%02X:%02X.0", gpu->domain, gpu->bus, gpu->device);
    snprintf(legacy, legacylen, "%04X:%02X:%02X.0", gpu->domain & 0xFFFFu, gpu->bus, gpu->device);
}

FAKE_EXPORT nvmlReturn_t nvmlDeviceGetPciInfo_v3(nvmlDevice_t device, nvmlPciInfo_t *pci)
{
    struct fake_gpu *gpu;
    nvmlReturn_t rc = enter_gpu(device, &gpu);
    if (rc != NVML_SUCCESS)
        return rc;
    if (pci == NULL)
        return leave(NVML_ERROR_INVALID_ARGUMENT);
    memset(pci, 0, sizeof(*pci));
    bus_ids(gpu, pci->busId, sizeof(pci->busId), pci->busIdLegacy, sizeof(pci->busIdLegacy));
    pci->domain = gpu->domain;
    pci->bus = gpu->bus;
    pci->device = gpu->device;
    pci->pciDeviceId = gpu->pci_device_id;
    pci->pciSubSystemId = gpu->pci_subsystem_id;
    return leave(NVML_SUCCESS);
}

/* v1 and v2 fill the legacy layout (a 16-byte busId and four reserved words) */
FAKE_EXPORT nvmlReturn_t nvmlDeviceGetPciInfo_v2(nvmlDevice_t device, nvmlPciInfo_v2_t *pci)
{
    struct fake_gpu *gpu;
    char full[NVML_DEVICE_PCI_BUS_ID_BUFFER_SIZE];
    nvmlReturn_t rc = enter_gpu(device, &gpu);
    if (rc != NVML_SUCCESS)
        return rc;
    if (pci == NULL)
        return leave(NVML_ERROR_INVALID_ARGUMENT);
    memset(pci, 0, sizeof(*pci));
    bus_ids(gpu, full, sizeof(full), pci->busId, sizeof(pci->busId));
    pci->domain = gpu->domain;
    pci->bus = gpu->bus;
    pci->device = gpu->device;
    pci->pciDeviceId = gpu->pci_device_id;
    pci->pciSubSystemId = gpu->pci_subsystem_id;
    return leave(NVML_SUCCESS);
}

FAKE_EXPORT nvmlReturn_t nvmlDeviceGetPciInfo(nvmlDevice_t device, nvmlPciInfo_v2_t *pci)
{
    return nvmlDeviceGetPciInfo_v2(device, pci);
}

FAKE_EXPORT nvmlReturn_t nvmlDeviceGetPciInfoExt(nvmlDevice_t device, nvmlPciInfoExt_v1_t *pci)
{
    struct fake_gpu *gpu;
    char legacy[NVML_DEVICE_PCI_BUS_ID_BUFFER_V2_SIZE];
    nvmlReturn_t rc = enter_gpu(device, &gpu);
    if (rc != NVML_SUCCESS)
        return rc;
    if (pci == NULL)
        return leave(NVML_ERROR_INVALID_ARGUMENT);
    if (pci->version != FAKE_STRUCT_VERSION(nvmlPciInfoExt_v1_t, 1))
        return leave(NVML_ERROR_ARGUMENT_VERSION_MISMATCH);
    bus_ids(gpu, pci->busId, sizeof(pci->busId), legacy, sizeof(legacy));
    pci->domain = gpu->domain;
    pci->bus = gpu->bus;
    pci->device = gpu->device;
    pci->pciDeviceId = gpu->pci_device_id;
    pci->pciSubSystemId = gpu->pci_subsystem_id;
    pci->baseClass = 0x03; /* display controller */
    pci->subClass = 0x02;  /* 3D controller, as a data-center GPU enumerates */
    return leave(NVML_SUCCESS);
}

FAKE_EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t device, nvmlMemory_t *memory)
{
    struct fake_gpu *gpu;
    nvmlReturn_t rc = enter_gpu(device, &gpu);
    if (rc != NVML_SUCCESS)
        return rc;
    if (memory == NULL)
        return leave(NVML_ERROR_INVALID_ARGUMENT);
    /* v1 counts the reserved memory as used; nothing else runs on a fake GPU */
    memory->total = gpu->memory_total;
    memory->used = gpu->memory_reserved;
    memory->free = gpu->memory_total - gpu->memory_reserved;
    return leave(NVML_SUCCESS);
}

FAKE_EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t device, nvmlMemory_v2_t *memory)
{
    struct fake_gpu *gpu;
    nvmlReturn_t rc = enter_gpu(device, &gpu);
    if (rc != NVML_SUCCESS)
        return rc;
    if (memory == NULL)
        return leave(NVML_ERROR_INVALID_ARGUMENT);
    if (memory->version != FAKE_STRUCT_VERSION(nvmlMemory_v2_t, 2))
        return leave(NVML_ERROR_ARGUMENT_VERSION_MISMATCH);
    memory->total = gpu->memory_total;
    memory->reserved = gpu->memory_reserved;
    memory->used = 0;
    memory->free = gpu->memory_total - gpu->memory_reserved;
    return leave(NVML_SUCCESS);
}

FAKE_EXPORT nvmlReturn_t nvmlDeviceGetSupportedEventTypes(nvmlDevice_t device, unsigned long long *types)
{
    struct fake_gpu *gpu;
    nvmlReturn_t rc = enter_gpu(device, &gpu);
    if (rc != NVML_SUCCESS)
        return rc;
    if (types == NULL)
        return leave(NVML_ERROR_INVALID_ARGUMENT);
    *types = gpu->supported_events;
    return leave(NVML_SUCCESS);
}

/* ---- events ---- */

FAKE_EXPORT nvmlReturn_t nvmlEventSetCreate(nvmlEventSet_t *set)
{
    nvmlReturn_t rc = enter();
    if (rc != NVML_SUCCESS)
        return rc;
    if (set == NULL)
        return leave(NVML_ERROR_INVALID_ARGUMENT);
    struct fake_event_set *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return leave(NVML_ERROR_MEMORY);
    s->next = g.sets;
    g.sets = s;
    *set = s;
    return leave(NVML_SUCCESS);
}

FAKE_EXPORT nvmlReturn_t nvmlDeviceRegisterEvents(nvmlDevice_t device, unsigned long long types,
                                                  nvmlEventSet_t set)
{
    struct fake_gpu *gpu;
    nvmlReturn_t rc = enter_gpu(device, &gpu);
    if (rc != NVML_SUCCESS)
        return rc;
    if (!set_live(set))
        return leave(NVML_ERROR_INVALID_ARGUMENT);
    if (types & ~gpu->supported_events)
        return leave(NVML_ERROR_NOT_SUPPORTED); /* NVML refuses the whole mask, not just the bit */
    set->registered[gpu->index] |= types;
    return leave(NVML_SUCCESS);
}

/* The next thing a wait on `s` reports: an event (SUCCESS), GPU_IS_LOST, or TIMEOUT for nothing.
 * A lost GPU the set watches blocks everything queued after its loss, as a real driver's wait
 * keeps failing once a GPU is off the bus; recovering the GPU releases those events. */
static nvmlReturn_t take(struct fake_event_set *s, struct fake_event *out)
{
    unsigned long long lost_seq = ULLONG_MAX;
    for (unsigned int i = 0; i < g.topo.count; i++)
        if (s->registered[i] && g.topo.gpus[i].lost && g.topo.gpus[i].lost_seq < lost_seq)
            lost_seq = g.topo.gpus[i].lost_seq;
    if (s->len > 0 && s->queue[s->head].seq < lost_seq) {
        *out = s->queue[s->head];
        s->head = (s->head + 1) % FAKE_QUEUE_LEN;
        s->len--;
        return NVML_SUCCESS;
    }
    return lost_seq != ULLONG_MAX ? NVML_ERROR_GPU_IS_LOST : NVML_ERROR_TIMEOUT;
}

static nvmlReturn_t wait_event(nvmlEventSet_t set, struct fake_event *event, unsigned int timeout_ms)
{
    nvmlReturn_t rc = enter();
    if (rc != NVML_SUCCESS)
        return rc;
    if (!set_live(set))
        return leave(NVML_ERROR_INVALID_ARGUMENT);
    struct timespec deadline = deadline_after(timeout_ms);
    set->waiters++;
    for (;;) {
        if (set->dead) { /* freed or shut down under us */
            rc = g.refcount == 0 ? NVML_ERROR_UNINITIALIZED : NVML_ERROR_INVALID_ARGUMENT;
            break;
        }
        rc = take(set, event);
        if (rc != NVML_ERROR_TIMEOUT)
            break;
        struct timespec now = deadline_after(0);
        if (!before(&now, &deadline))
            break;
        struct timespec wake = poll_wake(&deadline);
        pthread_cond_timedwait(&g.cond, &g.lock, &wake);
        if (!set->dead)
            fake_control_poll(); /* another process may have appended a command */
    }
    if (--set->waiters == 0 && set->dead)
        free(set);
    return leave(rc);
}

FAKE_EXPORT nvmlReturn_t nvmlEventSetWait_v2(nvmlEventSet_t set, nvmlEventData_t *data, unsigned int timeoutms)
{
    struct fake_event event;
    if (data == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    nvmlReturn_t rc = wait_event(set, &event, timeoutms);
    if (rc == NVML_SUCCESS) {
        data->device = &g.topo.gpus[event.gpu];
        data->eventType = event.type;
        data->eventData = event.data;
        data->gpuInstanceId = 0xFFFFFFFFu; /* not a MIG instance event */
        data->computeInstanceId = 0xFFFFFFFFu;
    }
    return rc;
}

FAKE_EXPORT nvmlReturn_t nvmlEventSetWait(nvmlEventSet_t set, nvmlEventData_v1_t *data, unsigned int timeoutms)
{
    struct fake_event event;
    if (data == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    nvmlReturn_t rc = wait_event(set, &event, timeoutms);
    if (rc == NVML_SUCCESS) {
        data->device = &g.topo.gpus[event.gpu];
        data->eventType = event.type;
        data->eventData = event.data;
    }
    return rc;
}

FAKE_EXPORT nvmlReturn_t nvmlEventSetFree(nvmlEventSet_t set)
{
    nvmlReturn_t rc = enter();
    if (rc != NVML_SUCCESS)
        return rc;
    struct fake_event_set **link = &g.sets;
    while (*link != NULL && *link != set)
        link = &(*link)->next;
    if (*link == NULL)
        return leave(NVML_ERROR_INVALID_ARGUMENT);
    *link = set->next;
    if (set->waiters > 0) {
        set->dead = 1; /* the last waiter frees it */
        pthread_cond_broadcast(&g.cond);
    } else {
        free(set);
    }
    return leave(NVML_SUCCESS);
}

/* ---- nvsentinel's control symbols (not NVML; used by nvsentinel.fake_nvml only) ---- */

FAKE_EXPORT const char *fakeNvmlIdentity(void)
{
    return FAKE_IDENTITY;
}

/* Choose the topology file and control file for the next nvmlInit (while no nvmlInit is in
 * effect). NULL: read the environment variable; "": none (the built-in topology / no file). */
FAKE_EXPORT int fakeNvmlConfigure(const char *topology, const char *control)
{
    if ((topology && strlen(topology) >= FAKE_PATH_LEN) || (control && strlen(control) >= FAKE_PATH_LEN)) {
        set_last_error("path too long");
        return -1;
    }
    lock();
    g.topology_configured = topology != NULL;
    snprintf(g.topology_path, sizeof(g.topology_path), "%s", topology ? topology : "");
    g.control_configured = control != NULL;
    snprintf(g.control_path, sizeof(g.control_path), "%s", control ? control : "");
    leave(NVML_SUCCESS);
    return 0;
}

/* Apply one control command in this process now (same language as the control file). */
FAKE_EXPORT int fakeNvmlInject(const char *command)
{
    char err[FAKE_ERR_LEN];
    if (command == NULL) {
        set_last_error("no command");
        return -1;
    }
    lock();
    if (g.refcount == 0) {
        leave(NVML_SUCCESS);
        set_last_error("NVML is not initialized (call nvmlInit first)");
        return -1;
    }
    fake_control_poll(); /* keep file commands and this one in order */
    int rc = fake_apply_command(command, err, sizeof(err));
    leave(NVML_SUCCESS);
    set_last_error(rc < 0 ? err : "");
    return rc;
}

/* The GPU reset the remediation path performs (nvidia-smi -r on a real node; NVML exposes no
 * reset): the GPU is reachable again and its undelivered events are discarded. */
FAKE_EXPORT int fakeNvmlResetGpu(unsigned int index)
{
    char command[32];
    snprintf(command, sizeof(command), "reset %u", index);
    return fakeNvmlInject(command);
}

FAKE_EXPORT const char *fakeNvmlLastError(void)
{
    return last_error;
}
