// Valid recipients of relay domains (migration 0008): `tern recipients`
// writes them, the listener keeps a copy in memory for RCPT.

import Foundation
import GRDB

extension Store {
    /// Adds canonical addresses (kept if there); returns how many were new.
    @discardableResult
    public func addRelayRecipients(_ addresses: [String], now: Int64) async throws -> Int {
        guard !addresses.isEmpty else { return 0 }
        return try await write { db in
            let stmt = try db.cachedStatement(sql: "INSERT OR IGNORE INTO relay_recipient (address, domain, created_at) VALUES (?, ?, ?)")
            var added = 0
            for a in addresses {
                let domain = a.lastIndex(of: "@").map { String(a[a.index(after: $0)...]).lowercased() } ?? ""
                try stmt.execute(arguments: [a, domain, now])
                added += db.changesCount
            }
            return added
        }
    }

    /// Removes addresses; returns how many were there.
    public func removeRelayRecipients(_ addresses: [String]) async throws -> Int {
        try await write { db in
            let stmt = try db.cachedStatement(sql: "DELETE FROM relay_recipient WHERE address = ?")
            var n = 0
            for a in addresses {
                try stmt.execute(arguments: [a])
                n += db.changesCount
            }
            return n
        }
    }

    /// Turns a domain's catch-all on (any recipient accepted) or off (only
    /// listed ones, even with none listed yet); nil forgets the setting.
    public func setCatchAll(_ domain: String, _ on: Bool?, now: Int64) async throws {
        try await write { db in
            if let on {
                try db.execute(sql: """
                    INSERT INTO relay_domain_policy (domain, catch_all, updated_at) VALUES (?, ?, ?)
                    ON CONFLICT (domain) DO UPDATE SET catch_all = excluded.catch_all, updated_at = excluded.updated_at
                    """, arguments: [domain.lowercased(), on, now])
            } else {
                try db.execute(sql: "DELETE FROM relay_domain_policy WHERE domain = ?", arguments: [domain.lowercased()])
            }
            return 0
        }
    }

    /// Listed recipients, optionally of one domain, in address order.
    public func relayRecipients(domain: String? = nil) throws -> [String] {
        try read { db in
            try String.fetchAll(db, sql: "SELECT address FROM relay_recipient WHERE ?1 IS NULL OR domain = ?1 ORDER BY domain, address",
                                arguments: [domain?.lowercased()])
        }
    }

    /// Catch-all settings by domain.
    public func relayDomainPolicies() throws -> [String: Bool] {
        try read { db in
            Dictionary(uniqueKeysWithValues: try Row.fetchAll(db, sql: "SELECT domain, catch_all FROM relay_domain_policy").map {
                ($0[0] as String, $0[1] as Bool)
            })
        }
    }

    /// Changes whenever either table changes (the listener reloads then).
    public func relayRecipientsVersion() throws -> String {
        try read { db in
            let r = try Row.fetchOne(db, sql: """
                SELECT (SELECT count(*) FROM relay_recipient), (SELECT coalesce(max(rowid), 0) FROM relay_recipient),
                       (SELECT count(*) FROM relay_domain_policy), (SELECT coalesce(max(updated_at), 0) FROM relay_domain_policy),
                       (SELECT coalesce(sum(catch_all), 0) FROM relay_domain_policy)
                """)!
            return "\(r[0] as Int64):\(r[1] as Int64):\(r[2] as Int64):\(r[3] as Int64):\(r[4] as Int64)"
        }
    }
}
