// Applies the numbered SQL migrations embedded in the binary
// (EmbeddedMigrations.swift, generated from migrations/*.sql), records each in
// `schema_migration`, and refuses a database whose schema is newer than this
// binary knows.

import Foundation
import GRDB

public enum Migrator {
    /// The highest migration this binary carries.
    public static var knownVersion: Int { EmbeddedMigrations.all.map(\.version).max() ?? 0 }

    /// Names and SQL of the embedded migrations (for `tern migrate --list` and tests).
    public static var embedded: [(version: Int, name: String, sql: String)] { EmbeddedMigrations.all }

    /// Work run after a migration's SQL, in its transaction, that the SQL
    /// file cannot express as well (filling the rollups; rewriting CHECKs).
    static var followUps: [Int: (Database) throws -> Void] {
        [5: { db in for sql in Rollups.rebuildStatements { try db.execute(sql: sql) } },
         6: { db in try checksWithoutInLists(db) },
         9: { db in try addEventKindCheck(db) },
         11: { db in try extendEventKindCheck(db, from: eventKindCheck, to: eventKindCheck11, migration: 11) },
         12: { db in try extendEventKindCheck(db, from: eventKindCheck11, to: eventKindCheck12, migration: 12) }]
    }

    /// Tables whose CHECK constraints migration 6 writes as OR chains.
    static let hotTables = ["message", "recipient", "attempt"]

    /// Rewrites the CHECK constraints of the hot tables from `x IN (a, b)` to
    /// `(x = a OR x = b)`: the same condition, without the ephemeral table
    /// SQLite builds per row written to evaluate an IN list. SQLite cannot
    /// alter a CHECK; for a change every existing row already satisfies, its
    /// documented procedure is to edit the schema text under
    /// `writable_schema` and bump `schema_version` (sqlite.org/lang_altertable.html §7),
    /// which needs no copy of the table. Every other connection rereads the
    /// schema when it sees the new version; the migrating connection is told
    /// to as well (`writable_schema = RESET` after the commit), as a plain
    /// SQLite connection keeps the schema it parsed.
    static func checksWithoutInLists(_ db: Database) throws {
        let version = try Int.fetchOne(db, sql: "PRAGMA schema_version") ?? 0
        try db.execute(sql: "PRAGMA writable_schema = ON")
        for table in hotTables {
            guard let sql = try String.fetchOne(db, sql: "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?",
                                                arguments: [table]) else { continue }
            try db.execute(sql: "UPDATE sqlite_master SET sql = ? WHERE type = 'table' AND name = ?",
                           arguments: [orChains(sql), table])
        }
        try db.execute(sql: "PRAGMA schema_version = \(version + 1)")
        try db.execute(sql: "PRAGMA writable_schema = OFF")
    }

    /// The CHECK migration 9 puts on `event.kind`: frozen with the migration
    /// (a new kind needs a new migration; StoreTests compares it with EventKind).
    static let eventKindCheck = """
        CHECK (kind = 'received' OR kind = 'delivered' OR kind = 'deferred' OR kind = 'bounced' OR kind = 'expired' \
        OR kind = 'suppressed' OR kind = 'held' OR kind = 'released' OR kind = 'flushed' OR kind = 'deleted' \
        OR kind = 'lease_expired' OR kind = 'lease_lost' OR kind = 'dsn_queued' OR kind = 'suppression_added' \
        OR kind = 'auth_failed' OR kind = 'auth_blocked')
        """

    /// Adds `eventKindCheck` to the event table's `kind` column by editing
    /// the schema text (as `checksWithoutInLists`), after making sure no
    /// row violates it: SQLite does not check existing rows against a CHECK
    /// added this way, and `integrity_check` would report them.
    static func addEventKindCheck(_ db: Database) throws {
        let condition = String(eventKindCheck.dropFirst("CHECK ".count))
        let unknown = try String.fetchAll(db, sql: "SELECT DISTINCT kind FROM event WHERE NOT \(condition) LIMIT 5")
        guard unknown.isEmpty else {
            throw StoreError.other("migration 9: the event log holds kinds Tern does not know (\(unknown.joined(separator: ", "))); "
                                             + "delete or rename those rows and start again")
        }
        guard let sql = try String.fetchOne(db, sql: "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'event'"),
              let column = sql.range(of: "kind         TEXT    NOT NULL") else {
            throw StoreError.other("migration 9: the event table's schema is not the one migration 1 created")
        }
        let version = try Int.fetchOne(db, sql: "PRAGMA schema_version") ?? 0
        try db.execute(sql: "PRAGMA writable_schema = ON")
        try db.execute(sql: "UPDATE sqlite_master SET sql = ? WHERE type = 'table' AND name = 'event'",
                       arguments: [sql.replacingCharacters(in: column, with: sql[column] + " " + eventKindCheck)])
        try db.execute(sql: "PRAGMA schema_version = \(version + 1)")
        try db.execute(sql: "PRAGMA writable_schema = OFF")
    }

