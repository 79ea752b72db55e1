// Traffic shaping's tables (migration 0011): the adaptive state the server
// writes through on every change, the operators' overrides that
// `tern shaping` writes and a running server picks up, and shaping events.

import Foundation
import GRDB

/// One destination's row of `shaping_state`.
public struct StoredShapingState: Sendable, Equatable {
    public var source: String
    public var destination: String
    public var mode: String
    public var factor: Double
    public var holdUntil: Int64?
    public var suspendedUntil: Int64?
    /// JSON object of limits, or nil.
    public var ruleLimits: String?
    public var rule: String?
    public var reason: String?
    public var lastStepAt: Int64
    public var open: Int
    /// JSON array of the message buckets' tokens, or nil.
    public var tokens: String?
    public var updatedAt: Int64

    public init(source: String, destination: String, mode: String, factor: Double, holdUntil: Int64?, suspendedUntil: Int64?,
                ruleLimits: String?, rule: String?, reason: String?, lastStepAt: Int64, open: Int, tokens: String?, updatedAt: Int64) {
        self.source = source
        self.destination = destination
        self.mode = mode
        self.factor = factor
        self.holdUntil = holdUntil
        self.suspendedUntil = suspendedUntil
        self.ruleLimits = ruleLimits
        self.rule = rule
        self.reason = reason
        self.lastStepAt = lastStepAt
        self.open = open
        self.tokens = tokens
        self.updatedAt = updatedAt
    }
}

/// One destination's row of `shaping_override`.
public struct StoredShapingOverride: Sendable, Equatable {
    public var source: String
    public var destination: String
    public var paused: Bool
    /// JSON object of limits.
    public var limits: String
    public var resetAt: Int64?
    public var version: Int64
    public var updatedAt: Int64

    /// The columns of `Store.overrideColumns`, in order.
    init(row: Row) {
        self.init(source: row[0], destination: row[1], paused: row[2], limits: row[3], resetAt: row[4], version: row[5], updatedAt: row[6])
    }

    init(source: String, destination: String, paused: Bool, limits: String, resetAt: Int64?, version: Int64, updatedAt: Int64) {
        self.source = source
        self.destination = destination
        self.paused = paused
        self.limits = limits
        self.resetAt = resetAt
        self.version = version
        self.updatedAt = updatedAt
    }
}

extension Store {
    static let overrideColumns = "source, destination, paused, limits, reset_at, version, updated_at"

    public func shapingStates() throws -> [StoredShapingState] {
        try read { db in
            try Row.fetchAll(db, sql: """
                SELECT source, destination, mode, factor, hold_until, suspended_until, rule_limits, rule, reason, last_step_at,
                       open, tokens, updated_at FROM shaping_state ORDER BY destination, source
                """).map {
                StoredShapingState(source: $0[0], destination: $0[1], mode: $0[2], factor: $0[3], holdUntil: $0[4], suspendedUntil: $0[5],
                                   ruleLimits: $0[6], rule: $0[7], reason: $0[8], lastStepAt: $0[9], open: $0[10], tokens: $0[11],
                                   updatedAt: $0[12])
            }
        }
    }

    /// Writes the gate's state in one transaction: shaping states (each
    /// replaces its row), warming sources' plan days and counts
    /// (`Store.putWarmup`), and the events (kind, JSON detail) of both.
    public func saveShaping(_ states: [StoredShapingState], warmup: [StoredWarmup] = [], usage: [StoredWarmupUsage] = [],
                            events: [(kind: EventKind, at: Int64, detail: String)], now: Int64 = 0) async throws {
        _ = try await write(durable: false) { db in
            let put = try db.cachedStatement(sql: """
                INSERT INTO shaping_state (source, destination, mode, factor, hold_until, suspended_until, rule_limits, rule, reason,
                                           last_step_at, open, tokens, updated_at)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                ON CONFLICT (source, destination) DO UPDATE SET mode = excluded.mode, factor = excluded.factor,
                    hold_until = excluded.hold_until, suspended_until = excluded.suspended_until, rule_limits = excluded.rule_limits,
                    rule = excluded.rule, reason = excluded.reason, last_step_at = excluded.last_step_at, open = excluded.open,
                    tokens = excluded.tokens, updated_at = excluded.updated_at
                """)
            for s in states {
                try put.execute(arguments: [s.source, s.destination, s.mode, s.factor, s.holdUntil, s.suspendedUntil, s.ruleLimits,
                                            s.rule, s.reason, s.lastStepAt, s.open, s.tokens, s.updatedAt])
            }
            try Store.putWarmup(warmup, usage: usage, now: now, db)
            for e in events { try Store.addEvent(db, at: e.at, kind: e.kind, messageID: nil, recipientID: nil, detail: e.detail) }
            return 0
        }
    }

