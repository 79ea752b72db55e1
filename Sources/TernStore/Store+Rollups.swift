// Daily rollups (migration 0005): kept up to date inside the transactions
// that write attempts and final transitions, rebuilt from the raw rows by
// `tern stats rebuild` (and once when migration 0005 is applied).

import Foundation
import GRDB

enum Rollups {
    static let dayMillis: Int64 = 86_400_000
    /// Time to deliver, upper bounds in seconds (the 20th bucket is everything above).
    static let deliverBounds: [Int64] = [1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800,
                                         86400, 172_800, 432_000]
    /// The same bounds in milliseconds, as the raw rows store times.
    static let deliverBoundsMillis = deliverBounds.map { $0 * 1000 }
    /// Session time, upper bounds in milliseconds.
    static let sessionBounds: [Int64] = [50, 100, 200, 300, 500, 750, 1000, 1500, 2000, 3000, 5000, 7500, 10000, 15000, 20000,
                                         30000, 60000, 120_000, 300_000]
    static let buckets = 20

    static func bucket(_ value: Int64, _ bounds: [Int64]) -> Int {
        bounds.firstIndex { value <= $0 } ?? bounds.count
    }

    /// The same bucket in SQL, for `expr` in the bounds' unit.
    static func bucketSQL(_ expr: String, _ bounds: [Int64]) -> String {
        "CASE " + bounds.enumerated().map { "WHEN \(expr) <= \($1) THEN \($0)" }.joined(separator: " ") + " ELSE \(bounds.count) END"
    }

    /// The upper bound of the bucket holding the value of rank ⌈p·n⌉ (the
    /// same rank rule as the views' exact percentiles); nil when empty.
    static func percentile(_ histogram: [Int], _ rankOf: (Int) -> Int, _ bounds: [Int64], scale: Double) -> Double? {
        let n = histogram.reduce(0, +)
        guard n > 0 else { return nil }
        let rank = rankOf(n)
        var seen = 0
        for (i, c) in histogram.enumerated() {
            seen += c
            if seen >= rank { return Double(bounds[min(i, bounds.count - 1)]) * scale }
        }
        return Double(bounds.last!) * scale
    }

    static func median(_ h: [Int], _ bounds: [Int64], scale: Double) -> Double? { percentile(h, { ($0 + 1) / 2 }, bounds, scale: scale) }
    static func p95(_ h: [Int], _ bounds: [Int64], scale: Double) -> Double? { percentile(h, { ($0 * 95 + 99) / 100 }, bounds, scale: scale) }

    static var roleList: String { Store.roleAccounts.map { "'\($0)'" }.joined(separator: ",") }
    static let localPartSQL = "lower(substr(address, 1, instr(address, '@') - 1))"

    static let sColumns = (0..<buckets).map { "s\($0)" }
    static let dColumns = (0..<buckets).map { "d\($0)" }

