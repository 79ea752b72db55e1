// A VFS shim over SQLite's default VFS that gathers a connection's WAL
// writes into a few large pwrites. SQLite writes each WAL frame as two writes (its
// 24-byte header, then the page): at 20 sessions a commit of ~37 frames
// cost ~74 pwrite calls on the writer thread, which every session waits on.
//
// Only a WAL is buffered, only contiguous appends, and only while its
// connection asked for it (TERN_FCNTL_BUFFER_WAL on the database file): the
// group-commit writer does so exactly when it commits with
// synchronous=FULL, where SQLite calls xSync on the WAL after a commit's
// frames and before anything publishes them. The buffer is written out, in
// order, before anything else touches that WAL (read, sync, truncate, size,
// lock, control, close), before a write that does not continue it, when it
// is full, and on the database file's xShmBarrier, xShmLock, xShmUnmap and
// xFileControl: SQLite calls xShmBarrier between writing a commit's frames
// and writing the wal-index header that makes them visible
// (walIndexWriteHdr), and xShmLock when it releases the write lock. So no
// reader and no other process ever sees a frame that is not in the file,
// COMMIT never returns with a frame still buffered (a kill -9 loses nothing
// it would not lose without the shim), and a write error reaches COMMIT
// through xSync as it would have through xWrite.
//
// Only on a device with POWERSAFE_OVERWRITE (SQLite's default): without it,
// SQLite pads a commit to a sector boundary and syncs in the middle of
// that write (walWriteToLog), so frames written after the sync would wait
// in the buffer for xShmBarrier, where a write error cannot be reported.
//
// A WAL file is paired with its own connection's database file through
// sqlite3_filename_database(): SQLite gives the WAL's xOpen a name inside
// the same allocation as the database name it opened. A WAL without a pair
// is not buffered.

// The same shim gathers a checkpoint's writes to the database file where
// the file grows. SQLite copies each frame back with a 4 KiB pwrite, in
// page order (walCheckpoint), so a large body's pages arrive one after the
// other: on ext4 here a 4 KiB pwrite cost 8.6 us of the kernel and a 64 KiB
// one 33 us (dd, 1 GiB). Only between SQLITE_FCNTL_CKPT_START and
// SQLITE_FCNTL_CKPT_DONE, which SQLite sends around its copy loop and
// before it truncates, syncs or publishes nBackfill (the mark after which
// readers take those pages from the database file), and only for writes at
// or past the file's size at CKPT_START: that space is reserved first with
// fallocate(FALLOC_FL_KEEP_SIZE) on the file's own descriptor, so writing
// the buffer out cannot run out of space. Where the reservation fails, the
// write goes through as SQLite made it, and so does every write below the
// old end of file (index pages scattered over the file). A buffer is
// written out when the next write does not continue it, when it is full
// (its errors reach SQLite through that xWrite) and at CKPT_DONE. An error
// there (an I/O error of the file system itself: the space is reserved)
// cannot be reported, since SQLite ignores CKPT_DONE's result: the process
// stops (abort) before nBackfill is published, like a kill -9, and the
// next start checkpoints again from the WAL, which still holds every frame.

#define _GNU_SOURCE
#include "tern_system.h"
#include <sqlite3.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>

#define WAL_BUFFER_CAP (512 * 1024)

typedef struct TernFile TernFile;
struct TernFile {
    sqlite3_file base;
    sqlite3_file *real;
    TernFile *pair;            /* database file <-> its connection's WAL */
    const char *name;          /* the database name pointer SQLite passed to xOpen */
    int isWal;
    int psow;                  /* database file: POWERSAFE_OVERWRITE, as SQLite's wal.c reads it from
                                  this file (without it its WAL is never buffered) */
    int bufferWal;             /* database file: its connection's WAL may be buffered */
    long gathered, flushes;    /* WAL: writes that went into the buffer, buffers written out */
    unsigned char *buf;
    sqlite3_int64 bufOffset;
    int bufLen;
    TernFile *nextDb;          /* open database files, for pairing */
    /* Database file: a checkpoint's writes where the file grows. */
    int fd;                    /* the unix VFS's descriptor of this file, -1 if not known */
    int inCheckpoint;          /* between CKPT_START and CKPT_DONE */
    sqlite3_int64 sizeAtStart; /* the file's size at CKPT_START */
    sqlite3_int64 reservedStart, reservedEnd; /* the range last fallocate'd in this checkpoint */
    unsigned char *ckptBuf;
    sqlite3_int64 ckptOffset;
    int ckptLen;
    long ckptGathered, ckptFlushes;
};