    public func shapingOverrides() throws -> [StoredShapingOverride] {
        try read { db in
            try Row.fetchAll(db, sql: "SELECT \(Store.overrideColumns) FROM shaping_override ORDER BY destination, source")
                .map(StoredShapingOverride.init(row:))
        }
    }

    /// The highest override version (0: none): a running server compares it once a second.
    public func shapingOverrideVersion() throws -> Int64 {
        try read { db in try Int64.fetchOne(db, sql: "SELECT coalesce(max(version), 0) FROM shaping_override") ?? 0 }
    }

    /// An operator's change to one destination (`tern shaping`): `change`
    /// edits its override (a new one is unpaused, without limits); the
    /// event is written in the same transaction. With `reset`, the stored
    /// adaptive state goes back to normal too.
    public func changeShapingOverride(source: String = "", destination: String, now: Int64, event: EventKind, detail: String, reset: Bool,
                                      _ change: @escaping @Sendable (inout StoredShapingOverride) -> Void) async throws {
        _ = try await write { db in
            let version = (try Int64.fetchOne(db, sql: "SELECT coalesce(max(version), 0) FROM shaping_override") ?? 0) + 1
            var o = try Row.fetchOne(db, sql: "SELECT \(Store.overrideColumns) FROM shaping_override WHERE source = ? AND destination = ?",
                                     arguments: [source, destination]).map(StoredShapingOverride.init(row:))
                ?? StoredShapingOverride(source: source, destination: destination, paused: false, limits: "{}", resetAt: nil, version: 0, updatedAt: now)
            change(&o)
            o.version = version
            o.updatedAt = now
            if reset { o.resetAt = now }
            try db.execute(sql: """
                INSERT INTO shaping_override (source, destination, paused, limits, reset_at, version, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)
                ON CONFLICT (source, destination) DO UPDATE SET paused = excluded.paused, limits = excluded.limits,
                    reset_at = excluded.reset_at, version = excluded.version, updated_at = excluded.updated_at
                """, arguments: [o.source, o.destination, o.paused, o.limits, o.resetAt, o.version, o.updatedAt])
            if reset {
                try db.execute(sql: """
                    UPDATE shaping_state SET mode = 'normal', factor = 1, hold_until = NULL, suspended_until = NULL, rule_limits = NULL,
                        rule = NULL, reason = NULL, updated_at = ? WHERE source = ? AND destination = ?
                    """, arguments: [now, source, destination])
            }
            try Store.addEvent(db, at: now, kind: event, messageID: nil, recipientID: nil, detail: detail)
            return 0
        }
    }

    /// The shaping events of the last `since` milliseconds, newest first.
    public func shapingEvents(since: Int64, destination: String? = nil, limit: Int = 100) throws -> [(at: Int64, kind: String, detail: String)] {
        try read { db in
            try Row.fetchAll(db, sql: """
                SELECT at, kind, detail FROM event WHERE at >= ? AND kind LIKE 'shaping\\_%' ESCAPE '\\'
                  AND (? IS NULL OR json_extract(detail, '$.destination') = ?)
                ORDER BY at DESC, id DESC LIMIT ?
                """, arguments: [since, destination, destination, limit]).map { ($0[0], $0[1], $0[2] ?? "{}") }
        }
    }

    /// Domains and their first MX host from the MX cache (what the shaping
    /// gate starts with to know each domain's provider).
    public func cachedMXHosts() throws -> [(domain: String, host: String)] {
        try read { db in
            try Row.fetchAll(db, sql: "SELECT domain, answer FROM mx_cache WHERE status = 'ok'").compactMap { row in
                CachedMX.records(answer: row[1]).first.map { (row[0], $0.host) }
            }
        }
    }
}