    /// Recomputes every rollup from the raw rows.
    static var rebuildStatements: [String] {
        let sSums = (0..<buckets).map { "sum(sb = \($0))" }.joined(separator: ", ")
        let dSums = (0..<buckets).map { "sum(state = \(RecipientState.delivered.sql) AND db = \($0))" }.joined(separator: ", ")
        return [
            "DELETE FROM attempt_daily", "DELETE FROM deferral_daily", "DELETE FROM recipient_daily", "DELETE FROM role_daily",
            """
            INSERT INTO attempt_daily (day, domain, mx_host, attempts, delivered, deferred, bounced, with_tls, session_ms, \(sColumns.joined(separator: ", ")))
            SELECT day, domain, mx_host, count(*), sum(outcome = \(AttemptOutcome.delivered.sql)), sum(outcome = \(AttemptOutcome.deferred.sql)), sum(outcome = \(AttemptOutcome.bounced.sql)),
                   sum(tls IS NOT NULL), sum(ms), \(sSums)
              FROM (SELECT a.started_at / \(dayMillis) AS day, r.domain, coalesce(a.mx_host, '') AS mx_host, a.outcome, a.tls,
                           a.ended_at - a.started_at AS ms, \(bucketSQL("a.ended_at - a.started_at", sessionBounds)) AS sb
                      FROM attempt a JOIN recipient r ON r.id = a.recipient_id)
             GROUP BY day, domain, mx_host
            """,
            """
            INSERT INTO deferral_daily (day, domain, reply, n)
            SELECT a.started_at / \(dayMillis), r.domain, \(replySQL("a.")), count(*)
              FROM attempt a JOIN recipient r ON r.id = a.recipient_id WHERE a.outcome = \(AttemptOutcome.deferred.sql) GROUP BY 1, 2, 3
            """,
            """
            INSERT INTO recipient_daily (day, domain, delivered, bounced, expired, suppressed, \(dColumns.joined(separator: ", ")))
            SELECT day, domain, sum(state = \(RecipientState.delivered.sql)), sum(state = \(RecipientState.bounced.sql)), sum(state = \(RecipientState.expired.sql)), sum(state = \(RecipientState.suppressed.sql)), \(dSums)
              FROM (SELECT created_at / \(dayMillis) AS day, domain, state,
                           \(bucketSQL("(final_at - created_at)", deliverBoundsMillis)) AS db
                      FROM recipient WHERE final_at IS NOT NULL)
             GROUP BY day, domain
            """,
            """
            INSERT INTO role_daily (day, role, n)
            SELECT created_at / \(dayMillis), \(localPartSQL), count(*) FROM recipient
             WHERE final_at IS NOT NULL AND \(localPartSQL) IN (\(roleList)) GROUP BY 1, 2
            """,
        ]
    }

    /// "code enhanced text" of an attempt, as stored in deferral_daily.
    static func replySQL(_ prefix: String) -> String {
        "coalesce(\(prefix)code || ' ', '') || coalesce(\(prefix)enhanced || ' ', '') || coalesce(\(prefix)text, '')"
    }

    static func reply(code: Int?, enhanced: String?, text: String?) -> String {
        (code.map { "\($0) " } ?? "") + (enhanced.map { "\($0) " } ?? "") + (text ?? "")
    }


    /// Takes the attempts and final states of recipients about to be deleted
    /// out of the rollups, and drops rows left empty.
    static func removeRecipients(where condition: String, _ args: StatementArguments, _ db: Database) throws {
        var batch = RollupBatch()
        for r in try Row.fetchAll(db, sql: """
            SELECT a.recipient_id, a.started_at, a.ended_at, a.mx_host, a.tls, a.code, a.enhanced, a.text, a.outcome, r.domain
              FROM attempt a JOIN recipient r ON r.id = a.recipient_id WHERE \(condition)
            """, arguments: args) {
            try batch.addAttempt(NewAttempt(recipientID: r[0], startedAt: r[1], endedAt: r[2], mxHost: r[3], mxAddress: nil, tls: r[4],
                                            code: r[5], enhanced: r[6], text: r[7], outcome: r[8], category: nil, domain: r[9]), sign: -1, db)
        }
        for r in try Row.fetchAll(db, sql: """
            SELECT r.state, r.domain, r.address, r.created_at, r.final_at FROM recipient r WHERE r.final_at IS NOT NULL AND \(condition)
            """, arguments: args) {
            batch.addFinal(state: r[0], domain: r[1], address: r[2], createdAt: r[3], finalAt: r[4], sign: -1)
        }
        try batch.write(db)
        try db.execute(sql: "DELETE FROM attempt_daily WHERE attempts = 0")
        try db.execute(sql: "DELETE FROM deferral_daily WHERE n = 0")
        try db.execute(sql: "DELETE FROM recipient_daily WHERE delivered = 0 AND bounced = 0 AND expired = 0 AND suppressed = 0")
        try db.execute(sql: "DELETE FROM role_daily WHERE n = 0")
    }
}

/// The rollup changes of one transaction, summed before they are written:
/// one upsert per rollup row touched, not one per recipient.
struct RollupBatch {
    struct AttemptKey: Hashable { var day: Int64, domain: String, host: String }
    struct AttemptSums {
        var attempts = 0, delivered = 0, deferred = 0, bounced = 0, tls = 0
        var ms: Int64 = 0
        var histogram = [Int](repeating: 0, count: Rollups.buckets)

