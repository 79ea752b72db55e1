// Retention: bodies of finished messages after `bodyDays`, finished
// messages with their recipients, attempts and events after `historyDays`,
// in short batches through group commit, then an incremental vacuum. A
// message with a recipient not yet final is never touched.

import Foundation
import GRDB

public struct RetentionPolicy: Sendable, Equatable {
    public var bodyDays = 7
    public var historyDays = 90
    /// Messages per transaction, so that intake never waits long.
    public var batch = 500
    public init() {}
}

public struct PruneResult: Sendable, Equatable {
    public var bodies = 0
    public var messages = 0
    public var events = 0
    public var freedPages = 0
    public init() {}
}

extension Store {
    public func prune(_ policy: RetentionPolicy, now: Int64, dryRun: Bool = false) async throws -> PruneResult {
        var result = PruneResult()
        let bodyCutoff = now - Int64(policy.bodyDays) * 86_400_000
        let historyCutoff = now - Int64(policy.historyDays) * 86_400_000
        // Finished before the cutoff: every recipient final, the last one before it.
        // received_at < cutoff is the index range (a recipient is final after its message arrived).
        let finished = """
            m.received_at < :cutoff AND NOT EXISTS (SELECT 1 FROM recipient r WHERE r.message_id = m.id
                                                     AND (r.final_at IS NULL OR r.final_at >= :cutoff))
            """
        if dryRun {
            return try read { db in
                result.bodies = try Int.fetchOne(db, sql: "SELECT count(*) FROM message m WHERE m.body IS NOT NULL AND \(finished)",
                                                 arguments: ["cutoff": bodyCutoff]) ?? 0
                result.messages = try Int.fetchOne(db, sql: "SELECT count(*) FROM message m WHERE \(finished)",
                                                   arguments: ["cutoff": historyCutoff]) ?? 0
                result.events = try Int.fetchOne(db, sql: "SELECT count(*) FROM event WHERE at < ?", arguments: [historyCutoff]) ?? 0
                return result
            }
        }
        let freeBefore = try read { db in try Int.fetchOne(db, sql: "PRAGMA freelist_count") ?? 0 }
        result.messages = try await inBatches(policy.batch, """
            DELETE FROM message WHERE id IN (SELECT m.id FROM message m WHERE \(finished) LIMIT :batch)
            """, ["cutoff": historyCutoff])
        result.bodies = try await inBatches(policy.batch, """
            UPDATE message SET body = NULL WHERE id IN (SELECT m.id FROM message m WHERE m.body IS NOT NULL AND \(finished) LIMIT :batch)
            """, ["cutoff": bodyCutoff])
        // Old events whose message is gone (or that belong to none); a live message keeps its whole log.
        result.events = try await inBatches(policy.batch * 10, """
            DELETE FROM event WHERE id IN (
                SELECT e.id FROM event e WHERE e.at < :cutoff
                   AND (e.message_id IS NULL OR NOT EXISTS (SELECT 1 FROM message m WHERE m.id = e.message_id))
                 LIMIT :batch)
            """, ["cutoff": historyCutoff])
        _ = try await write { db in
            try db.execute(sql: "DELETE FROM suppression WHERE expires_at IS NOT NULL AND expires_at <= ?", arguments: [now])
            try db.execute(sql: "DELETE FROM mx_cache WHERE expires_at < ?", arguments: [now - 86_400_000])
            // Rollups of days older than the history kept.
            let day = historyCutoff / Rollups.dayMillis
            for table in ["attempt_daily", "deferral_daily", "recipient_daily", "role_daily"] {
                try db.execute(sql: "DELETE FROM \(table) WHERE day < ?", arguments: [day])
            }
            return 0
        }
        let freeAfterDeletes = try read { db in try Int.fetchOne(db, sql: "PRAGMA freelist_count") ?? 0 }
        // Give pages back, and let SQLite refresh its planner statistics where they went stale.
        try writeDirect { db in
            try db.execute(sql: "PRAGMA incremental_vacuum")
            try db.execute(sql: "PRAGMA optimize")
        }
        let freeAfter = try read { db in try Int.fetchOne(db, sql: "PRAGMA freelist_count") ?? 0 }
        result.freedPages = max(0, max(freeAfterDeletes, freeBefore) - freeAfter)
        return result
    }

    /// Runs `sql` (which takes `:batch`) in one transaction per batch until a batch changes fewer rows; returns the rows changed.
    private func inBatches(_ batch: Int, _ sql: String, _ arguments: [String: Int64]) async throws -> Int {
        var total = 0
        while true {
            let n = try await write { db -> Int in
                var args = StatementArguments(arguments)
                _ = args.append(contentsOf: ["batch": batch])
                try db.execute(sql: sql, arguments: args)
                return db.changesCount
            }
            total += n
            if n < batch { return total }
        }
    }
}
