// C for what Swift cannot reach: glibc's malloc thresholds, SQLite's memory
// statistics switch, and the VFS shim that gathers the writer's WAL writes
// (wal_vfs.c).
#pragma once

/// Sets glibc's malloc trim and mmap thresholds (mallopt); returns 1 on
/// success, 0 where the C library has no mallopt.
int tern_malloc_thresholds(int trim_threshold, int mmap_threshold);

#include <stddef.h>

/// Allocation functions for message buffers (a ByteBufferAllocator's): a
/// block of 256 KiB or more is a mapping of its own, one of 2 MiB or more
/// with transparent huge pages advised (tern_system.c).
void *tern_buf_allocate(size_t size);
void *tern_buf_reallocate(void *ptr, size_t old_size, size_t new_size);
void tern_buf_deallocate(void *ptr);

/// Turns off SQLite's memory statistics (SQLITE_CONFIG_MEMSTATUS): without
/// them sqlite3_malloc takes no global mutex. Only before the first
/// connection opens; returns 1 on success, 0 when SQLite already started.
int tern_sqlite_memstatus_off(void);

/// Gives SQLite an allocator (SQLITE_CONFIG_MALLOC) that maps a block of
/// 2 MiB or more on its own with huge pages advised, as the message
/// buffers (tern_system.c); smaller blocks come from malloc. Only before
/// the first connection opens; returns 1 on success, 0 when SQLite already
/// started.
int tern_sqlite_large_blocks_mapped(void);

/// The allocator's functions, for tests (SQLite in a test process has
/// started long before): as SQLite would call them.
void *tern_sqlite_test_malloc(int n);
void *tern_sqlite_test_realloc(void *p, int n);
int tern_sqlite_test_size(void *p);
void tern_sqlite_test_free(void *p);
/// The length of the mapping a block from tern_buf_* or the SQLite
/// allocator is in (its header), 0 for a malloc'd block.
size_t tern_buf_test_map_length(void *p);

/// Registers the WAL-write-gathering VFS shim (wal_vfs.c) as SQLite's
/// default VFS; connections opened afterwards use it. Returns 1 on success.
int tern_wal_vfs_register(void);

/// sqlite3_file_control opcode (on "main") for a connection opened through
/// the shim: *(int *)arg != 0 lets it buffer the connection's WAL writes.
/// Only for synchronous=FULL, where SQLite syncs the WAL before publishing.
#define TERN_FCNTL_BUFFER_WAL 0x7E57A1

/// sqlite3_file_control opcode (on "main"): fills long[4] with whether the
/// connection's WAL is paired with it (1/0), how many WAL writes were
/// gathered, how many gathered buffers were written out, and whether the
/// WAL's device has POWERSAFE_OVERWRITE (without it nothing is gathered).
#define TERN_FCNTL_WAL_STATS 0x7E57A2

/// sqlite3_file_control opcode (on "main"): fills long[3] with whether the
/// shim knows the database file's descriptor (1/0; without it no checkpoint
/// write is gathered), how many checkpoint writes it gathered, and how many
/// gathered buffers it wrote out.
#define TERN_FCNTL_CKPT_STATS 0x7E57A3
