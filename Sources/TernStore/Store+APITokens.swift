// Bearer tokens of the HTTP listener (migration 0013): names, scopes and
// the SHA-256 of each token; `tern api token` writes them, the listener
// looks a presented token up by its hash.

import Foundation
import GRDB

/// One row of `api_token` (never the token itself).
public struct StoredAPIToken: Sendable, Equatable {
    public var name: String
    public var scope: String
    public var createdAt: Int64
    public var lastUsedAt: Int64?
}

extension Store {
    /// Adds a token; false when the name is taken.
    public func addAPIToken(name: String, hash: String, scope: String, now: Int64) async throws -> Bool {
        try await write { db in
            try db.execute(sql: "INSERT OR IGNORE INTO api_token (name, token_hash, scope, created_at) VALUES (?, ?, ?, ?)",
                           arguments: [name, hash, scope, now])
            return db.changesCount == 1
        }
    }

    /// Removes a token; false when there was none of that name.
    public func removeAPIToken(name: String) async throws -> Bool {
        try await write { db in
            try db.execute(sql: "DELETE FROM api_token WHERE name = ?", arguments: [name])
            return db.changesCount == 1
        }
    }

    public func apiTokens() throws -> [StoredAPIToken] {
        try read { db in
            try Row.fetchAll(db, sql: "SELECT name, scope, created_at, last_used_at FROM api_token ORDER BY name").map {
                StoredAPIToken(name: $0[0], scope: $0[1], createdAt: $0[2], lastUsedAt: $0[3])
            }
        }
    }

    /// The token whose hash this is, if any.
    public func apiToken(hash: String) throws -> StoredAPIToken? {
        try read { db in
            try Row.fetchOne(db, sql: "SELECT name, scope, created_at, last_used_at FROM api_token WHERE token_hash = ?", arguments: [hash]).map {
                StoredAPIToken(name: $0[0], scope: $0[1], createdAt: $0[2], lastUsedAt: $0[3])
            }
        }
    }

    /// Notes a token's use (the listener does so at most once a minute per token).
    public func touchAPIToken(name: String, at now: Int64) async throws {
        _ = try await write(durable: false) { db in
            try db.execute(sql: "UPDATE api_token SET last_used_at = ? WHERE name = ?", arguments: [now, name])
            return 0
        }
    }

    /// The live recipients by state (queued, deferred, held, inflight), from the `recipient_live` index.
    public func liveCounts() throws -> [RecipientState: Int] { try stateCounts(where: StateSQL.live) }
}
