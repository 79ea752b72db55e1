// Group commit (docs/architecture.md): SQLite has one writer, so all writes go through
// this one serial queue. While a commit runs, new requests wait; the next
// commit takes all of them (up to `maxBatch` requests and `maxBatchBytes` of
// message bytes) in one transaction, so under
// load one fsync serves many messages, and a lone request commits at once —
// no timer ever delays it. Each request runs in its own SAVEPOINT: one that
// fails is rolled back and answered alone. A failed BEGIN/COMMIT, or an error
// that makes SQLite roll the whole transaction back (SQLITE_FULL, IOERR),
// fails every request of the batch. Completions run only after COMMIT returned.
//
// Durability per batch: a batch with any durable request (intake, operator
// changes) commits with synchronous=FULL, so its completion means "on disk".
// A batch of only non-durable requests (claims, delivery outcomes, leases,
// routing memory) commits with synchronous=NORMAL: in WAL mode that survives
// a crash of the process (kill -9) and only a power loss or OS crash can
// take the last such commits back. That can repeat a delivery, never lose a
// message, as Postfix's unsynced queue-file removal after delivery can. The
// next FULL commit makes every earlier one durable too.
//
// Under FULL the writer also lets the VFS shim (CTernSystem/wal_vfs.c)
// gather the commit's WAL writes: SQLite writes each frame as two pwrite
// calls, ~74 per commit at 20 sessions, and the shim writes them out in
// 64 KiB pieces at the xSync that precedes publishing the commit.

import Dispatch
import GRDB
import TernMetrics
import GRDBSQLite
import CTernSystem
import Synchronization

final class GroupCommitWriter: Sendable {
    /// A request's work; rollup changes it adds to the `RollupBatch` are
    /// summed over the whole batch and written once before COMMIT (and
    /// dropped with the request if its savepoint is rolled back).
    typealias Work = @Sendable (Database, inout RollupBatch) throws -> any Sendable
    typealias Done = @Sendable (Result<any Sendable, Error>) -> Void

    struct Request: Sendable {
        let work: Work
        let durable: Bool
        /// Message bytes the request writes (0 for the rest): see `maxBatchBytes`.
        let bytes: Int
        let done: Done
    }

    struct State: ~Copyable {
        var pending: [Request] = []
        var running = false
        var closed = false
    }

    private let state = Mutex(State())
    private let queue = DispatchQueue(label: "tern.store.writer", qos: .userInitiated)
    private let pool: DatabasePool
    let maxBatch: Int
    /// Most message bytes in one transaction: a batch ends before the
    /// request that would pass it (its first request always goes). With
    /// the writer's `cache_spill` above it (Store.init), a batch's new
    /// pages stay in memory until COMMIT writes each of them once. Past the
    /// spill threshold SQLite writes dirty pages to the WAL mid-transaction,
    /// and a large body's pages went there twice: as the INSERT's zeroblob,
    /// then again (overwriting those frames, whose checksums COMMIT then
    /// re-reads and rewrites) with the text written in place.
    let maxBatchBytes: Int

    /// Counters for benchmarks and tests: committed transactions and requests.
    let commits = Atomic<Int>(0)
    let requests = Atomic<Int>(0)
    /// Transactions committed with synchronous=FULL.
    let durableCommits = Atomic<Int>(0)
    /// The writer connection's `synchronous` setting is FULL (only the writer queue changes it).
    private let syncFull = Atomic<Bool>(true)
    /// The writer connection lets the VFS shim gather its WAL writes (wal_vfs.c):
    /// exactly while it commits with synchronous=FULL.
    private let walGathered = Atomic<Bool>(false)

    init(pool: DatabasePool, maxBatch: Int = 512, maxBatchBytes: Int = 16 << 20) {
        self.pool = pool
        self.maxBatch = maxBatch
        self.maxBatchBytes = maxBatchBytes
    }

    func submit(_ work: @escaping Work, durable: Bool = true, bytes: Int = 0, done: @escaping Done) {
        let start: Bool? = state.withLock { s in
            if s.closed { return nil }
            s.pending.append(Request(work: work, durable: durable, bytes: bytes, done: done))
            if s.running { return false }
            s.running = true
            return true
        }
        switch start {
        case nil: done(.failure(StoreError.closed))
        case true?: queue.async { self.drain() }
        case false?: break
        }
    }

    /// Refuses new requests; those already queued still commit.
    func close() {
        state.withLock { $0.closed = true }
        queue.sync {} // wait for a running drain to finish
    }

