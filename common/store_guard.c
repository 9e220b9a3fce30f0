/* store_guard.c - faults inside a store's map become errors (store_guard.h).
 *
 * LMDB reads a store through a memory map.  A page past the end of a cut
 * data.mdb is a SIGBUS, a damaged page pointer can be a SIGSEGV, and a
 * damaged page can trip one of LMDB's assertions, which abort().  Every
 * LMDB call of store.c runs inside a guard: the signal handler (or the
 * assertion callback) jumps back to the guard when the fault lies in the
 * map of the store the thread is working on, and the call returns an
 * error naming the store.  A fault anywhere else goes on to the handler
 * that was installed before (by default it ends the process as usual).
 *
 * Jumping out of LMDB is safe for a read transaction: LMDB holds no lock
 * while it reads pages, and aborting the transaction only frees its
 * reader slot; the store's handle then refuses further use (Store.broken)
 * and the process goes on.  A write transaction holds the writer's lock
 * and may be half done, so a fault during a write is not jumped out of:
 * the process stops with a message naming the store. */
#define _GNU_SOURCE /* REG_RIP */
#include "common/store_guard.h"

#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <ucontext.h>
#include <unistd.h>

static __thread StoreGuard s_guard;
static __thread char s_assert_text[256];
static __thread int s_fault_why; /* SIGBUS, SIGSEGV or STORE_FAULT_ASSERT, set before a jump */
static struct sigaction s_old_bus, s_old_segv;
static uintptr_t s_lmdb_lo, s_lmdb_hi; /* LMDB's code, for faults outside the map */
static pthread_once_t s_sig_once = PTHREAD_ONCE_INIT;

/* Where LMDB's code is mapped: a segmentation fault there, during a
 * guarded read, is LMDB following a damaged page pointer out of the map. */
static void s_find_lmdb_code(void)
{
    FILE *f = fopen("/proc/self/maps", "re");
    if (!f)
        return;
    char line[4096];
    while (fgets(line, sizeof line, f)) {
        unsigned long long a, b;
        char perm[8];
        if (sscanf(line, "%llx-%llx %7s", &a, &b, perm) == 3 && perm[2] == 'x' && strstr(line, "liblmdb")) {
            if (!s_lmdb_lo || (uintptr_t)a < s_lmdb_lo)
                s_lmdb_lo = (uintptr_t)a;
            if ((uintptr_t)b > s_lmdb_hi)
                s_lmdb_hi = (uintptr_t)b;
        }
    }
    fclose(f);
}

static uintptr_t s_fault_pc(void *uc)
{
#if defined(__x86_64__)
    return (uintptr_t)((ucontext_t *)uc)->uc_mcontext.gregs[REG_RIP];
#elif defined(__aarch64__)
    return (uintptr_t)((ucontext_t *)uc)->uc_mcontext.pc;
#else
    (void)uc;
    return 0;
#endif
}

/* A fault while writing: the writer holds LMDB's lock with a transaction
 * half done, so the process stops, with a message (async-signal-safe). */
static void s_write_fault_exit(const StoreMap *s, const char *what)
{
    const char *parts[] = {"docmint: ", s->path, ": damaged store: ", what,
                           " inside its map while writing; stopped\n"};
    for (size_t i = 0; i < sizeof parts / sizeof *parts; i++) {
        ssize_t r = write(2, parts[i], strlen(parts[i]));
        (void)r;
    }
    _exit(EXIT_FAILURE);
}

static void s_on_fault(int sig, siginfo_t *si, void *uc)
{
    const StoreMap *s = s_guard.map;
    uintptr_t a = (uintptr_t)si->si_addr, pc = s_fault_pc(uc);
    int in_map = s && a >= s->lo && a < s->hi;
    int in_lmdb = sig == SIGSEGV && pc >= s_lmdb_lo && pc < s_lmdb_hi;
    if (s && s_guard.jmp && (in_map || in_lmdb)) {
        if (!s_guard.writing) {
            s_fault_why = sig;
            siglongjmp(*s_guard.jmp, 1);
        }
        s_write_fault_exit(s, sig == SIGBUS ? "bus error" : "invalid memory access");
    }
    const struct sigaction *old = sig == SIGBUS ? &s_old_bus : &s_old_segv;
    if ((old->sa_flags & SA_SIGINFO) && old->sa_sigaction) {
        old->sa_sigaction(sig, si, uc);
        return;
    }
    if (old->sa_handler != SIG_DFL && old->sa_handler != SIG_IGN) {
        old->sa_handler(sig);
        return;
    }
    /* the default action: end the process with this signal */
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    sigaction(sig, &dfl, NULL);
    raise(sig);
}

