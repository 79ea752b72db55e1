// The store: the only code that opens SQLite (docs/architecture.md). Opens a GRDB
// DatabasePool in WAL mode with synchronous=FULL, applies the embedded
// migrations, and offers the writes (through group commit) and the reads
// that the other roles need. Called by intake, the CLI and the listener's
// composition root.

import Foundation
import GRDB
import Logging
import CTernSystem
import GRDBSQLite

public struct StoreOptions: Sendable {
    /// How long a write waits for another process's lock before failing.
    public var busyTimeoutSeconds: Double = 10
    /// Most requests committed in one transaction.
    public var maxBatch: Int = 512
    /// Most message bytes committed in one transaction (GroupCommitWriter).
    public var maxBatchBytes: Int = 16 << 20
    /// Apply pending migrations when opening.
    public var migrate: Bool = true
    /// Read-only connections for queries (the CLI's reports).
    public var readers: Int = 4
    /// Gather each commit's WAL writes into a few pwrite calls (the VFS
    /// shim in CTernSystem/wal_vfs.c); process-wide from the first Store
    /// opened with it on.
    public var gatherWALWrites: Bool = true
    public init() {}
}

public final class Store: Sendable {
    public let path: String
    let pool: DatabasePool
    let writer: GroupCommitWriter

    /// Opens (and creates) the database at `path`, creating its folder.
    public init(path: String, options: StoreOptions = StoreOptions(), logger: Logger = Logger(label: "tern.store")) throws {
        self.path = path
        let folder = URL(fileURLWithPath: path).deletingLastPathComponent().path
        // Only its owner may enter the folder that holds the mail.
        if !FileManager.default.fileExists(atPath: folder) {
            try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true,
                                                    attributes: [.posixPermissions: 0o700])
        }

