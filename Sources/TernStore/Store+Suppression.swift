// The suppression list (migration 0004): addresses Tern does not deliver to.

import Foundation
import GRDB

public struct Suppression: Sendable, Equatable {
    public var address: String
    public var reason: String
    /// bounce, manual or import.
    public var source: String
    public var createdAt: Int64
    public var expiresAt: Int64?

    public init(address: String, reason: String, source: String, createdAt: Int64, expiresAt: Int64? = nil) {
        self.address = address
        self.reason = reason
        self.source = source
        self.createdAt = createdAt
        self.expiresAt = expiresAt
    }
}

extension Store {
    /// Adds or replaces entries in one transaction; returns how many were new.
    @discardableResult
    public func addSuppressions(_ entries: [Suppression]) async throws -> Int {
        guard !entries.isEmpty else { return 0 }
        return try await write { db in try Store.upsert(entries, db) }
    }

    static func upsert(_ entries: [Suppression], _ db: Database) throws -> Int {
        let exists = try db.cachedStatement(sql: "SELECT 1 FROM suppression WHERE address = ?")
        let stmt = try db.cachedStatement(sql: """
            INSERT INTO suppression (address, reason, source, created_at, expires_at) VALUES (?, ?, ?, ?, ?)
            ON CONFLICT (address) DO UPDATE SET reason = excluded.reason, source = excluded.source,
                created_at = excluded.created_at, expires_at = excluded.expires_at
            """)
        var added = 0
        for e in entries {
            if try Int.fetchOne(exists, arguments: [e.address]) == nil { added += 1 }
            try stmt.execute(arguments: [e.address, e.reason, e.source, e.createdAt, e.expiresAt])
        }
        return added
    }

    /// Removes addresses; returns how many were there.
    public func removeSuppressions(_ addresses: [String]) async throws -> Int {
        try await write { db in
            var n = 0
            let stmt = try db.cachedStatement(sql: "DELETE FROM suppression WHERE address = ?")
            for a in addresses {
                try stmt.execute(arguments: [a])
                n += db.changesCount
            }
            return n
        }
    }

    public func suppressions(containing text: String? = nil, limit: Int = Int.max, offset: Int = 0) throws -> [Suppression] {
        try read { db in
            try Row.fetchAll(db, sql: """
                SELECT address, reason, source, created_at, expires_at FROM suppression
                 WHERE :q IS NULL OR address LIKE '%' || :q || '%' ORDER BY created_at DESC, address LIMIT :limit OFFSET :offset
                """, arguments: ["q": text, "limit": limit == Int.max ? -1 : limit, "offset": offset]).map {
                Suppression(address: $0[0], reason: $0[1], source: $0[2], createdAt: $0[3], expiresAt: $0[4])
            }
        }
    }

    /// Which of these addresses are suppressed at `now` (expired entries do
    /// not count), with the reason, keyed as given. The caller passes the
    /// canonical form (`Mailbox.canonical`); ASCII case does not matter.
    public func suppressed(_ addresses: [String], now: Int64) throws -> [String: String] {
        guard !addresses.isEmpty else { return [:] }
        return try readStatement { db in
            var found: [String: String] = [:]
            let stmt = try db.cachedStatement(sql: """
                SELECT reason FROM suppression WHERE address = ? AND (expires_at IS NULL OR expires_at > ?)
                """)
            for a in Set(addresses) {
                if let reason = try String.fetchOne(stmt, arguments: [a, now]) { found[a] = reason }
            }
            return found
        }
    }
}
