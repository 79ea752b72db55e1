// Health checks: the quick one at start-up (`serve`), the full one for
// `tern doctor` (integrity_check, sizes, and states that should not exist).

import Foundation
import GRDB

public struct QueueSummary: Sendable, Equatable {
    public var counts: [RecipientState: Int]
    public func count(_ state: RecipientState) -> Int { counts[state, default: 0] }
}

public struct DoctorReport: Sendable {
    /// "ok", or SQLite's list of problems.
    public var integrity: [String]
    public var foreignKeyViolations: Int
    public var schemaVersion: Int
    public var knownVersion: Int
    public var journalMode: String
    public var pageSize: Int
    public var pageCount: Int
    public var freelistCount: Int
    public var walBytes: Int
    public var states: [String: Int]
    /// Name → count of things that should not exist.
    public var inconsistencies: [(String, Int)]
    /// In flight with a lease that ran out: normal after a crash; the next
    /// `tern serve` returns them to the queue.
    public var expiredLeases: Int

    public var healthy: Bool {
        integrity == ["ok"] && foreignKeyViolations == 0 && schemaVersion <= knownVersion && inconsistencies.allSatisfy { $0.1 == 0 }
    }
}

extension Store {
    /// `PRAGMA quick_check` (O(pages), no index cross-checks): "ok" or the problems.
    public func quickCheck() throws -> [String] {
        try read { db in try String.fetchAll(db, sql: "PRAGMA quick_check") }
    }

    public func summary() throws -> QueueSummary {
        QueueSummary(counts: try stateCounts())
    }

    public func doctor(now: Int64) throws -> DoctorReport {
        let walBytes = ((try? FileManager.default.attributesOfItem(atPath: path + "-wal")[.size]) as? Int) ?? 0
        return try read { db in
            let integrity = try String.fetchAll(db, sql: "PRAGMA integrity_check")
            let fk = try Row.fetchAll(db, sql: "PRAGMA foreign_key_check").count
            func int(_ sql: String) throws -> Int { try Int.fetchOne(db, sql: sql) ?? 0 }
            let checks: [(String, String)] = [
                ("in flight without a lease", "SELECT count(*) FROM recipient WHERE state = \(RecipientState.inflight.sql) AND (lease_owner IS NULL OR lease_expires_at IS NULL)"),
                ("final without an attempt or an event", """
                    SELECT count(*) FROM recipient r WHERE r.final_at IS NOT NULL
                       AND NOT EXISTS (SELECT 1 FROM attempt a WHERE a.recipient_id = r.id)
                       AND NOT EXISTS (SELECT 1 FROM event e WHERE e.recipient_id = r.id)
                    """),
                ("final state without final_at", "SELECT count(*) FROM recipient WHERE \(StateSQL.final) AND final_at IS NULL"),
                ("message without recipients", "SELECT count(*) FROM message m WHERE NOT EXISTS (SELECT 1 FROM recipient r WHERE r.message_id = m.id)"),
                ("message without a received event", """
                    SELECT count(*) FROM message m WHERE m.origin <> 'dsn'
                       AND NOT EXISTS (SELECT 1 FROM event e WHERE e.message_id = m.id AND e.kind = \(EventKind.received.sql))
                    """),
                ("live recipient of a pruned body", "SELECT count(*) FROM recipient r JOIN message m ON m.id = r.message_id WHERE r.final_at IS NULL AND m.body IS NULL"),
            ]
            var states: [String: Int] = [:]
            for row in try Row.fetchAll(db, sql: "SELECT state, count(*) FROM recipient GROUP BY state") { states[row[0]] = row[1] }
            return DoctorReport(
                integrity: integrity, foreignKeyViolations: fk,
                schemaVersion: try int("SELECT max(version) FROM schema_migration"), knownVersion: Migrator.knownVersion,
                journalMode: try String.fetchOne(db, sql: "PRAGMA journal_mode") ?? "?",
                pageSize: try int("PRAGMA page_size"), pageCount: try int("PRAGMA page_count"),
                freelistCount: try int("PRAGMA freelist_count"), walBytes: walBytes, states: states,
                inconsistencies: try checks.map { ($0.0, try int($0.1)) },
                expiredLeases: try int("SELECT count(*) FROM recipient WHERE state = \(RecipientState.inflight.sql) AND lease_expires_at < \(now)"))
        }
    }
}
