/* The slice of the NVML C ABI that nvsentinel's fake libnvidia-ml answers.
 *
 * Written from the ctypes declarations of nvidia-ml-py (pynvml.py), which is the only caller we
 * must satisfy: every layout here matches the `_fields_` of the pynvml structure named beside it,
 * and the _Static_asserts pin the sizes NVML encodes in its versioned-struct constants (e.g.
 * nvmlMemory_v2 = 0x02000028 is "version 2, 0x28 bytes"). This is not NVIDIA's nvml.h.
 */
#ifndef NVSENTINEL_FAKE_NVML_ABI_H
#define NVSENTINEL_FAKE_NVML_ABI_H

#include <stdint.h>

typedef unsigned int nvmlReturn_t;

/* return codes (pynvml NVML_SUCCESS, NVML_ERROR_*) */
#define NVML_SUCCESS                         0u
#define NVML_ERROR_UNINITIALIZED             1u
#define NVML_ERROR_INVALID_ARGUMENT          2u
#define NVML_ERROR_NOT_SUPPORTED             3u
#define NVML_ERROR_NO_PERMISSION             4u
#define NVML_ERROR_ALREADY_INITIALIZED       5u
#define NVML_ERROR_NOT_FOUND                 6u
#define NVML_ERROR_INSUFFICIENT_SIZE         7u
#define NVML_ERROR_INSUFFICIENT_POWER        8u
#define NVML_ERROR_DRIVER_NOT_LOADED         9u
#define NVML_ERROR_TIMEOUT                   10u
#define NVML_ERROR_IRQ_ISSUE                 11u
#define NVML_ERROR_LIBRARY_NOT_FOUND         12u
#define NVML_ERROR_FUNCTION_NOT_FOUND        13u
#define NVML_ERROR_CORRUPTED_INFOROM         14u
#define NVML_ERROR_GPU_IS_LOST               15u
#define NVML_ERROR_RESET_REQUIRED            16u
#define NVML_ERROR_OPERATING_SYSTEM          17u
#define NVML_ERROR_LIB_RM_VERSION_MISMATCH   18u
#define NVML_ERROR_IN_USE                    19u
#define NVML_ERROR_MEMORY                    20u
#define NVML_ERROR_NO_DATA                   21u
#define NVML_ERROR_VGPU_ECC_NOT_SUPPORTED    22u
#define NVML_ERROR_INSUFFICIENT_RESOURCES    23u
#define NVML_ERROR_FREQ_NOT_SUPPORTED        24u
#define NVML_ERROR_ARGUMENT_VERSION_MISMATCH 25u
#define NVML_ERROR_DEPRECATED                26u
#define NVML_ERROR_NOT_READY                 27u
#define NVML_ERROR_GPU_NOT_FOUND             28u
#define NVML_ERROR_INVALID_STATE             29u
#define NVML_ERROR_RESET_TYPE_NOT_SUPPORTED  30u
#define NVML_ERROR_UNKNOWN                   999u

/* buffer sizes pynvml passes (NVML_*_BUFFER_SIZE) */
#define NVML_SYSTEM_DRIVER_VERSION_BUFFER_SIZE 80
#define NVML_SYSTEM_NVML_VERSION_BUFFER_SIZE   80
#define NVML_DEVICE_UUID_V2_BUFFER_SIZE        96
#define NVML_DEVICE_NAME_V2_BUFFER_SIZE        96
#define NVML_DEVICE_PCI_BUS_ID_BUFFER_SIZE     32
#define NVML_DEVICE_PCI_BUS_ID_BUFFER_V2_SIZE  16
#define NVML_DEVICE_SERIAL_BUFFER_SIZE         30

/* field ids (pynvml NVML_FI_*) the fake answers; every other id is NOT_SUPPORTED per value */
#define NVML_FI_DEV_GET_GPU_RECOVERY_ACTION    230u

/* pynvml NVML_GPU_RECOVERY_ACTION_*: the value field 230 reports */
#define NVML_GPU_RECOVERY_ACTION_NONE                0u
#define NVML_GPU_RECOVERY_ACTION_GPU_RESET           1u
#define NVML_GPU_RECOVERY_ACTION_NODE_REBOOT         2u
#define NVML_GPU_RECOVERY_ACTION_DRAIN_P2P           3u
#define NVML_GPU_RECOVERY_ACTION_DRAIN_AND_RESET     4u
#define NVML_GPU_RECOVERY_ACTION_RECOVER_IMEX_DOMAIN 5u
#define NVML_GPU_RECOVERY_ACTION_BUS_RESET           6u
#define NVML_GPU_RECOVERY_ACTION_SYSTEM_REBOOT       7u

/* pynvml _nvmlValueType_t (NVML_VALUE_TYPE_*) */
#define NVML_VALUE_TYPE_DOUBLE       0u
#define NVML_VALUE_TYPE_UNSIGNED_INT 1u

/* event type bits (pynvml nvmlEventType*) */
#define NVML_EVENT_SINGLE_BIT_ECC       0x0000000000000001ULL
#define NVML_EVENT_DOUBLE_BIT_ECC       0x0000000000000002ULL
#define NVML_EVENT_PSTATE               0x0000000000000004ULL
#define NVML_EVENT_XID_CRITICAL_ERROR   0x0000000000000008ULL
#define NVML_EVENT_CLOCK                0x0000000000000010ULL
#define NVML_EVENT_POWER_SOURCE_CHANGE  0x0000000000000080ULL
#define NVML_EVENT_MIG_CONFIG_CHANGE    0x0000000000000100ULL
#define NVML_EVENT_SBE_STORM            0x0000000000000200ULL
#define NVML_EVENT_DRAM_RETIREMENT      0x0000000000000400ULL
#define NVML_EVENT_DRAM_RETIREMENT_FAIL 0x0000000000000800ULL
#define NVML_EVENT_NON_FATAL_POISON     0x0000000000001000ULL
#define NVML_EVENT_FATAL_POISON         0x0000000000002000ULL
#define NVML_EVENT_GPU_UNAVAILABLE      0x0000000000004000ULL
#define NVML_EVENT_GPU_RECOVERY_ACTION  0x0000000000008000ULL
#define NVML_EVENT_ALL_KNOWN            0x000000000000FF9FULL

