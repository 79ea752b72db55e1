// C library settings that Swift's Glibc module does not import.
#pragma once

/// Sets glibc's malloc trim and mmap thresholds (mallopt); returns 1 on
/// success, 0 where the C library has no mallopt.
int tern_malloc_thresholds(int trim_threshold, int mmap_threshold);
