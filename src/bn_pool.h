/* bnfast's thread pool: the one place where kernels run on several threads.
 *
 * Why not an OpenMP parallel region: a region ends at a barrier that waits for every thread of
 * its team, so on a machine where other processes keep the CPUs busy a call waits for a
 * sibling thread that the scheduler has not run yet: a time slice (about 4 ms) per region,
 * where the work itself may take 0.1 ms (docs/design.md §3, "Threads on a busy machine").
 * Here a call is a list of tasks that any thread claims with one atomic increment; the calling
 * thread claims tasks too, and once none is left it waits only for tasks that another thread
 * has claimed and is running.  A helper that wakes up late finds nothing left and goes back to
 * sleep: nobody waits for it.  Which thread runs a task never changes what the task computes,
 * so results stay bit-identical for every thread count.
 *
 * The protocol, on one 64-bit word `ticket` = generation (16 bits) | tasks (24) | next (24):
 *  - the caller writes the job (function, context, tasks per claim), then stores a new
 *    ticket (next = 0) with release order, and wakes up to nt - 1 sleeping helpers;
 *  - a claim is fetch_add(ticket, 1): it returns (generation, tasks, index) of the job that
 *    was current at that instant.  index < tasks is a task nobody else has; index >= tasks
 *    means the job has nothing left (the increment is harmless: the next job overwrites
 *    the ticket).  A job cannot finish before each of its claimed tasks is done, and the next
 *    job is published only after that, so the fields read after a valid claim are its own;
 *  - whoever completes the last task stores the generation in `finished` and wakes the
 *    caller, who spins briefly, then sleeps, until it sees it.
 * Helpers take a slot (at most nt - 1 per job) before they claim, so a call never runs on
 * more threads than asked for (a helper that slept through a whole job may still run one task
 * of the next one: a momentary extra thread, never a wrong result).
 *
 * One thing no protocol prevents: a helper that the scheduler stops in the middle of a task it
 * claimed (other processes want the CPU) holds the caller until it runs again.  When a call
 * waits for such a straggler (over 0.1 ms and a quarter of its own part of the work: a
 * helper that runs leaves it at most one task to wait for), the pool backs off: calls run on
 * their own thread for 10 ms, twice as long after each further straggler, up to a second,
 * and a quarter less long after each call with helpers that had none (so the back-off grows
 * while more than about three calls with helpers in ten meet a straggler, and fades away on
 * a machine that has become quiet).  On a machine that other processes keep busy, default
 * threads then cost what one thread costs, and about one call a second probes whether
 * helpers run again.
 *
 * Linux sleeps on futexes; other POSIX systems on a mutex and condition variable; elsewhere
 * (Windows) there is no pool and plan.pxi runs the tasks in an OpenMP loop.  Helpers are
 * started on first use, up to the processor count, and never stopped; a child process
 * after fork() starts with none (pthread_atfork).
 */
#ifndef BN_POOL_H
#define BN_POOL_H

#include <stdint.h>
#include <stddef.h>
#include <numpy/npy_common.h>
#include "bn_half.h"

typedef void (*bn_task_fn)(void *ctx, npy_intp i);

#if (defined(__GNUC__) || defined(__clang__)) && (defined(__unix__) || defined(__APPLE__))
#define BN_HAVE_POOL 1
#include <pthread.h>
#include <sched.h>
#include <time.h>
#ifdef __linux__
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
#define BN_POOL_FUTEX 1
#endif

#define BN_POOL_MAX 256             /* helpers, at most */
#define BN_TICKET_BITS 24
#define BN_TICKET_MASK ((uint64_t)((1u << BN_TICKET_BITS) - 1))
/* Claims per job stay below this (the index field must not carry into the task count, even
 * with every helper over-claiming once). */
#define BN_TICKET_CLAIMS ((npy_intp)BN_TICKET_MASK - 2 * BN_POOL_MAX)
/* Spinning before sleeping: a helper waits this long for the next job (a training forward
 * is two or three jobs back to back), the caller this long for the last running task. */
#define BN_HELPER_SPIN_NS 100000
#define BN_CALLER_SPIN_NS 50000
/* A straggler: a wait for other threads' tasks longer than this and than a quarter of the
 * caller's own part of the work.  A helper that runs normally leaves the caller at most its
 * last task to wait for, a few percent of the call (tens of tasks are shared out); a helper
 * that the scheduler stopped leaves it a time slice. */
#define BN_STRAGGLER_NS 100000
#define BN_STRAGGLER_DIV 4
#define BN_BACKOFF_MIN_NS 10000000
#define BN_BACKOFF_MAX_NS 1000000000

