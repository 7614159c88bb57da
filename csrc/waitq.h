#ifndef NVSENTINEL_WAITQ_H
#define NVSENTINEL_WAITQ_H
/*
 * A wait queue for watch subscribers, in C because a waiting thread must sleep without the GIL
 * and a publish must wake every sleeper with one broadcast (SPEC §2.2), not one call per
 * subscriber.
 *
 * Protocol: a waiter reads the generation, checks for work (holding the GIL), then sleeps until
 * the generation moves. A publisher bumps the generation after making work visible. The mutex is
 * only ever held for a few C statements and never while taking the GIL, so no lock-order cycle
 * with the GIL exists.
 */
#include <errno.h>
#include <pthread.h>
#include <time.h>

typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    unsigned long long gen;  /* bumped by every notify */
    int waiters;             /* threads inside nvs_waitq_wait */
} nvs_waitq;

static int nvs_waitq_init(nvs_waitq *q)
{
    pthread_condattr_t attr;
    if (pthread_mutex_init(&q->mu, NULL) != 0)
        return -1;
    if (pthread_condattr_init(&attr) != 0)
        return -1;
    /* monotonic: a wall-clock jump must not stretch or cut a timeout */
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    if (pthread_cond_init(&q->cv, &attr) != 0) {
        pthread_condattr_destroy(&attr);
        return -1;
    }
    pthread_condattr_destroy(&attr);
    q->gen = 0;
    q->waiters = 0;
    return 0;
}

static void nvs_waitq_destroy(nvs_waitq *q)
{
    pthread_cond_destroy(&q->cv);
    pthread_mutex_destroy(&q->mu);
}

static unsigned long long nvs_waitq_gen(nvs_waitq *q)
{
    unsigned long long g;
    pthread_mutex_lock(&q->mu);
    g = q->gen;
    pthread_mutex_unlock(&q->mu);
    return g;
}

static void nvs_waitq_notify(nvs_waitq *q)
{
    pthread_mutex_lock(&q->mu);
    q->gen++;
    if (q->waiters > 0)
        pthread_cond_broadcast(&q->cv);
    pthread_mutex_unlock(&q->mu);
}

/* Sleep until the generation differs from `seen` or `timeout` seconds pass.
   Returns 1 when woken by a notify, 0 on timeout. Call without the GIL. */
static int nvs_waitq_wait(nvs_waitq *q, unsigned long long seen, double timeout)
{
    struct timespec deadline;
    int woken;
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    if (timeout < 0)
        timeout = 0;
    deadline.tv_sec += (time_t)timeout;
    deadline.tv_nsec += (long)((timeout - (double)(time_t)timeout) * 1e9);
    if (deadline.tv_nsec >= 1000000000L) {
        deadline.tv_sec += 1;
        deadline.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&q->mu);
    q->waiters++;
    while (q->gen == seen) {
        if (pthread_cond_timedwait(&q->cv, &q->mu, &deadline) == ETIMEDOUT)
            break;
    }
    woken = q->gen != seen;
    q->waiters--;
    pthread_mutex_unlock(&q->mu);
    return woken;
}

#endif /* NVSENTINEL_WAITQ_H */
