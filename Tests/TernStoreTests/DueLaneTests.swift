import Foundation
import GRDB
import Testing
@testable import TernStore

/// Issue 21: the scheduler's due-lane query walks the claim index (a seek
/// per lane) instead of grouping every waiting row, and answers what the
/// GROUP BY answered.
@Suite struct DueLaneTests {
    /// Random queues (domains, pools with NULL, every state, due and not):
    /// the walk equals the GROUP BY it replaced, with counts capped.
    @Test func theWalkAnswersWhatTheGroupByDid() throws {
        var rng = SystemRandomNumberGenerator()
        for round in 0..<20 {
            let store = try Store(path: temporaryDatabase())
            defer { store.close() }
            let domains = (0..<Int.random(in: 1...12, using: &rng)).map { "d\($0)-\(round).test" }
            let pools: [String?] = [nil, "bulk", "a", "zz"]
            let states = ["queued", "deferred", "inflight", "held", "delivered", "bounced"]
            let rows = Int.random(in: 0...300, using: &rng)
            try store.writeDirect { db in
                try db.execute(sql: "INSERT INTO message (queue_id, received_at, mail_from, size, body, origin) VALUES ('Q', 1, 'a@b.test', 1, X'61', 'smtp')")
                let m = db.lastInsertedRowID
                for i in 0..<rows {
                    let state = states.randomElement(using: &rng)!
                    let final: Int64? = ["delivered", "bounced"].contains(state) ? 5 : nil
                    let lease: (String?, Int64?) = state == "inflight" ? ("t", 9_999) : (nil, nil)
                    try db.execute(sql: """
                        INSERT INTO recipient (message_id, address, domain, pool, state, next_attempt_at, created_at, final_at,
                                               lease_owner, lease_expires_at)
                        VALUES (?, ?, ?, ?, ?, ?, 1, ?, ?, ?)
                        """, arguments: [m, "r\(i)@x", domains.randomElement(using: &rng)!, pools.randomElement(using: &rng)!,
                                         state, Int64.random(in: 0...2_000, using: &rng), final, lease.0, lease.1])
                }
            }
            let now: Int64 = 1_000
            let cap = Int.random(in: 1...40, using: &rng)
            let reference = try store.read { db in
                try Row.fetchAll(db, sql: """
                    SELECT domain, pool, min(next_attempt_at), sum(next_attempt_at <= ?) FROM recipient
                     WHERE state IN ('queued', 'deferred') GROUP BY domain, pool ORDER BY domain, pool
                    """, arguments: [now]).map { "\($0[0] as String)|\($0[1] as String? ?? "-")|\($0[2] as Int64)|\(min($0[3] as Int, cap))" }
            }
            let walked = try store.dueDomains(now: now, countCap: cap).map { "\($0.lane.domain)|\($0.lane.pool ?? "-")|\($0.nextAttemptAt)|\($0.dueCount)" }
            #expect(walked == reference, "round \(round), cap \(cap)")
        }
    }

    /// Every statement of the walk is a search in the claim index: no scan
    /// of the table, no sort, no GROUP BY (what made a pass cost 170 ms
    /// with a million recipients waiting).
    @Test func everyStepIsASeekInTheClaimIndex() throws {
        let store = try Store(path: temporaryDatabase())
        defer { store.close() }
        let sql = Store.dueLaneSQL
        for (name, statement) in [("lanes", sql.lanes), ("count", sql.count)] {
            let plan = try store.read { db in
                try Row.fetchAll(db, sql: "EXPLAIN QUERY PLAN " + statement,
                                 arguments: name == "count" ? ["d": "x.test", "p": "bulk", "now": 1, "cap": 5] : [:]).map { $0["detail"] as String }
            }
            #expect(plan.contains { $0.contains("recipient_claim") }, "\(name): \(plan)")
            #expect(!plan.contains { $0.contains("TEMP B-TREE") }, "\(name): \(plan)")
            // One scan, of the first row only (LIMIT 1): every other step is a search.
            #expect(plan.filter { $0.hasPrefix("SCAN") && $0.contains("recipient") }.count <= (name == "lanes" ? 1 : 0), "\(name): \(plan)")
        }
    }
}
