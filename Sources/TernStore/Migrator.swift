// Applies the numbered SQL migrations embedded in the binary
// (EmbeddedMigrations.swift, generated from migrations/*.sql), records each in
// `schema_migration`, and refuses a database whose schema is newer than this
// binary knows.

import GRDB

public enum Migrator {
    /// The highest migration this binary carries.
    public static var knownVersion: Int { EmbeddedMigrations.all.map(\.version).max() ?? 0 }

    /// Names and SQL of the embedded migrations (for `tern migrate --list` and tests).
    public static var embedded: [(version: Int, name: String, sql: String)] { EmbeddedMigrations.all }

    /// Statements run after a migration's SQL, in its transaction (work the
    /// SQL file cannot express as well, such as filling the rollups).
    static var followUps: [Int: [String]] { [5: Rollups.rebuildStatements] }

    static let bookkeeping = """
        CREATE TABLE IF NOT EXISTS schema_migration (
            version    INTEGER PRIMARY KEY,
            name       TEXT    NOT NULL,
            applied_at INTEGER NOT NULL
        ) STRICT
        """

    /// Applies pending migrations, each in its own transaction; returns their names.
    static func migrate(_ pool: DatabasePool) throws -> [String] {
        do {
            return try pool.writeWithoutTransaction { db in
                if try Int.fetchOne(db, sql: "SELECT count(*) FROM sqlite_master") == 0 {
                    // Incremental vacuum lets retention give pages back without a
                    // full VACUUM; it can only be chosen before the first table.
                    // In WAL mode the header already exists: VACUUM rewrites it.
                    try db.execute(sql: "PRAGMA auto_vacuum = INCREMENTAL")
                    try db.execute(sql: "VACUUM")
                }
                try db.execute(sql: bookkeeping)
                let current = try Int.fetchOne(db, sql: "SELECT max(version) FROM schema_migration") ?? 0
                if current > knownVersion { throw StoreError.schemaTooNew(found: current, known: knownVersion) }
                var applied: [String] = []
                for m in EmbeddedMigrations.all.sorted(by: { $0.version < $1.version }) where m.version > current {
                    try db.inTransaction(.immediate) {
                        try db.execute(sql: m.sql)
                        for sql in followUps[m.version] ?? [] { try db.execute(sql: sql) }
                        try db.execute(sql: "INSERT INTO schema_migration (version, name, applied_at) VALUES (:v, :n, :t)",
                                       arguments: ["v": m.version, "n": m.name, "t": nowMillis()])
                        return .commit
                    }
                    applied.append(m.name)
                }
                return applied
            }
        } catch {
            throw StoreError.classify(error)
        }
    }

    static func checkNotNewer(_ pool: DatabasePool) throws {
        let current: Int = try pool.read { db in
            guard try db.tableExists("schema_migration") else { return 0 }
            return try Int.fetchOne(db, sql: "SELECT max(version) FROM schema_migration") ?? 0
        }
        if current > knownVersion { throw StoreError.schemaTooNew(found: current, known: knownVersion) }
    }
}

/// Wall-clock Unix milliseconds.
public func nowMillis() -> Int64 {
    var ts = timespec()
    clock_gettime(CLOCK_REALTIME, &ts)
    return Int64(ts.tv_sec) * 1000 + Int64(ts.tv_nsec) / 1_000_000
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