static void s_install_handlers(void)
{
    s_find_lmdb_code();
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = s_on_fault;
    /* SA_NODEFER: the signal is not blocked after the jump, so the guard
     * needs no sigprocmask (sigsetjmp without a saved mask). */
    sa.sa_flags = SA_SIGINFO | SA_NODEFER | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGBUS, &sa, &s_old_bus);
    sigaction(SIGSEGV, &sa, &s_old_segv);
}

static void s_on_assert(MDB_env *env, const char *msg)
{
    const StoreMap *s = mdb_env_get_userctx(env);
    if (s && s_guard.map == s && s_guard.jmp && s_guard.writing)
        s_write_fault_exit(s, msg);
    if (s && s_guard.map == s && s_guard.jmp) {
        snprintf(s_assert_text, sizeof s_assert_text, "%s", msg);
        s_fault_why = STORE_FAULT_ASSERT;
        siglongjmp(*s_guard.jmp, 1);
    }
    /* an assertion outside any guarded call: stop with a message rather
     * than abort() */
    fprintf(stderr, "docmint: %s: damaged store: LMDB %s\n", s ? s->path : "(store)", msg);
    _exit(EXIT_FAILURE);
}

/* The map's address range (after open and after every remap).  LMDB does
 * not say where it mapped the file (mdb_env_info's me_mapaddr is the
 * fixed address asked for, normally none), so look the mapping up in
 * /proc/self/maps by the file's device and inode. */
void store_map_locate(StoreMap *s)
{
    char data[4096];
    struct stat st;
    snprintf(data, sizeof data, "%s/data.mdb", s->path);
    s->lo = s->hi = 0;
    if (stat(data, &st) < 0)
        return;
    FILE *f = fopen("/proc/self/maps", "re");
    if (!f)
        return;
    char line[4096], real[4096];
    if (!realpath(data, real))
        real[0] = '\0';
    uintptr_t lo = UINTPTR_MAX, hi = 0;
    while (fgets(line, sizeof line, f)) {
        unsigned long long a, b, off, ino;
        unsigned maj, mnr;
        char perm[8];
        int name_at = 0;
        if (sscanf(line, "%llx-%llx %7s %llx %x:%x %llu %n", &a, &b, perm, &off, &maj, &mnr, &ino,
                   &name_at) != 7)
            continue;
        /* by device and inode; by name where a stacked filesystem shows
         * other numbers in the maps than stat gives */
        int same = ino == (unsigned long long)st.st_ino && maj == major(st.st_dev) && mnr == minor(st.st_dev);
        if (!same && real[0] && name_at > 0) {
            char *nm = line + name_at;
            nm[strcspn(nm, "\n")] = '\0';
            same = strcmp(nm, real) == 0;
        }
        if (!same)
            continue;
        if ((uintptr_t)a < lo)
            lo = (uintptr_t)a;
        if ((uintptr_t)b > hi)
            hi = (uintptr_t)b;
    }
    fclose(f);
    if (hi > lo) {
        s->lo = lo;
        s->hi = hi;
    }
}

StoreGuard store_guard_enter(const StoreMap *m, sigjmp_buf *jb, int writing)
{
    StoreGuard prev = s_guard;
    s_guard.jmp = jb;
    s_guard.map = m;
    s_guard.writing = writing;
    return prev;
}

void store_guard_leave(StoreGuard prev)
{
    s_guard = prev;
}

int store_guard_why(void)
{
    return s_fault_why;
}

const char *store_guard_assert_text(void)
{
    return s_assert_text;
}

void store_guard_init(void)
{
    pthread_once(&s_sig_once, s_install_handlers);
}

void store_guard_env(MDB_env *env, const StoreMap *m)
{
    mdb_env_set_userctx(env, (void *)m);
    mdb_env_set_assert(env, s_on_assert);
}