static sqlite3_vfs *origVfs;
static sqlite3_vfs ternVfs;
static pthread_mutex_t dbListLock = PTHREAD_MUTEX_INITIALIZER;
static TernFile *dbList;

/* The unix VFS writes at most 128 KiB - 1 per pwrite and reports a write
   of a multiple of 128 KiB as "disk full" (seekAndWrite masks the count
   with 0x1ffff): hand it pieces of 64 KiB. */
#define WAL_WRITE_PIECE (64 * 1024)

/* Writes a gathered buffer through the real file, a piece at a time. */
static int writePieces(sqlite3_file *real, const unsigned char *buf, int len, sqlite3_int64 offset) {
    int rc = SQLITE_OK;
    for (int done = 0; done < len && rc == SQLITE_OK; done += WAL_WRITE_PIECE) {
        int n = len - done < WAL_WRITE_PIECE ? len - done : WAL_WRITE_PIECE;
        rc = real->pMethods->xWrite(real, buf + done, n, offset + done);
    }
    return rc;
}

static int flushBuffer(TernFile *p) {
    if (p->bufLen > 0) p->flushes++;
    int rc = writePieces(p->real, p->buf, p->bufLen, p->bufOffset);
    /* On failure the rest is dropped, as a failed xWrite would have left
       it: SQLite fails the operation and rolls the transaction back. */
    p->bufLen = 0;
    return rc;
}

static void flushPair(TernFile *db) {
    if (db->pair && db->pair->bufLen > 0 && flushBuffer(db->pair) != SQLITE_OK) {
        /* Unreachable: buffering is on only for synchronous=FULL and only
           with POWERSAFE_OVERWRITE, where SQLite's xSync after a commit's
           last frame has flushed the buffer before xShmBarrier. Were it
           reached: nowhere to report the error (xShmBarrier returns
           nothing) and the frames about to be published are not in the
           file. Stop rather than let readers see them; recovery restarts
           from what is on disk. */
        abort();
    }
}

#define FLUSH_OR_RETURN(p) do { int frc = flushBuffer(p); if (frc != SQLITE_OK) return frc; } while (0)

#define CKPT_BUFFER_CAP (1024 * 1024)
#define CKPT_RESERVE (4 * 1024 * 1024)

static int flushCheckpoint(TernFile *p) {
    if (p->ckptLen > 0) p->ckptFlushes++;
    int rc = writePieces(p->real, p->ckptBuf, p->ckptLen, p->ckptOffset);
    p->ckptLen = 0;
    return rc;
}

/* Writes out a checkpoint's last gathered writes where no error can be
   returned (CKPT_DONE, xShmBarrier). See the top of this file: on failure
   the process stops before SQLite publishes pages that are not in the
   file; the next start checkpoints them again from the WAL. */
static void flushCheckpointOrStop(TernFile *p) {
    if (p->ckptLen > 0 && flushCheckpoint(p) != SQLITE_OK) {
        fprintf(stderr, "tern: a checkpoint could not write the database file into space reserved for it; stopping\n");
        abort();
    }
}

#define FLUSH_CKPT_OR_RETURN(p) do { if (!(p)->isWal && (p)->ckptLen > 0) { int crc = flushCheckpoint(p); if (crc != SQLITE_OK) return crc; } } while (0)

/* A database file's write during a checkpoint, at or past the size the file
   had when it began: into the buffer, with the space reserved first.
   Returns 0 when the write must go through as it is. */
