// The tables of source addresses, warm-up and blocklists (migration 0012):
// which sources could not be bound, each warming source's plan day and the
// day's counts, and the last answer of each blocklist; with their events.
// The server writes them; `tern warmup`, `tern blocklist` and `tern stats`
// read them, and `tern warmup start|pause|resume|skip-to` changes a plan.

import Foundation
import GRDB

/// One source's row of `warmup_state`.
public struct StoredWarmup: Sendable, Equatable {
    public var source: String
    public var plan: String
    public var day: Int
    public var dayStartedAt: Int64
    /// active, paused or done.
    public var status: String
    /// How the last day ended: advanced, held or stepped_back.
    public var verdict: String?
    public var reason: String?
    public var operatorVersion: Int64
    public var updatedAt: Int64

    public init(source: String, plan: String, day: Int, dayStartedAt: Int64, status: String, verdict: String? = nil, reason: String? = nil,
                operatorVersion: Int64 = 0, updatedAt: Int64) {
        self.source = source
        self.plan = plan
        self.day = day
        self.dayStartedAt = dayStartedAt
        self.status = status
        self.verdict = verdict
        self.reason = reason
        self.operatorVersion = operatorVersion
        self.updatedAt = updatedAt
    }

    static let columns = "source, plan, day, day_started_at, status, verdict, reason, operator_version, updated_at"

    init(row: Row) {
        self.init(source: row[0], plan: row[1], day: row[2], dayStartedAt: row[3], status: row[4], verdict: row[5], reason: row[6],
                  operatorVersion: row[7], updatedAt: row[8])
    }
}

/// One source and destination's counts of the current plan day (`warmup_usage`).
public struct StoredWarmupUsage: Sendable, Equatable {
    public var source: String
    public var destination: String
    /// The start of the plan day these counts belong to.
    public var dayStartedAt: Int64
    public var sent = 0
    public var delivered = 0
    public var deferred = 0
    public var bounced = 0
    public var blocked = 0
    public var hourStartedAt: Int64
    public var hourSent = 0

    public init(source: String, destination: String, dayStartedAt: Int64, sent: Int = 0, delivered: Int = 0, deferred: Int = 0, bounced: Int = 0,
                blocked: Int = 0, hourStartedAt: Int64, hourSent: Int = 0) {
        self.source = source
        self.destination = destination
        self.dayStartedAt = dayStartedAt
        self.sent = sent
        self.delivered = delivered
        self.deferred = deferred
        self.bounced = bounced
        self.blocked = blocked
        self.hourStartedAt = hourStartedAt
        self.hourSent = hourSent
    }
}

/// One source, zone and query's row of `blocklist_status`.
public struct StoredBlocklistStatus: Sendable, Equatable {
    public var source: String
    public var zone: String
    /// The address (or EHLO domain) looked up.
    public var query: String
    public var listed: Bool
    /// The A record's return code (127.0.0.x) when listed.
    public var code: String?
    public var reason: String?
    public var checkedAt: Int64
    public var changedAt: Int64

    public init(source: String, zone: String, query: String, listed: Bool, code: String?, reason: String?, checkedAt: Int64, changedAt: Int64) {
        self.source = source
        self.zone = zone
        self.query = query
        self.listed = listed
        self.code = code
        self.reason = reason
        self.checkedAt = checkedAt
        self.changedAt = changedAt
    }
}

/// A source the server could not bind (`source_status`).
public struct StoredSourceStatus: Sendable, Equatable {
    public var source: String
    public var address: String
    /// Why it is out of rotation; nil: it binds.
    public var bindError: String?
    public var failedAt: Int64?
    public var updatedAt: Int64
}

/// Attempts of one source to one domain over a window (`tern stats sources`).
public struct SourceAttemptCount: Sendable, Equatable {
    public var source: String?
    public var sourceAddress: String?
    public var domain: String
    public var mxHost: String?
    public var outcome: String
    public var code: Int?
    public var enhanced: String?
    /// Deferrals only: the reply text (grouped on it).
    public var text: String?
    public var count: Int
}

extension Store {
    // MARK: - Source status

    /// A source could not be bound (`error`) or binds again (nil): its row
    /// and a source_unavailable/source_available event, in one transaction.
    public func recordSourceBind(_ source: String, address: String, error: String?, at: Int64) async throws {
        var detail = JSONObjectWriter()
        detail.add("source", source)
        detail.add("address", address)
        detail.add("error", error)
        let json = detail.finish()
        _ = try await write { db in
            try db.execute(sql: """
                INSERT INTO source_status (source, address, bind_error, failed_at, updated_at) VALUES (?, ?, ?, ?, ?)
                ON CONFLICT (source) DO UPDATE SET address = excluded.address, bind_error = excluded.bind_error,
                    failed_at = coalesce(excluded.failed_at, failed_at), updated_at = excluded.updated_at
                """, arguments: [source, address, error, error == nil ? nil : at, at])
            try Store.addEvent(db, at: at, kind: error == nil ? .sourceAvailable : .sourceUnavailable, messageID: nil, recipientID: nil, detail: json)
            return 0
        }
    }