    /// Migration 11's CHECK on `event.kind`: 9's and the shaping kinds.
    static let eventKindCheck11 = String(eventKindCheck.dropLast()) + """
         OR kind = 'shaping_throttled' OR kind = 'shaping_suspended' OR kind = 'shaping_ramped' \
        OR kind = 'shaping_resumed' OR kind = 'shaping_paused' OR kind = 'shaping_set')
        """

    /// Migration 12's: 11's and the kinds of sources, warm-up and blocklists.
    static let eventKindCheck12 = String(eventKindCheck11.dropLast()) + """
         OR kind = 'source_unavailable' OR kind = 'source_available' OR kind = 'warmup_started' \
        OR kind = 'warmup_paused' OR kind = 'warmup_resumed' OR kind = 'warmup_skipped' OR kind = 'warmup_advanced' \
        OR kind = 'warmup_held' OR kind = 'warmup_stepped_back' OR kind = 'warmup_done' \
        OR kind = 'blocklist_listed' OR kind = 'blocklist_delisted')
        """

    /// Replaces the CHECK on `event.kind` an earlier migration left (`from`)
    /// with a wider one (`to`) every row satisfies, as `addEventKindCheck` added it.
    static func extendEventKindCheck(_ db: Database, from: String, to: String, migration: Int) throws {
        guard let sql = try String.fetchOne(db, sql: "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'event'"),
              let check = sql.range(of: from) else {
            throw StoreError.other("migration \(migration): the event table's schema is not the one migration \(migration - 1) left")
        }
        let version = try Int.fetchOne(db, sql: "PRAGMA schema_version") ?? 0
        try db.execute(sql: "PRAGMA writable_schema = ON")
        try db.execute(sql: "UPDATE sqlite_master SET sql = ? WHERE type = 'table' AND name = 'event'",
                       arguments: [sql.replacingCharacters(in: check, with: to)])
        try db.execute(sql: "PRAGMA schema_version = \(version + 1)")
        try db.execute(sql: "PRAGMA writable_schema = OFF")
    }

    /// `name IN (v1, v2, …)` → `(name = v1 OR name = v2 …)` for every IN
    /// list of literals (no parentheses or commas inside a value); other IN
    /// operators are left alone.
    static func orChains(_ sql: String) -> String {
        var out = ""
        var rest = Substring(sql)
        while let inRange = rest.range(of: " IN (") {
            let before = rest[..<inRange.lowerBound]
            // The operand: the identifier right before " IN (".
            let name = before.reversed().prefix { $0.isLetter || $0.isNumber || $0 == "_" || $0 == "." }.reversed()
            let close = rest[inRange.upperBound...].firstIndex(of: ")")
            let values = close.map { rest[inRange.upperBound..<$0].split(separator: ",").map { $0.trimmingCharacters(in: .whitespacesAndNewlines) } } ?? []
            // Literals only ('text' or numbers): a subquery or an expression stays as it is.
            let literal = { (v: String) in v.hasPrefix("'") || v.first.map { $0.isNumber || $0 == "-" } == true }
            guard !name.isEmpty, let close, !values.isEmpty, values.allSatisfy(literal),
                  !rest[inRange.upperBound..<close].contains("(") else {
                out += rest[..<inRange.upperBound]
                rest = rest[inRange.upperBound...]
                continue
            }
            let operand = String(name)
            out += before.dropLast(operand.count)
            out += "(" + values.map { "\(operand) = \($0)" }.joined(separator: " OR ") + ")"
            rest = rest[rest.index(after: close)...]
        }
        return out + rest
    }

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
                        try followUps[m.version]?(db)
                        try db.execute(sql: "INSERT INTO schema_migration (version, name, applied_at) VALUES (:v, :n, :t)",
                                       arguments: ["v": m.version, "n": m.name, "t": nowMillis()])
                        return .commit
                    }
                    applied.append(m.name)
                }
                // Have this connection parse the rewritten CHECKs now.
                if applied.contains(where: { $0.hasPrefix("0006_") || $0.hasPrefix("0009_") || $0.hasPrefix("0011_") || $0.hasPrefix("0012_") }) { try db.execute(sql: "PRAGMA writable_schema = RESET") }
                // Indexes a migration dropped leave free pages: give them back
                // now rather than have the first `tern prune` report them.
                if !applied.isEmpty { try db.execute(sql: "PRAGMA incremental_vacuum") }
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