static int gatherCheckpointWrite(TernFile *p, const void *data, int n, sqlite3_int64 off, int *rc) {
    if (!p->inCheckpoint || p->fd < 0 || off < p->sizeAtStart || n > WAL_WRITE_PIECE) return 0;
    if (p->ckptLen > 0 && (off != p->ckptOffset + p->ckptLen || p->ckptLen + n > CKPT_BUFFER_CAP)) {
        *rc = flushCheckpoint(p);
        if (*rc != SQLITE_OK) return 1;
    }
    /* SQLite writes in ascending page order, so one range at a time: a write
       outside the last one reserves from its own offset on. */
    if (off < p->reservedStart || off + n > p->reservedEnd) {
        sqlite3_int64 to = off + (n > CKPT_RESERVE ? n : CKPT_RESERVE);
        if (fallocate(p->fd, FALLOC_FL_KEEP_SIZE, off, to - off) != 0) {
            p->inCheckpoint = 0; /* no reservation: the rest of this checkpoint as SQLite writes it */
            *rc = flushCheckpoint(p);
            return 0;
        }
        p->reservedStart = off;
        p->reservedEnd = to;
    }
    if (!p->ckptBuf) {
        p->ckptBuf = malloc(CKPT_BUFFER_CAP);
        if (!p->ckptBuf) return 0;
    }
    if (p->ckptLen == 0) p->ckptOffset = off;
    memcpy(p->ckptBuf + p->ckptLen, data, (size_t)n);
    p->ckptLen += n;
    p->ckptGathered++;
    *rc = SQLITE_OK;
    return 1;
}

static int tClose(sqlite3_file *f) {
    TernFile *p = (TernFile *)f;
    int rc = p->isWal ? flushBuffer(p) : flushCheckpoint(p);
    if (p->pair) { p->pair->pair = 0; p->pair = 0; }
    if (!p->isWal) {
        pthread_mutex_lock(&dbListLock);
        for (TernFile **q = &dbList; *q; q = &(*q)->nextDb) {
            if (*q == p) { *q = p->nextDb; break; }
        }
        pthread_mutex_unlock(&dbListLock);
    }
    free(p->buf);
    p->buf = 0;
    free(p->ckptBuf);
    p->ckptBuf = 0;
    int rc2 = p->real->pMethods->xClose(p->real);
    return rc != SQLITE_OK ? rc : rc2;
}

static int tRead(sqlite3_file *f, void *out, int n, sqlite3_int64 off) {
    TernFile *p = (TernFile *)f;
    if (p->isWal) FLUSH_OR_RETURN(p);
    FLUSH_CKPT_OR_RETURN(p);
    return p->real->pMethods->xRead(p->real, out, n, off);
}

static int tWrite(sqlite3_file *f, const void *data, int n, sqlite3_int64 off) {
    TernFile *p = (TernFile *)f;
    if (!p->isWal) {
        int rc = SQLITE_OK;
        if (gatherCheckpointWrite(p, data, n, off, &rc)) return rc;
        if (rc != SQLITE_OK) return rc;
        FLUSH_CKPT_OR_RETURN(p);
        return p->real->pMethods->xWrite(p->real, data, n, off);
    }
    if (!p->pair || !p->pair->bufferWal || !p->pair->psow) {
        FLUSH_OR_RETURN(p);
        return p->real->pMethods->xWrite(p->real, data, n, off);
    }
    if (p->bufLen > 0 && (off != p->bufOffset + p->bufLen || p->bufLen + n > WAL_BUFFER_CAP)) FLUSH_OR_RETURN(p);
    if (n > WAL_WRITE_PIECE) { /* larger than any frame: as SQLite wrote it, after what came before */
        FLUSH_OR_RETURN(p);
        return p->real->pMethods->xWrite(p->real, data, n, off);
    }
    if (!p->buf) {
        p->buf = malloc(WAL_BUFFER_CAP);
        if (!p->buf) return p->real->pMethods->xWrite(p->real, data, n, off);
    }
    if (p->bufLen == 0) p->bufOffset = off;
    memcpy(p->buf + p->bufLen, data, (size_t)n);
    p->bufLen += n;
    p->gathered++;
    return SQLITE_OK;
}

static int tTruncate(sqlite3_file *f, sqlite3_int64 size) {
    TernFile *p = (TernFile *)f;
    if (p->isWal) FLUSH_OR_RETURN(p);
    FLUSH_CKPT_OR_RETURN(p);
    return p->real->pMethods->xTruncate(p->real, size);
}

