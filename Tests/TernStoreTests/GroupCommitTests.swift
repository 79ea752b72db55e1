import Dispatch
import Foundation
import GRDB
import Synchronization
import Testing
@testable import TernStore

/// Holds the writer inside its first commit until released, so that requests
/// submitted meanwhile must form the next batch — deterministic, no sleeps.
final class WriterGate: Sendable {
    let started = DispatchSemaphore(value: 0)
    let release = DispatchSemaphore(value: 0)

    func block(_ store: Store) {
        store.write({ _ in
            self.started.signal()
            self.release.wait()
            return 0
        }, completion: { (_: Result<Int, StoreError>) in })
        started.wait()
    }
}

@Suite struct GroupCommitTests {
    @Test func aLoneRequestCommitsAtOnce() async throws {
        let store = try Store(path: temporaryDatabase())
        defer { store.close() }
        _ = try await store.insertMessage(sampleMessage())
        #expect(store.commitStats == (1, 1))
    }

    @Test func requestsArrivingDuringACommitShareTheNextOne() async throws {
        let store = try Store(path: temporaryDatabase())
        defer { store.close() }
        let gate = WriterGate()
        gate.block(store)
        let done = Atomic<Int>(0)
        let all = DispatchGroup()
        for i in 0..<50 {
            all.enter()
            store.insertMessage(sampleMessage("B\(i)")) { result in
                if case .success = result { done.add(1, ordering: .relaxed) }
                all.leave()
            }
        }
        #expect(done.load(ordering: .relaxed) == 0) // nobody acknowledged before its commit
        gate.release.signal()
        all.wait()
        #expect(done.load(ordering: .relaxed) == 50)
        #expect(store.commitStats.commits == 2)   // the gate's commit, then one for all fifty
        #expect(store.commitStats.requests == 51)
        #expect(try store.read { db in try Int.fetchOne(db, sql: "SELECT count(*) FROM message") } == 50)
    }

    @Test func rollupsAreSummedOverTheBatchAndDroppedWithAFailedRequest() async throws {
        let store = try Store(path: temporaryDatabase())
        defer { store.close() }
        var recipients: [(id: Int64, message: Int64)] = []
        for i in 0..<3 {
            let id = try await store.insertMessage(sampleMessage("R\(i)", recipients: 2))
            recipients += try store.read { db in try Int64.fetchAll(db, sql: "SELECT id FROM recipient WHERE message_id = ?", arguments: [id]) }
                .map { ($0, id) }
        }
        let at: Int64 = 1_800_000_000_000
        func outcome(_ rs: ArraySlice<(id: Int64, message: Int64)>) -> OutcomeBatch {
            var b = OutcomeBatch(at: at)
            for r in rs {
                b.attempts.append(NewAttempt(recipientID: r.id, startedAt: at - 40, endedAt: at, mxHost: "mx.far.test", mxAddress: "127.0.0.1",
                                             tls: nil, code: 250, enhanced: "2.0.0", text: "ok", outcome: .delivered, category: nil))
                if r.id % 2 == 0 {
                    // A claimed recipient's transition carries its facts: no read-back.
                    let (address, domain, createdAt) = try! store.read { db in
                        let row = try Row.fetchOne(db, sql: "SELECT address, domain, created_at FROM recipient WHERE id = ?", arguments: [r.id])!
                        return (row[0] as String, row[1] as String, row[2] as Int64)
                    }
                    let claimed = ClaimedRecipient(id: r.id, messageID: r.message, address: address, domain: domain, attempts: 0,
                                                   notify: nil, orcpt: nil, createdAt: createdAt, delayNotifiedAt: nil)
                    let t = RecipientTransition(claimed, state: .delivered, nextAttemptAt: nil, countsAsAttempt: true,
                                                code: 250, enhanced: "2.0.0", text: "ok", event: .delivered)
                    #expect(t.facts?.domain == domain && t.facts?.createdAt == createdAt)
                    b.transitions.append(t)
                } else {
                    b.transitions.append(RecipientTransition(recipientID: r.id, messageID: r.message, state: .delivered, nextAttemptAt: nil,
                                                             countsAsAttempt: true, code: 250, enhanced: "2.0.0", text: "ok", event: .delivered))
                }
            }
            return b
        }
        let gate = WriterGate()
        gate.block(store)
        let results = Mutex<[Bool]>([])
        let all = DispatchGroup()
        for (n, slice) in [recipients[0..<2], recipients[2..<4], recipients[4..<6]].enumerated() {
            let batch = outcome(slice)
            all.enter()
            store.writer.submit({ db, rollups in
                try Store.apply(batch, db, rollups: &rollups)
                if n == 1 { try db.execute(sql: "INSERT INTO nonexistent VALUES (1)") } // fails after adding its rollups
                return 0
            }, durable: false) { result in
                results.withLock { $0.append((try? result.get()) != nil) }
                all.leave()
            }
        }
        gate.release.signal()
        all.wait()
        #expect(results.withLock { $0.filter { $0 }.count } == 2)
        #expect(store.commitStats.commits == 5) // three intakes, the gate, one for the three outcomes
        func snapshot() throws -> [[String]] {
            try store.read { db in
                try Row.fetchAll(db, sql: "SELECT * FROM attempt_daily ORDER BY 1, 2, 3").map { $0.databaseValues.map(\.description) }
                    + Row.fetchAll(db, sql: "SELECT * FROM recipient_daily ORDER BY 1, 2").map { $0.databaseValues.map(\.description) }
            }
        }
        let live = try snapshot()
        let attempts = try store.read { db in try Int.fetchOne(db, sql: "SELECT sum(attempts) FROM attempt_daily") }
        let delivered = try store.read { db in try Int.fetchOne(db, sql: "SELECT sum(delivered) FROM recipient_daily") }
        #expect(attempts == 4 && delivered == 4) // not 6: the failed request's share is gone
        try await store.rebuildRollups()
        #expect(try snapshot() == live)
    }

