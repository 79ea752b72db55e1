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
//
// A mapping of 2 MiB or more asks for transparent huge pages
// (MADV_HUGEPAGE; Debian's kernels have THP in "madvise" mode): every such
// buffer is written once from its start to its end and then freed, and
// each 4 KiB page of a fresh mapping costs a page fault. Filling a new
// 10 MiB mapping took 4.7-5.5 ms with 4 KiB pages and 0.9-1.0 ms with huge
// pages here (a C probe, 50 buffers each); a 10 MiB message went through
// about 4.6 such buffers (11,841 minor faults a message in a 20-session
// run). At most the last, partly written huge page of each buffer is
// memory not otherwise used. Where the kernel has no THP the advice is
// ignored.
#include <sys/mman.h>
#include <string.h>
#include <stdint.h>
#define TERN_BUF_HEADER 16
#define TERN_BUF_MAPPED (256 * 1024)
#define TERN_HUGE_ADVISED (2 * 1024 * 1024)

static void advise_huge(void *p, size_t len) {
#ifdef MADV_HUGEPAGE
    if (len >= TERN_HUGE_ADVISED) (void)madvise(p, len, MADV_HUGEPAGE);
#else
    (void)p; (void)len;
#endif
}

/* A mapping's length: from 2 MiB on, a whole number of huge pages. The
   kernel places such an anonymous mapping on a huge-page boundary; one of
   any other length it does not, and its first and last partial huge page
   are then made of 4 KiB pages (a 10 MiB + 16 byte mapping took 516 faults
   and 1.6 ms to fill here, a 12 MiB one 5 faults and 0.36 ms). The rest of
   the last huge page is the buffer's room to grow without mremap. */
static size_t map_length(size_t len) {
    return len >= TERN_HUGE_ADVISED ? (len + TERN_HUGE_ADVISED - 1) & ~(size_t)(TERN_HUGE_ADVISED - 1) : len;
}

static void *tern_buf_map(size_t size) {
    size_t len = map_length(size + TERN_BUF_HEADER);
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return NULL;
    advise_huge(p, len);
    ((size_t *)p)[0] = len;
    return (char *)p + TERN_BUF_HEADER;
}

/* A mapped block (header at p, mapping length len) made room for `need`
   bytes, header included: as it is when its last huge page already holds
   them, else by mremap to whole huge pages. Returns the header, NULL on
   failure (the block is then untouched). */
static char *tern_buf_remap(char *p, size_t len, size_t need) {
    if (len >= TERN_HUGE_ADVISED && need <= len) return p;
    size_t grown = map_length(need);
    char *q = mremap(p, len, grown, MREMAP_MAYMOVE);
    if (q == MAP_FAILED) return NULL;
    advise_huge(q, grown);
    ((size_t *)q)[0] = grown;
    return q;
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
        char *q = tern_buf_remap(p, len, new_size + TERN_BUF_HEADER);
        return q ? q + TERN_BUF_HEADER : NULL;
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

// SQLite's allocations: malloc, as SQLite's own allocator does, except
// that a block of 2 MiB or more is a mapping of its own with huge pages
// advised, as the message buffers above. SQLite makes such blocks for a
// large row: the record it builds for an INSERT (with a zeroblob that is
// not the row's last column expanded into it) and the value it reads.
// Every block starts with the 16-byte header of the message buffers: the
// mapping's length, or 0; the second word holds the size SQLite asked for
// (xSize).
#define TERN_SQLITE_MAPPED TERN_HUGE_ADVISED

static void *tsMalloc(int n) {
    if (n <= 0) return NULL;
    size_t size = (size_t)n;
    char *p;
    if (size + TERN_BUF_HEADER >= TERN_SQLITE_MAPPED) {
        p = (char *)tern_buf_map(size);
        if (!p) return NULL;
        p -= TERN_BUF_HEADER;
    } else {
        p = malloc(size + TERN_BUF_HEADER);
        if (!p) return NULL;
        ((size_t *)p)[0] = 0;
    }
    ((size_t *)p)[1] = size;
    return p + TERN_BUF_HEADER;
}

static void tsFree(void *ptr) {
    tern_buf_deallocate(ptr);
}

static int tsSize(void *ptr) {
    return ptr ? (int)((size_t *)((char *)ptr - TERN_BUF_HEADER))[1] : 0;
}

static void *tsRealloc(void *ptr, int n) {
    if (!ptr) return tsMalloc(n);
    if (n <= 0) { tsFree(ptr); return NULL; }
    char *p = (char *)ptr - TERN_BUF_HEADER;
    size_t old = ((size_t *)p)[1], size = (size_t)n, mapped = ((size_t *)p)[0];
    if (mapped && size + TERN_BUF_HEADER >= TERN_SQLITE_MAPPED) {
        char *q = tern_buf_remap(p, mapped, size + TERN_BUF_HEADER);
        if (!q) return NULL;
        ((size_t *)q)[1] = size;
        return q + TERN_BUF_HEADER;
    }
    if (!mapped && size + TERN_BUF_HEADER < TERN_SQLITE_MAPPED) {
        char *q = realloc(p, size + TERN_BUF_HEADER);
        if (!q) return NULL;
        ((size_t *)q)[1] = size;
        return q + TERN_BUF_HEADER;
    }
    /* Across the threshold: a new block of the other kind, the bytes copied. */
    void *q = tsMalloc(n);
    if (!q) return NULL;
    memcpy(q, ptr, old < size ? old : size);
    tsFree(ptr);
    return q;
}

static int tsRoundup(int n) { return (n + 7) & ~7; }
static int tsInit(void *app) { (void)app; return SQLITE_OK; }
static void tsShutdown(void *app) { (void)app; }

int tern_sqlite_large_blocks_mapped(void) {
    static const sqlite3_mem_methods methods = {
        tsMalloc, tsFree, tsRealloc, tsSize, tsRoundup, tsInit, tsShutdown, NULL,
    };
    return sqlite3_config(SQLITE_CONFIG_MALLOC, &methods) == SQLITE_OK;
}

void *tern_sqlite_test_malloc(int n) { return tsMalloc(n); }
void *tern_sqlite_test_realloc(void *p, int n) { return tsRealloc(p, n); }
int tern_sqlite_test_size(void *p) { return tsSize(p); }
void tern_sqlite_test_free(void *p) { tsFree(p); }
size_t tern_buf_test_map_length(void *p) { return p ? ((size_t *)((char *)p - TERN_BUF_HEADER))[0] : 0; }
