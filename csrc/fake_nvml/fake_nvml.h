/* Internal declarations of nvsentinel's fake libnvidia-ml (tests and demos only).
 *
 * Why C and not a Python mock: the NVML provider must run the real, unmodified pynvml module, which
 * loads "libnvidia-ml.so.1" with ctypes (SPEC §5). A shared library with that SONAME, preloaded by
 * path, is the only stand-in that exercises the production code path. Layout:
 *   nvml_abi.h  the NVML structs and constants pynvml uses
 *   topology.c  the built-in 8x H100 topology and the JSON topology file
 *   control.c   fault commands (file channel and in-process), event queues
 *   api.c       the exported NVML functions and the fakeNvml* control symbols
 * Every symbol is hidden unless marked FAKE_EXPORT, so nothing but the NVML names leaks.
 */
#ifndef NVSENTINEL_FAKE_NVML_H
#define NVSENTINEL_FAKE_NVML_H

#include <pthread.h>
#include <stddef.h>
#include <sys/types.h>
#include <time.h>

#include "nvml_abi.h"

#define FAKE_EXPORT __attribute__((visibility("default")))

#define FAKE_MAX_GPUS 64          /* a node has at most 8-16; 64 keeps the tables static */
#define FAKE_NAME_LEN NVML_DEVICE_NAME_V2_BUFFER_SIZE
#define FAKE_UUID_LEN NVML_DEVICE_UUID_V2_BUFFER_SIZE
#define FAKE_VERSION_LEN NVML_SYSTEM_DRIVER_VERSION_BUFFER_SIZE
#define FAKE_SERIAL_LEN NVML_DEVICE_SERIAL_BUFFER_SIZE
#define FAKE_HANG_MAX_S 3600      /* the longest `hang` window */
#define FAKE_RECOVERY_ACTION_MIN_DRIVER 565 /* the first driver branch with NVML_FI_DEV_GET_GPU_RECOVERY_ACTION */
#define FAKE_ERR_LEN 512
#define FAKE_PATH_LEN 4096
#define FAKE_QUEUE_LEN 1024       /* events per set; a consumer 1024 events behind is broken */
#define FAKE_POLL_NS 5000000LL    /* 5 ms: how often a blocked wait re-reads the control file */

#define FAKE_IDENTITY "nvsentinel-fake-nvml/1"
#define FAKE_ENV_TOPOLOGY "NVSENTINEL_FAKE_NVML_TOPOLOGY"
#define FAKE_ENV_CONTROL "NVSENTINEL_FAKE_NVML_CONTROL"

struct fake_gpu {
    unsigned int index;
    char name[FAKE_NAME_LEN];
    char uuid[FAKE_UUID_LEN];
    char serial[FAKE_SERIAL_LEN];            /* the board's serial number (nvmlDeviceGetSerial) */
    unsigned int domain, bus, device;        /* PCI location; function is always 0 */
    unsigned int pci_device_id;              /* device << 16 | vendor, as NVML reports it */
    unsigned int pci_subsystem_id;
    unsigned long long memory_total;         /* bytes */
    unsigned long long memory_reserved;      /* bytes, part of memory_total */
    unsigned long long supported_events;     /* NVML_EVENT_* mask */
    int lost;                                /* every call on it answers GPU_IS_LOST */
    unsigned long long lost_seq;             /* event sequence number at the loss */
    int recovery_action_supported;           /* field 230 answers; -1 until the topology resolves it */
    unsigned int recovery_action;            /* NVML_GPU_RECOVERY_ACTION_* (any 32-bit value) */
    int hung;                                /* calls on it block until hang_until (CLOCK_MONOTONIC) */
    struct timespec hang_until;
};

struct fake_topology {
    char driver_version[FAKE_VERSION_LEN];
    char nvml_version[FAKE_VERSION_LEN];
    int cuda_driver_version;                 /* 12040 == CUDA 12.4 */
    unsigned int count;
    struct fake_gpu gpus[FAKE_MAX_GPUS];
};

struct fake_event {
    unsigned int gpu;
    unsigned long long type;
    unsigned long long data;
    unsigned long long seq;                  /* global order, compared with fake_gpu.lost_seq */
};

struct fake_event_set {
    struct fake_event_set *next;             /* the live list, g.sets */
    unsigned long long registered[FAKE_MAX_GPUS]; /* event types registered per GPU index */
    struct fake_event queue[FAKE_QUEUE_LEN]; /* ring */
    unsigned int head, len;
    int overflow_reported;
    int waiters;                             /* threads inside nvmlEventSetWait on this set */
    int dead;                                /* freed or shut down while waited on; last waiter frees */
};

/* All mutable state, guarded by `lock`; `cond` (CLOCK_MONOTONIC) wakes waiters on new events. */
struct fake_state {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int refcount;                            /* nvmlInit calls minus nvmlShutdown calls */
    struct fake_topology topo;
    struct fake_event_set *sets;
    unsigned long long seq;
    /* configuration: fakeNvmlConfigure overrides the environment */
    int topology_configured, control_configured;
    char topology_path[FAKE_PATH_LEN];
    char control_path[FAKE_PATH_LEN];
    /* control file reader */
    char control_active[FAKE_PATH_LEN];      /* "" when there is no control channel */
    off_t control_cursor;                    /* bytes consumed: always just after a '\n' */
    dev_t control_dev;
    ino_t control_ino;
    int control_error_reported;
    int control_replaying;                   /* nvmlInit is replaying the file: skip transient commands */
};

extern struct fake_state g;

/* topology.c */
void fake_default_topology(struct fake_topology *t, unsigned int count);
/* Load `path` (NULL or "" for the built-in topology). 0, or -1 with a one-line reason in err. */
int fake_load_topology(const char *path, struct fake_topology *t, char *err, size_t errlen);
int fake_valid_uuid(const char *uuid);
int fake_valid_serial(const char *serial);
/* The deterministic identity of a board swapped in for one with this UUID / serial
 * (nvsentinel.devtools.fake_nvml.replacement_uuid / replacement_serial compute the same). */
void fake_replacement_uuid(const char *old_uuid, char *out, size_t outlen);
void fake_replacement_serial(const char *old_serial, char *out, size_t outlen);

/* control.c (all called with g.lock held) */
void fake_control_start(const char *path);
void fake_control_poll(void);
/* Apply one command line; 0, or -1 with the reason in err. */
int fake_apply_command(const char *line, char *err, size_t errlen);
void fake_sets_destroy_all(void);
void fake_set_push(struct fake_event_set *s, unsigned int gpu, unsigned long long type,
                   unsigned long long data, unsigned long long seq);

#endif /* NVSENTINEL_FAKE_NVML_H */