        if options.gatherWALWrites { _ = tern_wal_vfs_register() }
        var config = Configuration()
        config.busyMode = .timeout(options.busyTimeoutSeconds)
        config.foreignKeysEnabled = true
        config.maximumReaderCount = max(1, options.readers)
        config.label = "tern"
        do {
            pool = try DatabasePool(path: path, configuration: config)
            // GRDB's DatabasePool resets synchronous to NORMAL after
            // prepareDatabase; the promise "250 means on disk" needs FULL.
            try pool.writeWithoutTransaction { db in
                try db.execute(sql: "PRAGMA synchronous = FULL")
                // Group commit runs every request in a SAVEPOINT, and SQLite
                // copies each page a savepoint changes first into the
                // statement journal. That journal spilled to a temporary file
                // past 64 KiB: at 20 sessions 58 of the writer's 75 pwrites
                // per message went to it (a page number and a 4 KiB page for
                // each of 29 pages). In memory it is a memcpy. Only pages that
                // existed before the savepoint are copied, so its size is
                // bounded by what a batch changes.
                try db.execute(sql: "PRAGMA temp_store = MEMORY")
                // A batch's pages stay in the cache until COMMIT (see
                // GroupCommitWriter.maxBatchBytes): spilling starts past the
                // batch's message bytes plus 8 MiB for its rows and indexes.
                // Held only while a transaction has them dirty: once written,
                // the pages beyond cache_size are freed (keeping them measured
                // no faster with 10 MiB messages, and 20 MiB more RSS).
                let pageSize = try Int.fetchOne(db, sql: "PRAGMA page_size") ?? 4096
                try db.execute(sql: "PRAGMA cache_spill = \((options.maxBatchBytes + (8 << 20)) / max(512, pageSize))")
            }
        } catch {
            throw StoreError.classify(error)
        }
        writer = GroupCommitWriter(pool: pool, maxBatch: options.maxBatch, maxBatchBytes: options.maxBatchBytes)
        if options.migrate {
            let applied = try Migrator.migrate(pool)
            for m in applied { logger.info("applied migration", metadata: ["migration": "\(m)"]) }
        } else {
            try Migrator.checkNotNewer(pool)
        }
    }

    /// Stops taking writes (queued ones still commit), checkpoints the WAL
    /// and closes every connection.
    public func close() {
        writer.close()
        _ = try? pool.writeWithoutTransaction { db in try db.checkpoint(.truncate) }
        try? pool.close()
    }

    /// Commits seen by the group-commit writer, and the requests they carried.
    public var commitStats: (commits: Int, requests: Int) {
        (writer.commits.load(ordering: .relaxed), writer.requests.load(ordering: .relaxed))
    }

    // MARK: - Generic access for the package's own modules and tests

    /// Runs `work` inside the next group commit; its result is returned after
    /// the transaction carrying it is durable.
    /// `durable: false` for writes whose loss in a power failure only repeats
    /// work (claims, outcomes, leases): see GroupCommitWriter.
    package func write<T: Sendable>(durable: Bool = true, bytes: Int = 0, _ work: @escaping @Sendable (Database) throws -> T) async throws -> T {
        try await writeWithRollups(durable: durable, bytes: bytes) { db, _ in try work(db) }
    }

    /// `write` for work that changes the daily rollups: what it adds to the
    /// `RollupBatch` is summed with the rest of its group commit.
    func writeWithRollups<T: Sendable>(durable: Bool = true, bytes: Int = 0,
                                       _ work: @escaping @Sendable (Database, inout RollupBatch) throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { (cont: CheckedContinuation<T, Error>) in
            writer.submit({ db, rollups in try work(db, &rollups) }, durable: durable, bytes: bytes) { result in
                switch result {
                case .success(let v): cont.resume(returning: v as! T)
                case .failure(let e): cont.resume(throwing: e)
                }
            }
        }
    }

    /// Callback form of `write`, for callers on an event loop.
    /// `bytes`: the message bytes it writes, which bound a batch.
    package func write<T: Sendable>(bytes: Int = 0, _ work: @escaping @Sendable (Database) throws -> T,
                                    completion: @escaping @Sendable (Result<T, StoreError>) -> Void) {
        writer.submit({ db, _ in try work(db) }, bytes: bytes) { result in
            completion(result.map { $0 as! T }.mapError { StoreError.classify($0) })
        }
    }

    package func read<T>(_ work: (Database) throws -> T) throws -> T {
        do { return try pool.read(work) } catch { throw StoreError.classify(error) }
    }

    /// A read of one statement, on a reader connection without a transaction
    /// around it (one statement is a consistent snapshot by itself): the hot
    /// paths' reads, which would otherwise pay a BEGIN and a COMMIT each.
    package func readStatement<T>(_ work: (Database) throws -> T) throws -> T {
        do { return try pool.unsafeRead(work) } catch { throw StoreError.classify(error) }
    }

    /// Runs on the writer connection outside group commit (migrations, pragmas, tests).
    package func writeDirect<T>(_ work: (Database) throws -> T) throws -> T {
        do { return try pool.writeWithoutTransaction(work) } catch { throw StoreError.classify(error) }
    }

    /// The writer connection's WAL gathering (wal_vfs.c): paired with the
    /// shim, WAL writes gathered, gathered buffers written out.
    package func walGathering() throws -> (paired: Bool, gathered: Int, flushes: Int) {
        try writeDirect { db in
            var out = [Int](repeating: 0, count: 4)
            _ = sqlite3_file_control(db.sqliteConnection, "main", TERN_FCNTL_WAL_STATS, &out)
            return (out[0] != 0, out[1], out[2])
        }
    }

    /// The writer connection's checkpoint gathering (wal_vfs.c): whether the
    /// shim knows the database file's descriptor, checkpoint writes gathered,
    /// gathered buffers written out.
    package func checkpointGathering() throws -> (known: Bool, gathered: Int, flushes: Int) {
        try writeDirect { db in
            var out = [Int](repeating: 0, count: 3)
            _ = sqlite3_file_control(db.sqliteConnection, "main", TERN_FCNTL_CKPT_STATS, &out)
            return (out[0] != 0, out[1], out[2])
        }
    }

    /// Tests: opens `uri` (SQLite URI parameters such as `psow=0`) through the
    /// shim, commits `rows` rows at synchronous=FULL with gathering asked
    /// for, and returns the WAL stats and the rows read back.
    package static func walGatheringProbe(uri: String, rows: Int) throws -> (gathered: Int, psow: Bool, count: Int) {
        _ = tern_wal_vfs_register()
        var db: OpaquePointer? = nil
        guard sqlite3_open_v2(uri, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_URI, nil) == SQLITE_OK, let db else {
            throw StoreError.other("cannot open \(uri)")
        }
        defer { sqlite3_close_v2(db) }
        func exec(_ sql: String) throws {
            guard sqlite3_exec(db, sql, nil, nil, nil) == SQLITE_OK else { throw StoreError.other(String(cString: sqlite3_errmsg(db))) }
        }
        try exec("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; CREATE TABLE IF NOT EXISTS t (x BLOB)")
        var on: Int32 = 1
        _ = sqlite3_file_control(db, "main", TERN_FCNTL_BUFFER_WAL, &on)
        for _ in 0..<rows { try exec("INSERT INTO t VALUES (randomblob(3000))") }
        var out = [Int](repeating: 0, count: 4)
        _ = sqlite3_file_control(db, "main", TERN_FCNTL_WAL_STATS, &out)
        var count = 0
        var stmt: OpaquePointer? = nil
        if sqlite3_prepare_v2(db, "SELECT count(*) FROM t", -1, &stmt, nil) == SQLITE_OK, sqlite3_step(stmt) == SQLITE_ROW {
            count = Int(sqlite3_column_int64(stmt, 0))
        }
        sqlite3_finalize(stmt)
        return (out[1], out[3] != 0, count)
    }

    /// Dirty pages the writer connection has written out in the middle of a
    /// transaction (SQLite's cache spills) since it opened: for tests.
    package func writerCacheSpills() throws -> Int {
        try writeDirect { db in
            var current: Int32 = 0, highwater: Int32 = 0
            _ = sqlite3_db_status(db.sqliteConnection, SQLITE_DBSTATUS_CACHE_SPILL, &current, &highwater, 0)
            return Int(current)
        }
    }

    /// A pragma's value on the writer connection (`synchronous`, `journal_mode`, …).
    public func writerPragma(_ name: String) throws -> String? {
        try writeDirect { db in try String.fetchOne(db, sql: "PRAGMA \(name)") }
    }

    /// Applied schema version.
    public func schemaVersion() throws -> Int {
        try read { db in try Int.fetchOne(db, sql: "SELECT max(version) FROM schema_migration") ?? 0 }
    }
}
