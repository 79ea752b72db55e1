// C library settings that Swift's Glibc module does not import.
#pragma once

/// Sets glibc's malloc trim and mmap thresholds (mallopt); returns 1 on
/// success, 0 where the C library has no mallopt.
int tern_malloc_thresholds(int trim_threshold, int mmap_threshold);

/// Turns off SQLite's memory statistics (SQLITE_CONFIG_MEMSTATUS): without
/// them sqlite3_malloc takes no global mutex. Only before the first
/// connection opens; returns 1 on success, 0 when SQLite already started.
int tern_sqlite_memstatus_off(void);