static int tSync(sqlite3_file *f, int flags) {
    TernFile *p = (TernFile *)f;
    if (p->isWal) FLUSH_OR_RETURN(p);
    FLUSH_CKPT_OR_RETURN(p);
    return p->real->pMethods->xSync(p->real, flags);
}

static int tFileSize(sqlite3_file *f, sqlite3_int64 *size) {
    TernFile *p = (TernFile *)f;
    if (p->isWal) FLUSH_OR_RETURN(p);
    FLUSH_CKPT_OR_RETURN(p);
    return p->real->pMethods->xFileSize(p->real, size);
}

static int tLock(sqlite3_file *f, int level) {
    TernFile *p = (TernFile *)f;
    if (p->isWal) FLUSH_OR_RETURN(p);
    FLUSH_CKPT_OR_RETURN(p);
    return p->real->pMethods->xLock(p->real, level);
}

static int tUnlock(sqlite3_file *f, int level) {
    TernFile *p = (TernFile *)f;
    /* Release first, then report: a failed flush must never leave a lock held. */
    int frc = p->isWal ? flushBuffer(p) : flushCheckpoint(p);
    int rc = p->real->pMethods->xUnlock(p->real, level);
    return frc != SQLITE_OK ? frc : rc;
}

static int tCheckReservedLock(sqlite3_file *f, int *out) {
    TernFile *p = (TernFile *)f;
    return p->real->pMethods->xCheckReservedLock(p->real, out);
}

static int tFileControl(sqlite3_file *f, int op, void *arg) {
    TernFile *p = (TernFile *)f;
    if (op == TERN_FCNTL_BUFFER_WAL && !p->isWal) {
        if (p->pair) FLUSH_OR_RETURN(p->pair);
        p->bufferWal = *(int *)arg != 0;
        return SQLITE_OK;
    }
    if (op == SQLITE_FCNTL_CKPT_START && !p->isWal) {
        FLUSH_CKPT_OR_RETURN(p);
        sqlite3_int64 size = 0;
        if (p->fd >= 0 && p->real->pMethods->xFileSize(p->real, &size) == SQLITE_OK) {
            p->inCheckpoint = 1;
            p->sizeAtStart = size;
            p->reservedStart = p->reservedEnd = size;
        }
        return p->real->pMethods->xFileControl(p->real, op, arg);
    }
    if (op == SQLITE_FCNTL_CKPT_DONE && !p->isWal) {
        p->inCheckpoint = 0;
        flushCheckpointOrStop(p);
        return p->real->pMethods->xFileControl(p->real, op, arg);
    }
    if (op == TERN_FCNTL_CKPT_STATS && !p->isWal) {
        long *out = (long *)arg;
        out[0] = p->fd >= 0;
        out[1] = p->ckptGathered;
        out[2] = p->ckptFlushes;
        return SQLITE_OK;
    }
    if (op == TERN_FCNTL_WAL_STATS && !p->isWal) {
        long *out = (long *)arg;
        out[0] = p->pair != 0;
        out[1] = p->pair ? p->pair->gathered : 0;
        out[2] = p->pair ? p->pair->flushes : 0;
        out[3] = p->psow;
        return SQLITE_OK;
    }
    if (p->isWal) FLUSH_OR_RETURN(p);
    else {
        FLUSH_CKPT_OR_RETURN(p);
        if (p->pair) FLUSH_OR_RETURN(p->pair);
    }
    return p->real->pMethods->xFileControl(p->real, op, arg);
}

static int tSectorSize(sqlite3_file *f) {
    TernFile *p = (TernFile *)f;
    return p->real->pMethods->xSectorSize(p->real);
}

static int tDeviceCharacteristics(sqlite3_file *f) {
    TernFile *p = (TernFile *)f;
    return p->real->pMethods->xDeviceCharacteristics(p->real);
}

static int tShmMap(sqlite3_file *f, int region, int size, int extend, void volatile **out) {
    TernFile *p = (TernFile *)f;
    return p->real->pMethods->xShmMap(p->real, region, size, extend, out);
}