static struct {
    uint64_t ticket;                /* atomic: generation | tasks | next */
    uint32_t seq;                   /* atomic: bumped per job; helpers sleep on it */
    uint32_t finished;              /* atomic: generation of the last finished job */
    uint32_t slots;                 /* atomic: generation << 16 | helper slots left */
    int64_t done;                   /* atomic: claims completed in the current job */
    int busy;                       /* atomic: a job is running (one at a time) */
    int sleepers[2];                /* atomic: helpers asleep on seq; the caller on finished */
    int n_helpers;                  /* started (guarded by start_lock) */
    uint32_t generation;            /* the caller's; written under busy */
    bn_task_fn fn;                  /* the job: written before its ticket is published */
    void *ctx;
    npy_intp per, n_tasks;
    int64_t backoff_ns;             /* the last back-off (0: none); written under busy */
    int64_t backoff_until;          /* atomic: calls run on their own thread until then */
    int64_t backoffs;               /* atomic: how many times the pool backed off */
    int64_t helped;                 /* atomic: claims that helpers ran (diagnostics) */
    pthread_mutex_t start_lock;
#ifndef BN_POOL_FUTEX
    pthread_mutex_t lock;
    pthread_cond_t job_cv, done_cv;
#endif
} bn_pool = {0, 0, 0, 0, 0, 0, {0, 0}, 0, 0, NULL, NULL, 0, 0, 0, 0, 0, 0,
             PTHREAD_MUTEX_INITIALIZER,
#ifndef BN_POOL_FUTEX
             PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, PTHREAD_COND_INITIALIZER
#endif
};

#define BN_LOAD(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define BN_STORE(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)

