/* store_guard.h - part of the store (common/store.c), not for other
 * callers: a SIGBUS or SIGSEGV inside a store's map, or an LMDB assertion,
 * during a guarded LMDB call comes back to the call (sigsetjmp) instead of
 * ending the process; during a write it stops the process with a message.
 * Faults elsewhere go on to the handler installed before.  Use:
 *
 *     sigjmp_buf jb;
 *     StoreGuard prev = store_guard_enter(&s->map, &jb, 0);
 *     if (sigsetjmp(jb, 0)) {          // a fault: store_guard_why() says which
 *         store_guard_leave(prev);
 *         ...abort the read transaction, report...
 *     }
 *     ...LMDB calls...
 *     store_guard_leave(prev);
 *
 * Variables changed after sigsetjmp and used after a jump must be volatile. */
#ifndef DM_STORE_GUARD_H
#define DM_STORE_GUARD_H

#include <lmdb.h>
#include <setjmp.h>
#include <stdint.h>

#define STORE_FAULT_ASSERT 1000 /* store_guard_why() after an LMDB assertion */

/* A store's map: [lo, hi) (0, 0 when it could not be found) and its path. */
typedef struct StoreMap {
    const char *path;
    uintptr_t lo, hi;
} StoreMap;

typedef struct StoreGuard {
    sigjmp_buf *jmp;
    const StoreMap *map;
    int writing; /* inside a write transaction: stop the process instead */
} StoreGuard;

/* Install the SIGBUS/SIGSEGV handlers (once per process). */
void store_guard_init(void);
/* Route env's assertions to the guard (before mdb_env_open). */
void store_guard_env(MDB_env *env, const StoreMap *m);
/* Find where path/data.mdb is mapped (after open and every remap). */
void store_map_locate(StoreMap *m);

StoreGuard store_guard_enter(const StoreMap *m, sigjmp_buf *jb, int writing);
void store_guard_leave(StoreGuard prev);
/* After a jump: SIGBUS, SIGSEGV or STORE_FAULT_ASSERT, and the assertion. */
int store_guard_why(void);
const char *store_guard_assert_text(void);

#endif