static int tShmLock(sqlite3_file *f, int offset, int n, int flags) {
    TernFile *p = (TernFile *)f;
    int frc = p->pair ? flushBuffer(p->pair) : SQLITE_OK;
    int crc = p->ckptLen > 0 ? flushCheckpoint(p) : SQLITE_OK;
    if (frc == SQLITE_OK) frc = crc;
    if (flags & SQLITE_SHM_UNLOCK) {
        /* Release first, then report: skipping an unlock on a failed flush
           would leave the lock held for ever (every writer and checkpoint
           of every process would then wait on it). */
        int rc = p->real->pMethods->xShmLock(p->real, offset, n, flags);
        return frc != SQLITE_OK ? frc : rc;
    }
    if (frc != SQLITE_OK) return frc;
    return p->real->pMethods->xShmLock(p->real, offset, n, flags);
}

static void tShmBarrier(sqlite3_file *f) {
    TernFile *p = (TernFile *)f;
    flushCheckpointOrStop(p);
    flushPair(p);
    p->real->pMethods->xShmBarrier(p->real);
}

static int tShmUnmap(sqlite3_file *f, int deleteFlag) {
    TernFile *p = (TernFile *)f;
    FLUSH_CKPT_OR_RETURN(p);
    if (p->pair) FLUSH_OR_RETURN(p->pair);
    return p->real->pMethods->xShmUnmap(p->real, deleteFlag);
}

static int tFetch(sqlite3_file *f, sqlite3_int64 off, int n, void **out) {
    TernFile *p = (TernFile *)f;
    if (p->isWal) FLUSH_OR_RETURN(p);
    FLUSH_CKPT_OR_RETURN(p);
    return p->real->pMethods->xFetch(p->real, off, n, out);
}

static int tUnfetch(sqlite3_file *f, sqlite3_int64 off, void *ptr) {
    TernFile *p = (TernFile *)f;
    return p->real->pMethods->xUnfetch(p->real, off, ptr);
}

static const sqlite3_io_methods ternMethods = {
    3, tClose, tRead, tWrite, tTruncate, tSync, tFileSize, tLock, tUnlock, tCheckReservedLock,
    tFileControl, tSectorSize, tDeviceCharacteristics, tShmMap, tShmLock, tShmBarrier, tShmUnmap,
    tFetch, tUnfetch,
};

static const sqlite3_io_methods ternMethodsV1 = {
    1, tClose, tRead, tWrite, tTruncate, tSync, tFileSize, tLock, tUnlock, tCheckReservedLock,
    tFileControl, tSectorSize, tDeviceCharacteristics, 0, 0, 0, 0, 0, 0,
};

/* The descriptor of a file the unix VFS opened: its unixFile starts with
   the methods, the VFS and the inode record, then the descriptor (the layout
   of every SQLite 3 release). Trusted only when it names the file that was
   opened (same device and inode), else -1 and nothing is gathered. */
static int unixDescriptor(sqlite3_file *real, const char *name) {
    if (!name || strncmp(origVfs->zName, "unix", 4) != 0) return -1;
    struct { const void *methods; void *vfs; void *inode; int h; } *head = (void *)real;
    struct stat a, b;
    if (head->h < 0 || fstat(head->h, &a) != 0 || stat(name, &b) != 0) return -1;
    return a.st_dev == b.st_dev && a.st_ino == b.st_ino ? head->h : -1;
}

static int tOpen(sqlite3_vfs *vfs, sqlite3_filename name, sqlite3_file *f, int flags, int *outFlags) {
    (void)vfs;
    TernFile *p = (TernFile *)f;
    memset(p, 0, sizeof(*p));
    p->fd = -1;
    p->real = (sqlite3_file *)&p[1];
    int rc = origVfs->xOpen(origVfs, name, p->real, flags, outFlags);
    if (rc != SQLITE_OK || !p->real->pMethods) {
        p->base.pMethods = 0;
        return rc;
    }
    if (p->real->pMethods->iVersion < 3) {
        /* No shared-memory methods (not the unix VFS's files): passed
           through, never buffered. */
        p->base.pMethods = &ternMethodsV1;
        return rc;
    }
    p->base.pMethods = &ternMethods;
    if (flags & SQLITE_OPEN_MAIN_DB) {
        p->name = name;
        p->fd = unixDescriptor(p->real, name);
        /* wal.c pads to sector boundaries when the database file lacks it. */
        p->psow = (p->real->pMethods->xDeviceCharacteristics(p->real) & SQLITE_IOCAP_POWERSAFE_OVERWRITE) != 0;
        pthread_mutex_lock(&dbListLock);
        p->nextDb = dbList;
        dbList = p;
        pthread_mutex_unlock(&dbListLock);
    } else if ((flags & SQLITE_OPEN_WAL) && name) {
        p->isWal = 1;
        const char *db = sqlite3_filename_database(name);
        pthread_mutex_lock(&dbListLock);
        for (TernFile *q = dbList; q; q = q->nextDb) {
            if (q->name == db && !q->pair) {
                q->pair = p;
                p->pair = q;
                break;
            }
        }
        pthread_mutex_unlock(&dbListLock);
    }
    return rc;
}