        mutating func add(_ o: AttemptSums) {
            attempts += o.attempts; delivered += o.delivered; deferred += o.deferred; bounced += o.bounced; tls += o.tls
            ms += o.ms
            for i in histogram.indices { histogram[i] += o.histogram[i] }
        }
    }
    struct DeferralKey: Hashable { var day: Int64, domain: String, reply: String }
    struct FinalKey: Hashable { var day: Int64, domain: String }
    struct FinalSums {
        var delivered = 0, bounced = 0, expired = 0, suppressed = 0
        var histogram = [Int](repeating: 0, count: Rollups.buckets)

        mutating func add(_ o: FinalSums) {
            delivered += o.delivered; bounced += o.bounced; expired += o.expired; suppressed += o.suppressed
            for i in histogram.indices { histogram[i] += o.histogram[i] }
        }
    }
    struct RoleKey: Hashable { var day: Int64, role: String }

    var attempts: [AttemptKey: AttemptSums] = [:]
    var deferrals: [DeferralKey: Int] = [:]
    var finals: [FinalKey: FinalSums] = [:]
    var roles: [RoleKey: Int] = [:]

    /// An attempt row was inserted (sign +1) or is about to be deleted (−1).
    mutating func addAttempt(_ a: NewAttempt, sign: Int, _ db: Database) throws {
        let domain = try a.domain ?? String.fetchOne(db.cachedStatement(sql: "SELECT domain FROM recipient WHERE id = ?"),
                                                       arguments: [a.recipientID]) ?? ""
        let day = a.startedAt / Rollups.dayMillis
        let ms = a.endedAt - a.startedAt
        let key = AttemptKey(day: day, domain: domain, host: a.mxHost ?? "")
        var sums = attempts[key, default: AttemptSums()]
        sums.attempts += sign
        if a.outcome == .delivered { sums.delivered += sign }
        if a.outcome == .deferred { sums.deferred += sign }
        if a.outcome == .bounced { sums.bounced += sign }
        if a.tls != nil { sums.tls += sign }
        sums.ms += ms * Int64(sign)
        sums.histogram[Rollups.bucket(ms, Rollups.sessionBounds)] += sign
        attempts[key] = sums
        if a.outcome == .deferred {
            deferrals[DeferralKey(day: day, domain: domain, reply: Rollups.reply(code: a.code, enhanced: a.enhanced, text: a.text)), default: 0] += sign
        }
    }

    /// States a recipient ends in (the rows `recipient.final_at` is set for).
    /// A recipient reached (+1) or, deleted in a final state, left (−1) `state`.
    mutating func addFinal(state: RecipientState, domain: String, address: String, createdAt: Int64, finalAt: Int64, sign: Int) {
        guard state.isFinal else { return }
        let key = FinalKey(day: createdAt / Rollups.dayMillis, domain: domain)
        var sums = finals[key, default: FinalSums()]
        switch state {
        case .delivered:
            sums.delivered += sign
            sums.histogram[Rollups.bucket(finalAt - createdAt, Rollups.deliverBoundsMillis)] += sign
        case .bounced: sums.bounced += sign
        case .expired: sums.expired += sign
        default: sums.suppressed += sign
        }
        finals[key] = sums
        let local = address.prefix { $0 != "@" }.lowercased()
        if Store.roleAccounts.contains(local) { roles[RoleKey(day: key.day, role: local), default: 0] += sign }
    }

    /// Adds another batch's changes to these.
    mutating func merge(_ other: RollupBatch) {
        for (k, v) in other.attempts { attempts[k, default: AttemptSums()].add(v) }
        for (k, n) in other.deferrals { deferrals[k, default: 0] += n }
        for (k, v) in other.finals { finals[k, default: FinalSums()].add(v) }
        for (k, n) in other.roles { roles[k, default: 0] += n }
    }