    public func sourceStatuses() throws -> [StoredSourceStatus] {
        try read { db in
            try Row.fetchAll(db, sql: "SELECT source, address, bind_error, failed_at, updated_at FROM source_status ORDER BY source").map {
                StoredSourceStatus(source: $0[0], address: $0[1], bindError: $0[2], failedAt: $0[3], updatedAt: $0[4])
            }
        }
    }

    // MARK: - Warm-up

    public func warmupStates() throws -> [StoredWarmup] {
        try read { db in
            try Row.fetchAll(db, sql: "SELECT \(StoredWarmup.columns) FROM warmup_state ORDER BY source").map(StoredWarmup.init(row:))
        }
    }

    public func warmupUsage() throws -> [StoredWarmupUsage] {
        try read { db in
            try Row.fetchAll(db, sql: """
                SELECT source, destination, day_started_at, sent, delivered, deferred, bounced, blocked, hour_started_at, hour_sent
                  FROM warmup_usage ORDER BY source, destination
                """).map {
                StoredWarmupUsage(source: $0[0], destination: $0[1], dayStartedAt: $0[2], sent: $0[3], delivered: $0[4], deferred: $0[5],
                                  bounced: $0[6], blocked: $0[7], hourStartedAt: $0[8], hourSent: $0[9])
            }
        }
    }

    /// The highest operator version over the warm-up states (a running server watches it).
    public func warmupOperatorVersion() throws -> Int64 {
        try read { db in try Int64.fetchOne(db, sql: "SELECT coalesce(max(operator_version), 0) FROM warmup_state") ?? 0 }
    }

    /// The server's write of warm-up state, inside `saveShaping`'s
    /// transaction: states (a row an operator changed after the version the
    /// server last read is left alone) and the day's counts (a day's rows
    /// replace the previous day's).
    static func putWarmup(_ states: [StoredWarmup], usage: [StoredWarmupUsage], now: Int64, _ db: Database) throws {
        guard !states.isEmpty || !usage.isEmpty else { return }
        let put = try db.cachedStatement(sql: """
            INSERT INTO warmup_state (\(StoredWarmup.columns)) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
            ON CONFLICT (source) DO UPDATE SET plan = excluded.plan, day = excluded.day, day_started_at = excluded.day_started_at,
                status = excluded.status, verdict = excluded.verdict, reason = excluded.reason, updated_at = excluded.updated_at
            WHERE warmup_state.operator_version <= excluded.operator_version
            """)
        // A new day's counts replace the last day's.
        let stale = try db.cachedStatement(sql: "DELETE FROM warmup_usage WHERE source = ? AND day_started_at <> ?")
        for s in states {
            try put.execute(arguments: [s.source, s.plan, s.day, s.dayStartedAt, s.status, s.verdict, s.reason, s.operatorVersion, s.updatedAt])
            try stale.execute(arguments: [s.source, s.dayStartedAt])
        }
        let count = try db.cachedStatement(sql: """
            INSERT INTO warmup_usage (source, destination, day_started_at, sent, delivered, deferred, bounced, blocked, hour_started_at, hour_sent,
                                      updated_at)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
            ON CONFLICT (source, destination) DO UPDATE SET day_started_at = excluded.day_started_at, sent = excluded.sent, delivered = excluded.delivered,
                deferred = excluded.deferred, bounced = excluded.bounced, blocked = excluded.blocked,
                hour_started_at = excluded.hour_started_at, hour_sent = excluded.hour_sent, updated_at = excluded.updated_at
            """)
        for u in usage {
            try count.execute(arguments: [u.source, u.destination, u.dayStartedAt, u.sent, u.delivered, u.deferred, u.bounced, u.blocked,
                                          u.hourStartedAt, u.hourSent, now])
        }
    }

