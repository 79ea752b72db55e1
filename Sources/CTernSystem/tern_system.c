// glibc malloc thresholds and SQLite start-up configuration (tern_system.h);
// the VFS shim is in wal_vfs.c.
#include "tern_system.h"
#if defined(__GLIBC__)
#include <malloc.h>
#endif

int tern_malloc_thresholds(int trim_threshold, int mmap_threshold) {
#if defined(__GLIBC__)
    return mallopt(M_TRIM_THRESHOLD, trim_threshold) && mallopt(M_MMAP_THRESHOLD, mmap_threshold);
#else
    (void)trim_threshold; (void)mmap_threshold;
    return 0;
#endif
}

#include <sqlite3.h>

int tern_sqlite_memstatus_off(void) {
    return sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0) == SQLITE_OK;
}
