// Group commit (DESIGN.md): SQLite has one writer, so all writes go through
// this one serial queue. While a commit runs, new requests wait; the next
// commit takes all of them (up to `maxBatch`) in one transaction, so under
// load one fsync serves many messages, and a lone request commits at once —
// no timer ever delays it. Each request runs in its own SAVEPOINT: one that
// fails is rolled back and answered alone. A failed BEGIN/COMMIT, or an error
// that makes SQLite roll the whole transaction back (SQLITE_FULL, IOERR),
// fails every request of the batch. Completions run only after COMMIT returned.

import Dispatch
import GRDB
import Synchronization

final class GroupCommitWriter: Sendable {
    typealias Work = @Sendable (Database) throws -> any Sendable
    typealias Done = @Sendable (Result<any Sendable, Error>) -> Void

    struct Request: Sendable {
        let work: Work
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

    /// Counters for benchmarks and tests: committed transactions and requests.
    let commits = Atomic<Int>(0)
    let requests = Atomic<Int>(0)

    init(pool: DatabasePool, maxBatch: Int = 512) {
        self.pool = pool
        self.maxBatch = maxBatch
    }

    func submit(_ work: @escaping Work, done: @escaping Done) {
        let start: Bool? = state.withLock { s in
            if s.closed { return nil }
            s.pending.append(Request(work: work, done: done))
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
                let n = min(maxBatch, s.pending.count)
                let b = Array(s.pending[0..<n])
                s.pending.removeFirst(n)
                return b
            }
            if batch.isEmpty { return }
            commit(batch)
        }
    }

    private func commit(_ batch: [Request]) {
        var results = [Result<any Sendable, Error>](repeating: .failure(StoreError.other("not run")), count: batch.count)
        do {
            try pool.writeWithoutTransaction { db in
                try db.execute(sql: "BEGIN IMMEDIATE")
                var lost: Error? = nil
                for (i, request) in batch.enumerated() {
                    do {
                        try db.execute(sql: "SAVEPOINT request")
                        let value = try request.work(db)
                        try db.execute(sql: "RELEASE request")
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
                    try db.execute(sql: "COMMIT")
                } catch {
                    if db.isInsideTransaction { try? db.execute(sql: "ROLLBACK") }
                    throw error
                }
            }
            commits.add(1, ordering: .relaxed)
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