    @Test func aFailingRequestIsRolledBackAlone() async throws {
        let store = try Store(path: temporaryDatabase())
        defer { store.close() }
        let gate = WriterGate()
        gate.block(store)
        let results = Mutex<[String: Bool]>([:])
        let all = DispatchGroup()
        for name in ["good1", "bad", "good2"] {
            all.enter()
            store.write({ db -> Int in
                try Store.insert(sampleMessage(name), db)
                if name == "bad" { try db.execute(sql: "INSERT INTO nonexistent VALUES (1)") }
                return 1
            }, completion: { (r: Result<Int, StoreError>) in
                results.withLock { $0[name] = (try? r.get()) != nil }
                all.leave()
            })
        }
        gate.release.signal()
        all.wait()
        #expect(results.withLock { $0 } == ["good1": true, "bad": false, "good2": true])
        let ids = try store.read { db in try String.fetchAll(db, sql: "SELECT queue_id FROM message ORDER BY id") }
        #expect(ids == ["good1", "good2"]) // nothing of "bad" remains
        #expect(try store.read { db in try Int.fetchOne(db, sql: "SELECT count(*) FROM recipient") } == 4)
    }

    /// Every completion runs after its commit: a separate connection sees the row.
    @Test func acknowledgementFollowsTheCommit() throws {
        let path = temporaryDatabase()
        let store = try Store(path: path)
        defer { store.close() }
        let observer = try DatabaseQueue(path: path)
        let missing = Atomic<Int>(0)
        let all = DispatchGroup()
        DispatchQueue.concurrentPerform(iterations: 200) { i in
            all.enter()
            store.insertMessage(sampleMessage("C\(i)", recipients: 1)) { result in
                let seen = (try? observer.read { db in
                    try Int.fetchOne(db, sql: "SELECT count(*) FROM message WHERE queue_id = ?", arguments: ["C\(i)"])
                }) ?? 0
                if case .success = result, seen == 1 {} else { missing.add(1, ordering: .relaxed) }
                all.leave()
            }
        }
        all.wait()
        #expect(missing.load(ordering: .relaxed) == 0)
        #expect(store.commitStats.requests == 200)
        #expect(store.commitStats.commits <= 200)
    }

