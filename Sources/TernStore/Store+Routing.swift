// What routing remembers (migration 0004): MX answers with their expiry,
// and each MX host's health for the circuit breaker. Plain values here;
// TernRouting owns their meaning.

import Foundation
import GRDB

public struct CachedMX: Sendable, Equatable {
    /// ok, nxdomain or none.
    public var status: String
    public var records: [(preference: Int, host: String)]
    public var expiresAt: Int64

    public static func == (a: CachedMX, b: CachedMX) -> Bool {
        a.status == b.status && a.expiresAt == b.expiresAt && a.records.elementsEqual(b.records) { $0 == $1 }
    }

    public init(status: String, records: [(preference: Int, host: String)], expiresAt: Int64) {
        self.status = status
        self.records = records
        self.expiresAt = expiresAt
    }

    /// The records of `mx_cache.answer` (JSON `[[preference, host], …]`).
    static func records(answer json: String) -> [(preference: Int, host: String)] {
        let pairs = (try? JSONSerialization.jsonObject(with: Data(json.utf8))) as? [[Any]] ?? []
        return pairs.compactMap { p -> (Int, String)? in
            guard p.count == 2, let pref = p[0] as? Int, let host = p[1] as? String else { return nil }
            return (pref, host)
        }
    }
}

public struct StoredHostHealth: Sendable, Equatable {
    public var host: String
    public var failures: Int
    public var successes: Int
    public var lastError: String?
    public var lastFailureAt: Int64?
    public var lastSuccessAt: Int64?
    public var cooldownUntil: Int64?

    public init(host: String, failures: Int, successes: Int, lastError: String?, lastFailureAt: Int64?, lastSuccessAt: Int64?,
                cooldownUntil: Int64?) {
        self.host = host
        self.failures = failures
        self.successes = successes
        self.lastError = lastError
        self.lastFailureAt = lastFailureAt
        self.lastSuccessAt = lastSuccessAt
        self.cooldownUntil = cooldownUntil
    }
}

extension Store {
    /// The cached MX answer for `domain` if it has not expired at `now`.
    public func cachedMX(_ domain: String, now: Int64) throws -> CachedMX? {
        try read { db in
            guard let row = try Row.fetchOne(db, sql: "SELECT status, answer, expires_at FROM mx_cache WHERE domain = ? AND expires_at > ?",
                                             arguments: [domain, now]) else { return nil }
            return CachedMX(status: row[0], records: CachedMX.records(answer: row[1]), expiresAt: row[2])
        }
    }

    public func cacheMX(_ domain: String, _ entry: CachedMX, now: Int64) async throws {
        let answer = JSON.array(entry.records.map { .array([.int($0.preference), .string($0.host)]) }).text
        _ = try await write(durable: false) { db in
            try db.execute(sql: """
                INSERT INTO mx_cache (domain, status, answer, fetched_at, expires_at) VALUES (?, ?, ?, ?, ?)
                ON CONFLICT (domain) DO UPDATE SET status = excluded.status, answer = excluded.answer,
                    fetched_at = excluded.fetched_at, expires_at = excluded.expires_at
                """, arguments: [domain, entry.status, answer, now, entry.expiresAt])
            return 0
        }
    }

    public func hostHealth() throws -> [StoredHostHealth] {
        try read { db in try Row.fetchAll(db, sql: Store.hostHealthSelect).map(Store.hostHealth(row:)) }
    }

    /// `mx_health`'s columns in the order `hostHealth(row:)` reads them.
    private static let hostHealthSelect = """
        SELECT host, failures, successes, last_error, last_failure_at, last_success_at, cooldown_until FROM mx_health
        """

    private static func hostHealth(row: Row) -> StoredHostHealth {
        StoredHostHealth(host: row[0], failures: row[1], successes: row[2], lastError: row[3], lastFailureAt: row[4],
                         lastSuccessAt: row[5], cooldownUntil: row[6])
    }

    /// MX hosts the circuit breaker is skipping at `now`, the longest cool-down first.
    public func coolingHosts(now: Int64) throws -> [StoredHostHealth] {
        try hostHealth().filter { ($0.cooldownUntil ?? 0) > now }.sorted { ($0.cooldownUntil!, $0.host) > ($1.cooldownUntil!, $1.host) }
    }

    /// What an operator's reset leaves in `mx_health.last_error`: a running
    /// server that finds it on a host it holds back takes the host back.
    public static let breakerResetMarker = "cool-down ended by the operator"

    /// Ends every cool-down (`tern queue flush`, as Postfix's flush ends its
    /// "dead destination" cache): the hosts are tried at the next attempt.
    /// Returns how many hosts were cooling.
    @discardableResult
    public func endCoolDowns(now: Int64, why: String) async throws -> Int {
        try await write { db in
            try db.execute(sql: """
                UPDATE mx_health SET failures = 0, cooldown_until = NULL, last_error = ?
                 WHERE cooldown_until IS NOT NULL AND cooldown_until > ?
                """, arguments: ["\(Store.breakerResetMarker) (\(why))", now])
            return db.changesCount
        }
    }

    /// One host's stored record.
    public func storedHostHealth(_ host: String) throws -> StoredHostHealth? {
        try read { db in try Row.fetchOne(db, sql: Store.hostHealthSelect + " WHERE host = ?", arguments: [host]).map(Store.hostHealth(row:)) }
    }

    public func saveHostHealth(_ h: StoredHostHealth) async throws {
        try await saveHostHealth { h }
    }

    /// Writes the record `current` returns when the write runs, so that
    /// writes started out of order still leave the latest state.
    public func saveHostHealth(_ current: @escaping @Sendable () -> StoredHostHealth) async throws {
        _ = try await write(durable: false) { db in
            let h = current()
            try db.cachedStatement(sql: """
                INSERT INTO mx_health (host, failures, successes, last_error, last_failure_at, last_success_at, cooldown_until)
                VALUES (?, ?, ?, ?, ?, ?, ?)
                ON CONFLICT (host) DO UPDATE SET failures = excluded.failures, successes = excluded.successes,
                    last_error = excluded.last_error, last_failure_at = excluded.last_failure_at,
                    last_success_at = excluded.last_success_at, cooldown_until = excluded.cooldown_until
                """).execute(arguments: [h.host, h.failures, h.successes, h.lastError, h.lastFailureAt, h.lastSuccessAt, h.cooldownUntil])
            return 0
        }
    }
}