static int tDelete(sqlite3_vfs *v, const char *n, int s) { (void)v; return origVfs->xDelete(origVfs, n, s); }
static int tAccess(sqlite3_vfs *v, const char *n, int fl, int *o) { (void)v; return origVfs->xAccess(origVfs, n, fl, o); }
static int tFullPathname(sqlite3_vfs *v, const char *n, int k, char *o) { (void)v; return origVfs->xFullPathname(origVfs, n, k, o); }
static void *tDlOpen(sqlite3_vfs *v, const char *n) { (void)v; return origVfs->xDlOpen(origVfs, n); }
static void tDlError(sqlite3_vfs *v, int k, char *o) { (void)v; origVfs->xDlError(origVfs, k, o); }
static void (*tDlSym(sqlite3_vfs *v, void *h, const char *s))(void) { (void)v; return origVfs->xDlSym(origVfs, h, s); }
static void tDlClose(sqlite3_vfs *v, void *h) { (void)v; origVfs->xDlClose(origVfs, h); }
static int tRandomness(sqlite3_vfs *v, int n, char *o) { (void)v; return origVfs->xRandomness(origVfs, n, o); }
static int tSleep(sqlite3_vfs *v, int us) { (void)v; return origVfs->xSleep(origVfs, us); }
static int tCurrentTime(sqlite3_vfs *v, double *o) { (void)v; return origVfs->xCurrentTime(origVfs, o); }
static int tGetLastError(sqlite3_vfs *v, int n, char *o) { (void)v; return origVfs->xGetLastError(origVfs, n, o); }
static int tCurrentTimeInt64(sqlite3_vfs *v, sqlite3_int64 *o) { (void)v; return origVfs->xCurrentTimeInt64(origVfs, o); }

int tern_wal_vfs_register(void) {
    static pthread_mutex_t once = PTHREAD_MUTEX_INITIALIZER;
    pthread_mutex_lock(&once);
    if (origVfs) { pthread_mutex_unlock(&once); return 1; }
    sqlite3_vfs *base = sqlite3_vfs_find(0);
    if (!base || base->iVersion < 2) { pthread_mutex_unlock(&once); return 0; }
    origVfs = base;
    memset(&ternVfs, 0, sizeof(ternVfs));
    ternVfs.iVersion = 2;
    ternVfs.szOsFile = (int)sizeof(TernFile) + base->szOsFile;
    ternVfs.mxPathname = base->mxPathname;
    ternVfs.zName = "tern-wal";
    ternVfs.xOpen = tOpen;
    ternVfs.xDelete = tDelete;
    ternVfs.xAccess = tAccess;
    ternVfs.xFullPathname = tFullPathname;
    ternVfs.xDlOpen = tDlOpen;
    ternVfs.xDlError = tDlError;
    ternVfs.xDlSym = tDlSym;
    ternVfs.xDlClose = tDlClose;
    ternVfs.xRandomness = tRandomness;
    ternVfs.xSleep = tSleep;
    ternVfs.xCurrentTime = tCurrentTime;
    ternVfs.xGetLastError = tGetLastError;
    ternVfs.xCurrentTimeInt64 = tCurrentTimeInt64;
    int ok = sqlite3_vfs_register(&ternVfs, 1) == SQLITE_OK;
    pthread_mutex_unlock(&once);
    return ok;
}