    private func drain() {
        while true {
            let batch: [Request] = state.withLock { s in
                if s.pending.isEmpty {
                    s.running = false
                    return []
                }
                let n = GroupCommitWriter.batchLength(s.pending.lazy.map(\.bytes), maxCount: maxBatch, maxBytes: maxBatchBytes)
                let b = Array(s.pending[0..<n])
                s.pending.removeFirst(n)
                return b
            }
            if batch.isEmpty { return }
            commit(batch)
        }
    }

    /// How many of the pending requests (their message bytes, in order) the
    /// next batch takes: at most `maxCount`, and no more bytes than
    /// `maxBytes` unless the first request alone has more.
    static func batchLength<S: Sequence<Int>>(_ bytes: S, maxCount: Int, maxBytes: Int) -> Int {
        var n = 0, total = 0
        for b in bytes {
            if n == maxCount || (n > 0 && total + b > maxBytes) { break }
            total += b
            n += 1
        }
        return n
    }

    private func commit(_ batch: [Request]) {
        var results = [Result<any Sendable, Error>](repeating: .failure(StoreError.other("not run")), count: batch.count)
        let began = DispatchTime.now().uptimeNanoseconds
        do {
            let durable = batch.contains { $0.durable }
            try pool.writeWithoutTransaction { db in
                if durable != syncFull.load(ordering: .relaxed) {
                    try db.execute(sql: durable ? "PRAGMA synchronous = FULL" : "PRAGMA synchronous = NORMAL")
                    syncFull.store(durable, ordering: .relaxed)
                }
                if durable != walGathered.load(ordering: .relaxed) {
                    // Gathered writes reach the file at the xSync that FULL
                    // makes SQLite call before a commit is published; under
                    // NORMAL there is none, so they go out one by one. A
                    // connection not opened through the shim answers
                    // SQLITE_NOTFOUND and writes as it always did.
                    var on: Int32 = durable ? 1 : 0
                    _ = sqlite3_file_control(db.sqliteConnection, "main", TERN_FCNTL_BUFFER_WAL, &on)
                    walGathered.store(durable, ordering: .relaxed)
                }
                // Prepared once per connection: compiling these four per request
                // (with GRDB's authorizer) cost more than some requests' own SQL.
                // Run straight through SQLite's C API: GRDB's per-execution
                // bookkeeping (scheduling watchdog, observation broker,
                // transaction clock) was a tenth of this thread's time, and
                // nothing here observes transactions. `db.isInsideTransaction`
                // asks SQLite itself, so it stays right.
                let savepoint = try db.cachedStatement(sql: "SAVEPOINT request")
                let release = try db.cachedStatement(sql: "RELEASE request")
                try DirectStatement(db.cachedStatement(sql: "BEGIN IMMEDIATE")).execute(db)
                var lost: Error? = nil
                var rollups = RollupBatch()
                for (i, request) in batch.enumerated() {
                    do {
                        try DirectStatement(savepoint).execute(db)
                        var mine = RollupBatch()
                        let value = try request.work(db, &mine)
                        try DirectStatement(release).execute(db)
                        rollups.merge(mine)
                        results[i] = .success(value)
                    } catch {
                        if db.isInsideTransaction {
                            try? db.execute(sql: "ROLLBACK TO request")
                            try? db.execute(sql: "RELEASE request")
                            results[i] = .failure(error)
                        } else {
                            // SQLite rolled back the whole transaction: nothing of
                            // this batch is on disk, not even earlier savepoints.
                            lost = error
                            break
                        }
                    }
                }
                if let lost { throw lost }
                do {
                    // One upsert per rollup row for the whole batch, not per message.
                    try rollups.write(db)
                    try DirectStatement(db.cachedStatement(sql: "COMMIT")).execute(db)
                } catch {
                    if db.isInsideTransaction { try? db.execute(sql: "ROLLBACK") }
                    throw error
                }
            }
            commits.add(1, ordering: .relaxed)
            if durable { durableCommits.add(1, ordering: .relaxed) }
            if TernMetrics.enabled { TernMetrics.commit(batch: batch.count, nanoseconds: Int64(DispatchTime.now().uptimeNanoseconds - began)) }
        } catch {
            let failure = StoreError.classify(error)
            for i in results.indices { results[i] = .failure(failure) }
        }
        requests.add(batch.count, ordering: .relaxed)
        for (i, request) in batch.enumerated() {
            request.done(results[i].mapError { StoreError.classify($0) })
        }
    }
}