    /// An operator's change to one source's plan (`tern warmup`): `change`
    /// gets the current row (nil: none yet) and returns the new one, which
    /// is written with a new operator version and the event (source, plan,
    /// day, status, by operator), in one transaction. A new plan day starts
    /// its counts from zero.
    @discardableResult
    public func changeWarmup(source: String, now: Int64, event: EventKind,
                             _ change: @escaping @Sendable (StoredWarmup?) throws -> StoredWarmup) async throws -> StoredWarmup {
        try await write { db in
            let version = (try Int64.fetchOne(db, sql: "SELECT coalesce(max(operator_version), 0) FROM warmup_state") ?? 0) + 1
            let old = try Row.fetchOne(db, sql: "SELECT \(StoredWarmup.columns) FROM warmup_state WHERE source = ?", arguments: [source])
                .map(StoredWarmup.init(row:))
            var new = try change(old)
            new.operatorVersion = version
            new.updatedAt = now
            try db.execute(sql: """
                INSERT INTO warmup_state (\(StoredWarmup.columns)) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
                ON CONFLICT (source) DO UPDATE SET plan = excluded.plan, day = excluded.day, day_started_at = excluded.day_started_at,
                    status = excluded.status, verdict = excluded.verdict, reason = excluded.reason,
                    operator_version = excluded.operator_version, updated_at = excluded.updated_at
                """, arguments: [new.source, new.plan, new.day, new.dayStartedAt, new.status, new.verdict, new.reason, new.operatorVersion, new.updatedAt])
            if old?.day != new.day || old?.dayStartedAt != new.dayStartedAt {
                try db.execute(sql: "DELETE FROM warmup_usage WHERE source = ?", arguments: [source])
            }
            var detail = JSONObjectWriter()
            detail.add("source", new.source)
            detail.add("plan", new.plan)
            detail.add("day", new.day)
            detail.add("status", new.status)
            detail.add("by", "operator")
            try Store.addEvent(db, at: now, kind: event, messageID: nil, recipientID: nil, detail: detail.finish())
            return new
        }
    }

    /// Events of one family (`warmup`, `blocklist`, `source`) of the last `since` milliseconds, newest first.
    public func events(family: String, since: Int64, limit: Int = 100) throws -> [(at: Int64, kind: String, detail: String)] {
        try read { db in
            try Row.fetchAll(db, sql: """
                SELECT at, kind, detail FROM event WHERE at >= ? AND kind LIKE ? ESCAPE '\\' AND message_id IS NULL
                ORDER BY at DESC, id DESC LIMIT ?
                """, arguments: [since, family + "\\_%", limit]).map { ($0[0], $0[1], $0[2] ?? "{}") }
        }
    }

    // MARK: - Blocklists

    public func blocklistStatuses() throws -> [StoredBlocklistStatus] {
        try read { db in
            try Row.fetchAll(db, sql: """
                SELECT source, zone, query, listed, code, reason, checked_at, changed_at FROM blocklist_status ORDER BY source, zone, query
                """).map {
                StoredBlocklistStatus(source: $0[0], zone: $0[1], query: $0[2], listed: $0[3], code: $0[4], reason: $0[5], checkedAt: $0[6],
                                      changedAt: $0[7])
            }
        }
    }

    /// Writes check results (each replaces its row) and the events of the changes, in one transaction.
    public func saveBlocklist(_ rows: [StoredBlocklistStatus], events: [(kind: EventKind, at: Int64, detail: String)]) async throws {
        _ = try await write { db in
            let put = try db.cachedStatement(sql: """
                INSERT INTO blocklist_status (source, zone, query, listed, code, reason, checked_at, changed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                ON CONFLICT (source, zone, query) DO UPDATE SET listed = excluded.listed, code = excluded.code, reason = excluded.reason,
                    checked_at = excluded.checked_at, changed_at = excluded.changed_at
                """)
            for r in rows {
                try put.execute(arguments: [r.source, r.zone, r.query, r.listed, r.code, r.reason, r.checkedAt, r.changedAt])
            }
            for e in events { try Store.addEvent(db, at: e.at, kind: e.kind, messageID: nil, recipientID: nil, detail: e.detail) }
            return 0
        }
    }

    // MARK: - Reports

    /// Attempts since `since` by source, domain, MX host and outcome, with
    /// deferrals also by reply (`tern stats sources`).
    public func sourceAttempts(since: Int64) throws -> [SourceAttemptCount] {
        try read { db in
            try Row.fetchAll(db, sql: """
                SELECT a.source, a.source_address, r.domain, a.mx_host, a.outcome,
                       CASE WHEN a.outcome = \(AttemptOutcome.deferred.sql) THEN a.code END,
                       CASE WHEN a.outcome = \(AttemptOutcome.deferred.sql) THEN a.enhanced END,
                       CASE WHEN a.outcome = \(AttemptOutcome.deferred.sql) THEN a.text END, count(*)
                  FROM attempt a JOIN recipient r ON r.id = a.recipient_id
                 WHERE a.started_at >= ?
                 GROUP BY 1, 2, 3, 4, 5, 6, 7, 8
                """, arguments: [since]).map {
                SourceAttemptCount(source: $0[0], sourceAddress: $0[1], domain: $0[2], mxHost: $0[3], outcome: $0[4], code: $0[5],
                                   enhanced: $0[6], text: $0[7], count: $0[8])
            }
        }
    }
}