    /// SQLITE_FULL (a real full database, via max_page_count): the client is
    /// refused, nothing is half-written, and writes succeed again once space returns.
    @Test func diskFullRefusesCleanlyAndRecovers() async throws {
        let store = try Store(path: temporaryDatabase())
        defer { store.close() }
        let pages = try store.writeDirect { db in try Int.fetchOne(db, sql: "PRAGMA page_count") ?? 0 }
        _ = try store.writeDirect { db in try Int.fetchOne(db, sql: "PRAGMA max_page_count = \(pages + 40)") }
        var accepted = 0
        var fullError: StoreError? = nil
        for i in 0..<100 {
            do {
                _ = try await store.insertMessage(sampleMessage("F\(i)", size: 20_000))
                accepted += 1
            } catch let e as StoreError {
                fullError = e
                break
            }
        }
        guard case .full = fullError else { Issue.record("expected SQLITE_FULL, got \(String(describing: fullError))"); return }
        let counts = try store.read { db in
            try [Int.fetchOne(db, sql: "SELECT count(*) FROM message")!,
                 Int.fetchOne(db, sql: "SELECT count(*) FROM recipient")!,
                 Int.fetchOne(db, sql: "SELECT count(*) FROM event")!]
        }
        #expect(counts == [accepted, accepted * 2, accepted])
        _ = try store.writeDirect { db in try Int.fetchOne(db, sql: "PRAGMA max_page_count = 1073741823") }
        _ = try await store.insertMessage(sampleMessage("after", size: 20_000))
        #expect(try store.read { db in try Int.fetchOne(db, sql: "SELECT count(*) FROM message") } == accepted + 1)
    }
}

@Suite struct DurabilityPerBatchTests {
    @Test func onlyBatchesWithADurableRequestCommitWithFullSync() async throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("tern-sync-\(UUID().uuidString)/t.sqlite").path
        let store = try Store(path: path)
        defer { store.close() }
        #expect(try store.writerPragma("synchronous") == "2") // FULL
        _ = try await store.write(durable: false) { db in try db.execute(sql: "CREATE TABLE t (x)") }
        #expect(try store.writerPragma("synchronous") == "1") // NORMAL: a claim or an outcome
        _ = try await store.write { db in try db.execute(sql: "INSERT INTO t VALUES (1)") }
        #expect(try store.writerPragma("synchronous") == "2") // FULL again: intake
        // The pragma of the batch is what COMMIT used.
        let (durable, total) = (store.writer.durableCommits.load(ordering: .relaxed), store.writer.commits.load(ordering: .relaxed))
        #expect(total - durable == 1)
    }
}

/// The VFS shim that gathers a commit's WAL writes (CTernSystem/wal_vfs.c).
@Suite struct WALGatheringTests {
    @Test func durableCommitsGatherTheirWALWritesAndEveryReaderSeesThem() async throws {
        let path = temporaryDatabase()
        let store = try Store(path: path)
        defer { store.close() }
        _ = try await store.write(durable: false) { db in try db.execute(sql: "CREATE TABLE t (i INTEGER, x BLOB)") }
        let start = try store.walGathering()
        #expect(start.paired) // the writer's WAL was opened through the shim
        // A commit under synchronous=NORMAL has no xSync before it is
        // published: its writes are not gathered.
        _ = try await store.write(durable: false) { db in try db.execute(sql: "INSERT INTO t VALUES (-1, randomblob(9000))") }
        let normal = try store.walGathering()
        #expect(normal.gathered == start.gathered && normal.flushes == start.flushes)
        // Durable commits, many at once: gathered, and each one is visible
        // to a reader connection as soon as its request is answered.
        try await withThrowingTaskGroup(of: Void.self) { group in
            for i in 0..<200 {
                group.addTask {
                    _ = try await store.write { db in try db.execute(sql: "INSERT INTO t VALUES (?, randomblob(6000))", arguments: [i]) }
                    let seen = try store.read { db in try Int.fetchOne(db, sql: "SELECT count(*) FROM t WHERE i = ?", arguments: [i]) }
                    #expect(seen == 1)
                }
            }
            try await group.waitForAll()
        }
        let durable = try store.walGathering()
        #expect(durable.gathered > normal.gathered)
        #expect(durable.flushes > normal.flushes)
        // Fewer writes reached the file than SQLite made (two per frame).
        #expect(durable.flushes - normal.flushes < (durable.gathered - normal.gathered) / 4)
        // Another process, reading through the OS while the store is open,
        // sees every committed row and a sound database.
        let sqlite = Process()
        sqlite.executableURL = URL(fileURLWithPath: "/usr/bin/sqlite3")
        sqlite.arguments = [path, "PRAGMA integrity_check; SELECT count(*), sum(length(x)) FROM t WHERE i >= 0;"]
        let out = Pipe()
        sqlite.standardOutput = out
        try sqlite.run()
        let text = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        var status: Int32 = 0
        waitpid(sqlite.processIdentifier, &status, 0) // not waitUntilExit: it can hang on Linux
        #expect(text == "ok\n200|1200000\n")
    }
}