static inline void bn_pause(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static inline int64_t bn_now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

/* Wait until *word != old: spin up to spin_ns, then sleep.  `caller`: 1 for the caller
 * waiting on `finished`, 0 for a helper waiting on `seq`.  A sleeper is counted before it
 * checks the word one last time (sequentially consistent), and a waker that changed the word
 * first reads the count: either the sleeper sees the change or the waker sees the sleeper,
 * so a wake-up is never lost and no system call is made for nobody. */
static void bn_wait_change(uint32_t *word, uint32_t old, int64_t spin_ns, int caller)
{
    int64_t until = 0;
    for (int i = 0; BN_LOAD(word) == old; i++) {
        if ((i & 63) == 0) {
            const int64_t now = bn_now_ns();
            if (until == 0)
                until = now + spin_ns;
            else if (now > until)
                break;
        }
        bn_pause();
    }
    __atomic_add_fetch(&bn_pool.sleepers[caller], 1, __ATOMIC_SEQ_CST);
#ifdef BN_POOL_FUTEX
    while (__atomic_load_n(word, __ATOMIC_SEQ_CST) == old)
        syscall(SYS_futex, word, FUTEX_WAIT_PRIVATE, old, NULL, NULL, 0);
#else
    pthread_mutex_lock(&bn_pool.lock);
    while (__atomic_load_n(word, __ATOMIC_SEQ_CST) == old)
        pthread_cond_wait(caller ? &bn_pool.done_cv : &bn_pool.job_cv, &bn_pool.lock);
    pthread_mutex_unlock(&bn_pool.lock);
#endif
    __atomic_sub_fetch(&bn_pool.sleepers[caller], 1, __ATOMIC_SEQ_CST);
}

/* Wake up to n threads waiting on *word (just changed, sequentially consistent). */
static void bn_wake(uint32_t *word, int n, int caller)
{
    if (__atomic_load_n(&bn_pool.sleepers[caller], __ATOMIC_SEQ_CST) == 0)
        return;
#ifdef BN_POOL_FUTEX
    syscall(SYS_futex, word, FUTEX_WAKE_PRIVATE, n, NULL, NULL, 0);
#else
    (void)word;
    pthread_mutex_lock(&bn_pool.lock);
    if (caller)
        pthread_cond_broadcast(&bn_pool.done_cv);
    else if (n == 1)
        pthread_cond_signal(&bn_pool.job_cv);
    else
        pthread_cond_broadcast(&bn_pool.job_cv);
    pthread_mutex_unlock(&bn_pool.lock);
#endif
}

/* Claim and run tasks until the ticket's job has none left.  `caller`: this is the thread
 * that published the job (it needs no wake-up when it completes the last task itself). */
static void bn_pool_drain(int caller)
{
    for (;;) {
        const uint64_t t = __atomic_fetch_add(&bn_pool.ticket, 1, __ATOMIC_ACQ_REL);
        const npy_intp tasks = (npy_intp)((t >> BN_TICKET_BITS) & BN_TICKET_MASK);
        const npy_intp i = (npy_intp)(t & BN_TICKET_MASK);
        if (i >= tasks)
            return;
        /* A valid claim: the job cannot finish (nor be replaced) before this task is done. */
        const npy_intp per = bn_pool.per, n = bn_pool.n_tasks;
        const npy_intp end = (i + 1) * per < n ? (i + 1) * per : n;
        for (npy_intp k = i * per; k < end; k++)
            bn_pool.fn(bn_pool.ctx, k);
        if (!caller)
            __atomic_add_fetch(&bn_pool.helped, 1, __ATOMIC_RELAXED);
        if (__atomic_add_fetch(&bn_pool.done, 1, __ATOMIC_ACQ_REL) == (int64_t)tasks) {
            __atomic_store_n(&bn_pool.finished, (uint32_t)(t >> (2 * BN_TICKET_BITS)),
                             __ATOMIC_SEQ_CST);
            if (!caller)
                bn_wake(&bn_pool.finished, 1, 1);
        }
    }
}

/* Take one of the current job's helper slots; 0 when there is none. */
static int bn_take_slot(void)
{
    uint32_t s = BN_LOAD(&bn_pool.slots);
    while (s & 0xffffu) {
        if (__atomic_compare_exchange_n(&bn_pool.slots, &s, s - 1, 0, __ATOMIC_ACQ_REL,
                                        __ATOMIC_ACQUIRE))
            return 1;
    }
    return 0;
}

static void *bn_helper_main(void *unused)
{
    (void)unused;
    uint32_t seen = BN_LOAD(&bn_pool.seq);
    for (;;) {
        bn_wait_change(&bn_pool.seq, seen, BN_HELPER_SPIN_NS, 0);
        seen = BN_LOAD(&bn_pool.seq);
        if (bn_take_slot())
            bn_pool_drain(0);
    }
    return NULL;
}

static void bn_pool_after_fork(void)
{
    /* The child has only the thread that forked: no helpers, no job in flight. */
    bn_pool.n_helpers = 0;
    bn_pool.busy = 0;
    bn_pool.slots = 0;
    bn_pool.sleepers[0] = bn_pool.sleepers[1] = 0;
    bn_pool.ticket = (uint64_t)(bn_pool.generation & 0xffffu) << (2 * BN_TICKET_BITS);
    pthread_mutex_init(&bn_pool.start_lock, NULL);
#ifndef BN_POOL_FUTEX
    pthread_mutex_init(&bn_pool.lock, NULL);
    pthread_cond_init(&bn_pool.job_cv, NULL);
    pthread_cond_init(&bn_pool.done_cv, NULL);
#endif
}

/* Start helpers until there are `want`; returns how many there are. */
static int bn_pool_start(int want)
{
    static int registered = 0;
    want = want < BN_POOL_MAX ? want : BN_POOL_MAX;
    if (BN_LOAD(&bn_pool.n_helpers) >= want)
        return BN_LOAD(&bn_pool.n_helpers);
    pthread_mutex_lock(&bn_pool.start_lock);
    if (!registered) {
        pthread_atfork(NULL, NULL, bn_pool_after_fork);
        registered = 1;
    }
    while (bn_pool.n_helpers < want) {
        pthread_t th;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        const int rc = pthread_create(&th, &attr, bn_helper_main, NULL);
        pthread_attr_destroy(&attr);
        if (rc != 0)
            break; /* fewer helpers: the caller does more of the work itself */
        BN_STORE(&bn_pool.n_helpers, bn_pool.n_helpers + 1);
    }
    pthread_mutex_unlock(&bn_pool.start_lock);
    return BN_LOAD(&bn_pool.n_helpers);
}

/* A call with helpers met no straggler: a quarter less of the back-off (under the minimum,
 * none).  Called under busy. */
static void bn_pool_ease(void)
{
    const int64_t b = bn_pool.backoff_ns - bn_pool.backoff_ns / 4;
    bn_pool.backoff_ns = b < BN_BACKOFF_MIN_NS / 2 ? 0 : b;
}

/* fn(ctx, i) for every i < n_tasks on up to nt threads (this one included), each task once.
 * `per`: consecutive tasks per claim (>= 1), fewer claims for many cheap tasks.  A call
 * made while another call's job runs (another Python thread, or a task that calls back)
 * runs its tasks on its own thread. */
static void bn_pool_run(bn_task_fn fn, void *ctx, npy_intp n_tasks, int nt, npy_intp per)
{
    int expected = 0;
    if (per < 1)
        per = 1;
    if (n_tasks > per * BN_TICKET_CLAIMS)
        per = (n_tasks + BN_TICKET_CLAIMS - 1) / BN_TICKET_CLAIMS;
    const npy_intp claims = (n_tasks + per - 1) / per;
    if (nt > claims)
        nt = (int)claims;
    const int64_t start = nt > 1 ? bn_now_ns() : 0;
    if (nt <= 1 || start < BN_LOAD(&bn_pool.backoff_until)
        || !__atomic_compare_exchange_n(&bn_pool.busy, &expected, 1, 0, __ATOMIC_ACQUIRE,
                                        __ATOMIC_RELAXED)) {
        for (npy_intp i = 0; i < n_tasks; i++)
            fn(ctx, i);
        return;
    }
    const int started = bn_pool_start(nt - 1);
    const int helpers = started < nt - 1 ? started : nt - 1;
    const uint32_t gen = bn_pool.generation = (bn_pool.generation + 1) & 0xffffu;
    bn_pool.fn = fn;
    bn_pool.ctx = ctx;
    bn_pool.per = per;
    bn_pool.n_tasks = n_tasks;
    BN_STORE(&bn_pool.done, 0);
    BN_STORE(&bn_pool.slots, gen << 16 | (uint32_t)helpers);
    BN_STORE(&bn_pool.ticket, (uint64_t)gen << (2 * BN_TICKET_BITS)
                                  | (uint64_t)claims << BN_TICKET_BITS);
    __atomic_add_fetch(&bn_pool.seq, 1, __ATOMIC_SEQ_CST);
    if (helpers > 0)
        bn_wake(&bn_pool.seq, helpers, 0);
    bn_pool_drain(1);
    /* Only tasks that another thread claimed and is running are left: wait for them. */
    const int64_t drained = bn_now_ns();
    uint32_t f = BN_LOAD(&bn_pool.finished);
    if (f != gen) {
        do {
            bn_wait_change(&bn_pool.finished, f, BN_CALLER_SPIN_NS, 1);
            f = BN_LOAD(&bn_pool.finished);
        } while (f != gen);
        const int64_t end = bn_now_ns(), waited = end - drained;
        if (waited > BN_STRAGGLER_NS && BN_STRAGGLER_DIV * waited > drained - start) {
            int64_t b = 2 * bn_pool.backoff_ns;
            b = b < BN_BACKOFF_MIN_NS ? BN_BACKOFF_MIN_NS : b > BN_BACKOFF_MAX_NS ? BN_BACKOFF_MAX_NS : b;
            bn_pool.backoff_ns = b;
            BN_STORE(&bn_pool.backoff_until, end + b);
            __atomic_add_fetch(&bn_pool.backoffs, 1, __ATOMIC_RELAXED);
        } else {
            bn_pool_ease();
        }
    } else {
        bn_pool_ease();
    }
    BN_STORE(&bn_pool.busy, 0);
}

static int bn_pool_enabled(void) { return 1; }
static int bn_pool_helpers(void) { return BN_LOAD(&bn_pool.n_helpers); }
static int64_t bn_pool_backoffs(void) { return BN_LOAD(&bn_pool.backoffs); }
static int64_t bn_pool_helped(void) { return BN_LOAD(&bn_pool.helped); }

#else  /* no pool: plan.pxi runs its OpenMP loop (or a plain loop) instead */
#define BN_HAVE_POOL 0
static void bn_pool_run(bn_task_fn fn, void *ctx, npy_intp n_tasks, int nt, npy_intp per)
{
    (void)nt;
    (void)per;
    for (npy_intp i = 0; i < n_tasks; i++)
        fn(ctx, i);
}
static int bn_pool_enabled(void) { return 0; }
static int bn_pool_helpers(void) { return 0; }
static int64_t bn_pool_backoffs(void) { return 0; }
static int64_t bn_pool_helped(void) { return 0; }
#endif

/* The tasks of plan.pxi are typed by the element type of their array; the pool calls
 * untyped ones.  A task call: the typed function (stored as a generic function pointer,
 * converted back to its own type before the call, as C allows) and its arguments. */
typedef void (*bn_any_fn)(void);
typedef struct {
    bn_any_fn task;
    const void *x;
    void *job;
} bn_task_call;

#define BN_TASK_TRAMPOLINE(name, T)                                                          \
    static void name(void *ctx, npy_intp i)                                                  \
    {                                                                                        \
        const bn_task_call *c = (const bn_task_call *)ctx;                                   \
        ((void (*)(const T *, void *, npy_intp))c->task)((const T *)c->x, c->job, i);        \
    }
BN_TASK_TRAMPOLINE(bn_call_f32, float)
BN_TASK_TRAMPOLINE(bn_call_f64, double)
BN_TASK_TRAMPOLINE(bn_call_f16, bn_f16)
BN_TASK_TRAMPOLINE(bn_call_bf16, bn_bf16)
#undef BN_TASK_TRAMPOLINE

#endif