/* NVML_STRUCT_VERSION(name, ver) == sizeof(struct) | ver << 24 */
#define FAKE_STRUCT_VERSION(type, ver) ((unsigned int)(sizeof(type) | ((unsigned int)(ver) << 24)))

/* Opaque to callers; a handle is a pointer into the library's own table (fake_nvml.h). */
typedef struct fake_gpu *nvmlDevice_t;
typedef struct fake_event_set *nvmlEventSet_t;

/* pynvml nvmlPciInfo_t: what nvmlDeviceGetPciInfo_v3 fills */
typedef struct {
    char busIdLegacy[NVML_DEVICE_PCI_BUS_ID_BUFFER_V2_SIZE]; /* "0000:18:00.0" */
    unsigned int domain;
    unsigned int bus;
    unsigned int device;
    unsigned int pciDeviceId;    /* device id << 16 | vendor id */
    unsigned int pciSubSystemId; /* subsystem id << 16 | subsystem vendor id */
    char busId[NVML_DEVICE_PCI_BUS_ID_BUFFER_SIZE];          /* "00000000:18:00.0" */
} nvmlPciInfo_t;

/* pynvml nvmlPciInfo_v2_t: the legacy layout of nvmlDeviceGetPciInfo and _v2 */
typedef struct {
    char busId[NVML_DEVICE_PCI_BUS_ID_BUFFER_V2_SIZE];
    unsigned int domain;
    unsigned int bus;
    unsigned int device;
    unsigned int pciDeviceId;
    unsigned int pciSubSystemId;
    unsigned int reserved0;
    unsigned int reserved1;
    unsigned int reserved2;
    unsigned int reserved3;
} nvmlPciInfo_v2_t;

/* pynvml nvmlPciInfoExt_v1_t (nvmlPciInfoExt_v1 = 0x1000040) */
typedef struct {
    unsigned int version;
    unsigned int domain;
    unsigned int bus;
    unsigned int device;
    unsigned int pciDeviceId;
    unsigned int pciSubSystemId;
    unsigned int baseClass;
    unsigned int subClass;
    char busId[NVML_DEVICE_PCI_BUS_ID_BUFFER_SIZE];
} nvmlPciInfoExt_v1_t;

/* pynvml c_nvmlMemory_t (bytes; `used` includes the reserved memory) */
typedef struct {
    unsigned long long total;
    unsigned long long free;
    unsigned long long used;
} nvmlMemory_t;

/* pynvml c_nvmlMemory_v2_t (nvmlMemory_v2 = 0x02000028) */
typedef struct {
    unsigned int version;
    unsigned long long total;
    unsigned long long reserved;
    unsigned long long free;
    unsigned long long used;
} nvmlMemory_v2_t;

/* pynvml c_nvmlEventData_t: what nvmlEventSetWait_v2 fills */
typedef struct {
    nvmlDevice_t device;
    unsigned long long eventType;
    unsigned long long eventData; /* the XID for XID critical errors, else 0 */
    unsigned int gpuInstanceId;   /* 0xFFFFFFFF: not a MIG event */
    unsigned int computeInstanceId;
} nvmlEventData_t;

/* the pre-MIG layout nvmlEventSetWait (v1) fills: the first three fields only */
typedef struct {
    nvmlDevice_t device;
    unsigned long long eventType;
    unsigned long long eventData;
} nvmlEventData_v1_t;

/* pynvml c_nvmlValue_t */
typedef union {
    double dVal;
    unsigned int uiVal;
    unsigned long ulVal;
    unsigned long long ullVal;
    signed long long sllVal;
    signed int siVal;
    unsigned short usVal;
} nvmlValue_t;

/* pynvml c_nvmlFieldValue_t: what nvmlDeviceGetFieldValues fills, one per requested field */
typedef struct {
    unsigned int fieldId;      /* in: NVML_FI_* */
    unsigned int scopeId;      /* in: e.g. an NVLink index; unused by the fields the fake has */
    long long timestamp;       /* out: CPU time of the read, microseconds since the epoch */
    long long latencyUsec;     /* out: how long the read took */
    unsigned int valueType;    /* out: NVML_VALUE_TYPE_* */
    nvmlReturn_t nvmlReturn;   /* out: this field's own result */
    nvmlValue_t value;
} nvmlFieldValue_t;

_Static_assert(sizeof(nvmlPciInfo_t) == 68, "nvmlPciInfo_t layout");
_Static_assert(sizeof(nvmlPciInfo_v2_t) == 52, "nvmlPciInfo_v2_t layout");
_Static_assert(sizeof(nvmlPciInfoExt_v1_t) == 0x40, "nvmlPciInfoExt_v1 = 0x1000040");
_Static_assert(sizeof(nvmlMemory_v2_t) == 0x28, "nvmlMemory_v2 = 0x02000028");
_Static_assert(sizeof(nvmlEventData_t) == 32, "nvmlEventData_t layout");
_Static_assert(sizeof(nvmlValue_t) == 8, "nvmlValue_t layout");
_Static_assert(sizeof(nvmlFieldValue_t) == 40, "nvmlFieldValue_t layout");

#endif /* NVSENTINEL_FAKE_NVML_ABI_H */