/// Gathered WAL writes through the paths that write the WAL out of order
/// or read it back: checkpoints and WAL restarts, and a transaction that
/// spills pages into the WAL and is then rolled back.
@Suite struct WALGatheringStressTests {
    @Test func restartsSpillsAndRollbacksKeepEveryCommit() async throws {
        let path = temporaryDatabase()
        let store = try Store(path: path)
        defer { store.close() }
        _ = try await store.write { db in try db.execute(sql: "CREATE TABLE t (i INTEGER PRIMARY KEY, x BLOB, h INTEGER)") }
        // Enough frames for several automatic checkpoints (1,000 pages each)
        // and as many WAL restarts, with readers checking as they go.
        var expected = 0
        for round in 0..<4 {
            try await withThrowingTaskGroup(of: Void.self) { group in
                for k in 0..<500 {
                    let i = round * 1000 + k
                    group.addTask {
                        _ = try await store.write { db in
                            try db.execute(sql: "INSERT INTO t VALUES (?, zeroblob(7000), ?)", arguments: [i, i * 7])
                        }
                        let h = try store.read { db in try Int.fetchOne(db, sql: "SELECT h FROM t WHERE i = ?", arguments: [i]) }
                        #expect(h == i * 7)
                    }
                }
                try await group.waitForAll()
            }
            expected += 500
            // A transaction far bigger than the page cache: SQLite spills
            // pages into the WAL before COMMIT; it is rolled back, and the
            // next commits overwrite those frames.
            try store.writeDirect { db in
                try db.execute(sql: "BEGIN IMMEDIATE")
                defer { try? db.execute(sql: "ROLLBACK") }
                try db.execute(sql: """
                    WITH RECURSIVE n(v) AS (SELECT 1 UNION ALL SELECT v + 1 FROM n WHERE v < 2000)
                    INSERT INTO t SELECT 100000 + v, randomblob(6000), 0 FROM n
                    """)
                #expect(try Int.fetchOne(db, sql: "SELECT count(*) FROM t WHERE i >= 100000") == 2000)
            }
        }
        let gathered = try store.walGathering()
        #expect(gathered.gathered > 0)
        // The WAL was restarted after checkpoints: its header counts them.
        let header = try #require(FileManager.default.contents(atPath: path + "-wal")?.prefix(16))
        let checkpointSequence = header.suffix(4).reduce(0) { $0 << 8 | Int($1) }
        #expect(checkpointSequence >= 1) // at least one restart (readers may hold one back)
        let (count, sum, integrity) = try store.read { db in
            (try Int.fetchOne(db, sql: "SELECT count(*) FROM t")!, try Int.fetchOne(db, sql: "SELECT sum(h) FROM t")!,
             try String.fetchOne(db, sql: "PRAGMA integrity_check")!)
        }
        #expect(count == expected)
        var want = 0
        for r in 0..<4 { for k in 0..<500 { want += (r * 1000 + k) * 7 } }
        #expect(sum == want)
        #expect(integrity == "ok")
    }
}

/// Issue 15: without POWERSAFE_OVERWRITE SQLite pads a commit to a sector
/// and syncs inside that write, so frames written after the sync would wait
/// in the buffer for xShmBarrier, where an error cannot be reported (the
/// shim's abort). The shim must not buffer such a WAL at all.
@Suite struct WALGatheringPSOWTests {
    @Test func withoutPowersafeOverwriteNothingIsGathered() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("tern-psow-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let with = try Store.walGatheringProbe(uri: "file:\(dir.path)/a.sqlite?psow=1", rows: 20)
        #expect(with.psow && with.gathered > 0 && with.count == 20)
        let without = try Store.walGatheringProbe(uri: "file:\(dir.path)/b.sqlite?psow=0", rows: 20)
        #expect(!without.psow)
        #expect(without.gathered == 0)
        #expect(without.count == 20)
    }
}

/// A batch's message bytes are bounded, and within that bound a large body's
/// pages are written to the WAL once, at COMMIT (GroupCommitWriter.maxBatchBytes).
@Suite struct BatchBytesTests {
    struct Tail: BodyTail {
        let bytes: [UInt8]
        var count: Int { bytes.count }
        func withBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R { try bytes.withUnsafeBytes(body) }
    }