    /// The upserts, spelled once: building them per commit (and hashing the
    /// long strings for GRDB's statement cache, and boxing every argument)
    /// cost the writer thread more than SQLite's own work for these rows.
    static let attemptUpsert = """
        INSERT INTO attempt_daily (day, domain, mx_host, attempts, delivered, deferred, bounced, with_tls, session_ms, \(Rollups.sColumns.joined(separator: ", ")))
        VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, \(Rollups.sColumns.map { _ in "?" }.joined(separator: ", ")))
        ON CONFLICT (day, domain, mx_host) DO UPDATE SET
            attempts = attempts + excluded.attempts, delivered = delivered + excluded.delivered,
            deferred = deferred + excluded.deferred, bounced = bounced + excluded.bounced,
            with_tls = with_tls + excluded.with_tls, session_ms = session_ms + excluded.session_ms,
            \(Rollups.sColumns.map { "\($0) = \($0) + excluded.\($0)" }.joined(separator: ", "))
        """
    static let deferralUpsert = """
        INSERT INTO deferral_daily (day, domain, reply, n) VALUES (?, ?, ?, ?)
        ON CONFLICT (day, domain, reply) DO UPDATE SET n = n + excluded.n
        """
    static let finalUpsert = """
        INSERT INTO recipient_daily (day, domain, delivered, bounced, expired, suppressed, \(Rollups.dColumns.joined(separator: ", ")))
        VALUES (?, ?, ?, ?, ?, ?, \(Rollups.dColumns.map { _ in "?" }.joined(separator: ", ")))
        ON CONFLICT (day, domain) DO UPDATE SET
            delivered = delivered + excluded.delivered, bounced = bounced + excluded.bounced,
            expired = expired + excluded.expired, suppressed = suppressed + excluded.suppressed,
            \(Rollups.dColumns.map { "\($0) = \($0) + excluded.\($0)" }.joined(separator: ", "))
        """
    static let roleUpsert = """
        INSERT INTO role_daily (day, role, n) VALUES (?, ?, ?) ON CONFLICT (day, role) DO UPDATE SET n = n + excluded.n
        """

    func write(_ db: Database) throws {
        if !attempts.isEmpty {
            let stmt = try db.cachedStatement(sql: RollupBatch.attemptUpsert)
            for (k, v) in attempts {
                var upsert = DirectStatement(stmt)
                upsert.bind(k.day)
                upsert.bind(k.domain)
                upsert.bind(k.host)
                upsert.bind(v.attempts)
                upsert.bind(v.delivered)
                upsert.bind(v.deferred)
                upsert.bind(v.bounced)
                upsert.bind(v.tls)
                upsert.bind(v.ms)
                for n in v.histogram { upsert.bind(n) }
                try upsert.execute(db)
            }
        }
        if !deferrals.isEmpty {
            let stmt = try db.cachedStatement(sql: RollupBatch.deferralUpsert)
            for (k, n) in deferrals {
                var upsert = DirectStatement(stmt)
                upsert.bind(k.day)
                upsert.bind(k.domain)
                upsert.bind(k.reply)
                upsert.bind(n)
                try upsert.execute(db)
            }
        }
        if !finals.isEmpty {
            let stmt = try db.cachedStatement(sql: RollupBatch.finalUpsert)
            for (k, v) in finals {
                var upsert = DirectStatement(stmt)
                upsert.bind(k.day)
                upsert.bind(k.domain)
                upsert.bind(v.delivered)
                upsert.bind(v.bounced)
                upsert.bind(v.expired)
                upsert.bind(v.suppressed)
                for n in v.histogram { upsert.bind(n) }
                try upsert.execute(db)
            }
        }
        if !roles.isEmpty {
            let stmt = try db.cachedStatement(sql: RollupBatch.roleUpsert)
            for (k, n) in roles {
                var upsert = DirectStatement(stmt)
                upsert.bind(k.day)
                upsert.bind(k.role)
                upsert.bind(n)
                try upsert.execute(db)
            }
        }
    }
}

extension Store {
    /// Recomputes the rollups from the raw rows (after an upgrade, or if in doubt).
    public func rebuildRollups() async throws {
        _ = try await write { db in
            for sql in Rollups.rebuildStatements { try db.execute(sql: sql) }
            return 0
        }
    }
}
