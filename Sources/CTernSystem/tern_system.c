// glibc malloc thresholds, message buffers and SQLite start-up
// configuration (tern_system.h); the VFS shim is in wal_vfs.c.
#define _GNU_SOURCE
#include "tern_system.h"
#include <stdlib.h>
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

// Message buffers: a large one is a mapping of its own (mmap, grown by
// mremap, unmapped when freed), so it costs the pages written, not the
// power-of-two capacity a ByteBuffer rounds to, and its memory goes back
// to the kernel when the message is done instead of staying in a malloc
// arena. Every block starts with a 16-byte header: the mapping's length,
// or 0 for a malloc'd block.
#include <sys/mman.h>
#include <string.h>
#include <stdint.h>
#define TERN_BUF_HEADER 16
#define TERN_BUF_MAPPED (256 * 1024)

static void *tern_buf_map(size_t size) {
    size_t len = size + TERN_BUF_HEADER;
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return NULL;
    ((size_t *)p)[0] = len;
    return (char *)p + TERN_BUF_HEADER;
}

void *tern_buf_allocate(size_t size) {
    if (size >= TERN_BUF_MAPPED) return tern_buf_map(size);
    char *p = malloc(size + TERN_BUF_HEADER);
    if (!p) return NULL;
    ((size_t *)p)[0] = 0;
    return p + TERN_BUF_HEADER;
}

void tern_buf_deallocate(void *ptr) {
    if (!ptr) return;
    char *p = (char *)ptr - TERN_BUF_HEADER;
    size_t len = ((size_t *)p)[0];
    if (len) munmap(p, len); else free(p);
}

void *tern_buf_reallocate(void *ptr, size_t old_size, size_t new_size) {
    if (!ptr) return tern_buf_allocate(new_size);
    char *p = (char *)ptr - TERN_BUF_HEADER;
    size_t len = ((size_t *)p)[0];
    if (len) {
        void *q = mremap(p, len, new_size + TERN_BUF_HEADER, MREMAP_MAYMOVE);
        if (q == MAP_FAILED) return NULL;
        ((size_t *)q)[0] = new_size + TERN_BUF_HEADER;
        return (char *)q + TERN_BUF_HEADER;
    }
    if (new_size < TERN_BUF_MAPPED) {
        char *q = realloc(p, new_size + TERN_BUF_HEADER);
        return q ? q + TERN_BUF_HEADER : NULL;
    }
    void *q = tern_buf_map(new_size);
    if (!q) return NULL;
    memcpy(q, ptr, old_size < new_size ? old_size : new_size);
    free(p);
    return q;
}

#include <sqlite3.h>

int tern_sqlite_memstatus_off(void) {
    return sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0) == SQLITE_OK;
}