    @Test func aBatchEndsBeforeTheRequestThatWouldPassItsBytes() {
        #expect(GroupCommitWriter.batchLength([], maxCount: 512, maxBytes: 100) == 0)
        #expect(GroupCommitWriter.batchLength([0, 0, 0], maxCount: 2, maxBytes: 100) == 2)
        #expect(GroupCommitWriter.batchLength([60, 40, 1], maxCount: 512, maxBytes: 100) == 2)
        #expect(GroupCommitWriter.batchLength([60, 41, 0], maxCount: 512, maxBytes: 100) == 1)
        // One request larger than the bound still goes, alone.
        #expect(GroupCommitWriter.batchLength([250, 1], maxCount: 512, maxBytes: 100) == 1)
        // Requests that write no message bytes are never held back by them.
        #expect(GroupCommitWriter.batchLength([100, 0, 0, 0], maxCount: 512, maxBytes: 100) == 4)
    }

    @Test func largeBodiesInOneBatchAreNotSpilledAndTheBatchIsBounded() async throws {
        var options = StoreOptions()
        options.maxBatchBytes = 6 << 20
        let store = try Store(path: temporaryDatabase(), options: options)
        defer { store.close() }
        let spillsBefore = try store.writerCacheSpills()
        // Three 2.5 MiB bodies written in place (a zeroblob, then the text):
        // each page would be spilled twice under the default threshold.
        let gate = WriterGate()
        gate.block(store)
        let all = DispatchGroup()
        let texts = (0..<3).map { k in (0..<(5 << 19)).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ k) } }
        for (k, text) in texts.enumerated() {
            var m = sampleMessage("BIG\(k)", recipients: 1)
            m.body = Data("Received: by us\r\n".utf8)
            m.tail = Tail(bytes: text)
            all.enter()
            store.insertMessage(m) { result in
                if case .failure(let e) = result { Issue.record("insert failed: \(e)") }
                all.leave()
            }
        }
        gate.release.signal()
        all.wait()
        #expect(try store.writerCacheSpills() == spillsBefore)
        // The gate's commit, then two batches: 2.5 + 2.5 MiB, then the third.
        #expect(store.commitStats == (3, 4))
        for (k, text) in texts.enumerated() {
            let body = try store.read { db in try Data.fetchOne(db, sql: "SELECT body FROM message WHERE queue_id = ?", arguments: ["BIG\(k)"]) }
            #expect(body == Data("Received: by us\r\n".utf8) + Data(text))
        }
    }
}

/// A checkpoint's writes where the database file grows are gathered
/// (wal_vfs.c): fewer, larger writes, the same database.
@Suite struct CheckpointGatheringTests {
    @Test func checkpointWritesPastTheEndAreGatheredAndTheDatabaseIsTheSame() async throws {
        let path = temporaryDatabase()
        var expected: [Int: Data] = [:]
        do {
            let store = try Store(path: path)
            defer { store.close() }
            _ = try await store.write { db in try db.execute(sql: "CREATE TABLE t (i INTEGER PRIMARY KEY, x BLOB)") }
            let start = try store.checkpointGathering()
            #expect(start.known) // the unix VFS's descriptor, checked against the file
            // Bodies of 100 KiB to 1 MiB: each a run of new pages at the end.
            for i in 0..<12 {
                let body = Data((0..<(100_000 + i * 80_000)).map { UInt8(truncatingIfNeeded: $0 &* 13 &+ i) })
                expected[i] = body
                _ = try await store.write { db in try db.execute(sql: "INSERT INTO t VALUES (?, ?)", arguments: [i, body]) }
            }
            // Pages changed in place (below the old end of the file) go through as they are.
            _ = try await store.write { db in try db.execute(sql: "UPDATE t SET x = zeroblob(10) WHERE i = 0") }
            expected[0] = Data(count: 10)
            _ = try store.writeDirect { db in try db.execute(sql: "PRAGMA wal_checkpoint(TRUNCATE)") }
            let after = try store.checkpointGathering()
            #expect(after.gathered - start.gathered > 1_000) // ~2,200 pages of bodies
            #expect(after.flushes - start.flushes < (after.gathered - start.gathered) / 8)
        }
        // Reopened: every page is in the database file (the WAL was emptied, then removed at close).
        let wal = (try? FileManager.default.attributesOfItem(atPath: path + "-wal"))?[.size] as? Int
        #expect(wal == nil || wal == 0)
        let again = try Store(path: path)
        defer { again.close() }
        #expect(try again.read { db in try String.fetchOne(db, sql: "PRAGMA integrity_check") } == "ok")
        for (i, body) in expected {
            #expect(try again.read { db in try Data.fetchOne(db, sql: "SELECT x FROM t WHERE i = ?", arguments: [i]) } == body)
        }
    }
}
