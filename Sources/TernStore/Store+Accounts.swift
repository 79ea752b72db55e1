// Accounts for SMTP AUTH (migration 0003), and events that belong to no
// message (failed logins). Hashing is TernAuth's; this file stores strings.

import Foundation
import GRDB

public struct Account: Sendable, Equatable {
    public var name: String
    public var passwordHash: String
    public var senders: [String]
    public var createdAt: Int64
    public var updatedAt: Int64

    public init(name: String, passwordHash: String, senders: [String], createdAt: Int64, updatedAt: Int64) {
        self.name = name
        self.passwordHash = passwordHash
        self.senders = senders
        self.createdAt = createdAt
        self.updatedAt = updatedAt
    }
}

extension Store {
    /// Adds an account; `.constraint` when the name is taken.
    public func addAccount(name: String, passwordHash: String, senders: [String], now: Int64) async throws {
        try await write { db in
            try db.execute(sql: """
                INSERT INTO account (name, password_hash, senders, created_at, updated_at) VALUES (?, ?, ?, ?, ?)
                """, arguments: [name, passwordHash, Store.sendersJSON(senders), now, now])
        }
    }

    /// Replaces the password hash; false when there is no such account.
    public func setAccountPassword(name: String, passwordHash: String, now: Int64) async throws -> Bool {
        try await write { db in
            try db.execute(sql: "UPDATE account SET password_hash = ?, updated_at = ? WHERE name = ?",
                           arguments: [passwordHash, now, name])
            return db.changesCount > 0
        }
    }

    /// Replaces the allowed senders; false when there is no such account.
    public func setAccountSenders(name: String, senders: [String], now: Int64) async throws -> Bool {
        try await write { db in
            try db.execute(sql: "UPDATE account SET senders = ?, updated_at = ? WHERE name = ?",
                           arguments: [Store.sendersJSON(senders), now, name])
            return db.changesCount > 0
        }
    }

    /// Removes an account; false when there was none.
    public func removeAccount(name: String) async throws -> Bool {
        try await write { db in
            try db.execute(sql: "DELETE FROM account WHERE name = ?", arguments: [name])
            return db.changesCount > 0
        }
    }

    /// One account by name (case-insensitive), from a reader connection.
    public func account(named name: String) throws -> Account? {
        try read { db in
            try Row.fetchOne(db, sql: "SELECT * FROM account WHERE name = ?", arguments: [name]).map(Store.account)
        }
    }

    public func accounts() throws -> [Account] {
        try read { db in try Row.fetchAll(db, sql: "SELECT * FROM account ORDER BY name").map(Store.account) }
    }

    /// Records an event that belongs to no message (for example `auth_failed`).
    public func recordEvent(kind: EventKind, detail: JSON, at: Int64) async throws {
        let text = detail.text
        try await write(durable: false) { db in
            try db.cachedStatement(sql: "INSERT INTO event (at, kind, detail) VALUES (?, ?, ?)")
                .execute(arguments: [at, kind, text])
        }
    }

    static func account(_ row: Row) -> Account {
        let json: String = row["senders"]
        let senders = (try? JSONSerialization.jsonObject(with: Data(json.utf8))) as? [String] ?? []
        return Account(name: row["name"], passwordHash: row["password_hash"], senders: senders,
                       createdAt: row["created_at"], updatedAt: row["updated_at"])
    }

    static func sendersJSON(_ senders: [String]) -> String {
        JSON.array(senders.map { .string($0) }).text
    }
}
