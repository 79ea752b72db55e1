// Statistics for `tern stats routes|queue|recipients`: the windowed forms
// of the views in migration 0004 (a test checks that over the whole history
// they agree with the views). Every query is bounded by an index range where
// the window allows it; whole days come from the daily rollups.

import Foundation
import GRDB

public struct DomainStats: Sendable, Equatable {
    public var domain: String
    public var recipients = 0, delivered = 0, bounced = 0, expired = 0, suppressed = 0, waiting = 0
    public var deliveryRate: Double?
    public var attempts = 0
    public var deferralRate: Double?
    public var medianSeconds: Double?
    public var p95Seconds: Double?
    public var topDeferral: String?
    public var topDeferralCount: Int?
    /// MX hosts used in the window, most used first.
    public var mxHosts: [String] = []
}

public struct MXStats: Sendable, Equatable {
    public var host: String
    public var attempts: Int
    public var successRate: Double
    public var tlsShare: Double
    public var meanSessionSeconds: Double
    public var p95SessionSeconds: Double?
    public var lastError: String?
    public var lastErrorAt: Int64?
    public var domains: [String] = []
    public var consecutiveFailures: Int?
    public var coolingDownUntil: Int64?
}

public struct QueueShapeRow: Sendable, Equatable {
    public var domain: String
    public var total: Int
    /// Counts in the buckets 0-5m, 5-10m, 10-20m, 20-40m, 40-80m, 80-160m, 160m+.
    public var buckets: [Int]
    public static let bucketNames = ["0-5m", "5-10m", "10-20m", "20-40m", "40-80m", "80-160m", "160m+"]
}

public struct AddressCount: Sendable, Equatable {
    public var address: String
    public var count: Int
    public var lastReply: String?
    public var lastAt: Int64?
}

public struct RecipientAnalytics: Sendable {
    public var total = 0
    /// (domain, recipients, most used MX host)
    public var domains: [(domain: String, recipients: Int, mxHost: String?)] = []
    public var perDomain: [DomainStats] = []
    public var repeatedBounces: [AddressCount] = []
    /// (role local part, recipients)
    public var roleAccounts: [(role: String, recipients: Int)] = []
    public var suppressionCandidates: [AddressCount] = []
    /// Recipients received in the window that were suppressed.
    public var suppressedInWindow = 0
}

extension Store {
    // MARK: - Routes

    /// Per destination domain: recipient figures for recipients received in
    /// the window, attempt figures for attempts made in it. Whole days come
    /// from the daily rollups, the rest of the window from the raw rows.
    public func domainStats(_ w: TimeWindow, limit: Int = 50) throws -> [DomainStats] {
        try read { db in try Store.domainStats(w, limit: limit, db).rows }
    }

    /// Domains and MX hosts together, reading the attempts once (`tern stats routes`).
    public func routeStats(_ w: TimeWindow, now: Int64, limit: Int = 50) throws -> (domains: [DomainStats], hosts: [MXStats]) {
        try read { db in
            let attempts = try Store.attemptAggregates(WindowSplit(w), db)
            return (try Store.domainStats(w, limit: limit, attempts: attempts, db).rows,
                    try Store.mxStats(w, now: now, limit: limit, attempts: attempts, db))
        }
    }

    /// A window as whole days (rollups) and the raw ranges around them.
    struct WindowSplit {
        var days: (Int64, Int64)?
        var raw: [(Int64, Int64)]

        init(_ w: TimeWindow) {
            let day = Rollups.dayMillis
            func floorDiv(_ a: Int64, _ b: Int64) -> Int64 { a >= 0 ? a / b : -((-a + b - 1) / b) }
            let first = -floorDiv(-w.since, day), last = floorDiv(w.until, day)
            if first < last {
                days = (first, last)
                raw = [(w.since, first * day), (last * day, w.until)].filter { $0.0 < $0.1 }
            } else {
                days = nil
                raw = [(w.since, w.until)]
            }
        }

        /// `column` within the raw ranges (never empty: an impossible range stands in).
        func rawCondition(_ column: String) -> (String, StatementArguments) {
            let ranges = raw.isEmpty ? [(Int64(1), Int64(0))] : raw
            var args = StatementArguments()
            let text = ranges.enumerated().map { i, r -> String in
                _ = args.append(contentsOf: ["r\(i)s": r.0, "r\(i)e": r.1])
                return "(\(column) >= :r\(i)s AND \(column) < :r\(i)e)"
            }.joined(separator: " OR ")
            return ("(" + text + ")", args)
        }

        var dayArgs: StatementArguments { ["d0": days?.0 ?? 0, "d1": days?.1 ?? 0] }
        var dayMillisArgs: StatementArguments {
            ["m0": (days?.0 ?? 0) * Rollups.dayMillis, "m1": (days?.1 ?? 0) * Rollups.dayMillis]
        }
    }

    struct AttemptAggregate {
        var domain: String, host: String
        var attempts = 0, delivered = 0, deferred = 0, bounced = 0, withTLS = 0
        var sessionMillis: Int64 = 0
        var histogram = [Int](repeating: 0, count: Rollups.buckets)
    }

    /// Attempts made in the window per (domain, MX host).
    static func attemptAggregates(_ split: WindowSplit, _ db: Database) throws -> [AttemptAggregate] {
        var out: [String: AttemptAggregate] = [:]
        func add(_ row: Row, bucketColumn: Int?) {
            let key = (row[0] as String) + "\u{0}" + (row[1] as String)
            var a = out[key] ?? AttemptAggregate(domain: row[0], host: row[1])
            a.attempts += row[2] as Int; a.delivered += row[3] as Int; a.deferred += row[4] as Int
            a.bounced += row[5] as Int; a.withTLS += row[6] as Int; a.sessionMillis += row[7] as Int64
            if let b = bucketColumn {
                a.histogram[row[b] as Int] += row[2] as Int
            } else {
                for i in 0..<Rollups.buckets { a.histogram[i] += row[8 + i] as Int }
            }
            out[key] = a
        }
        if split.days != nil {
            let sums = Rollups.sColumns.map { "sum(\($0))" }.joined(separator: ", ")
            for row in try Row.fetchAll(db, sql: """
                SELECT domain, mx_host, sum(attempts), sum(delivered), sum(deferred), sum(bounced), sum(with_tls), sum(session_ms), \(sums)
                  FROM attempt_daily WHERE day >= :d0 AND day < :d1 GROUP BY domain, mx_host
                """, arguments: split.dayArgs) { add(row, bucketColumn: nil) }
        }
        let (cond, args) = split.rawCondition("a.started_at")
        for row in try Row.fetchAll(db, sql: """
            SELECT r.domain, coalesce(a.mx_host, ''), count(*), sum(a.outcome = \(AttemptOutcome.delivered.sql)), sum(a.outcome = \(AttemptOutcome.deferred.sql)),
                   sum(a.outcome = \(AttemptOutcome.bounced.sql)), sum(a.tls IS NOT NULL), sum(a.ended_at - a.started_at),
                   \(Rollups.bucketSQL("a.ended_at - a.started_at", Rollups.sessionBounds)) AS bucket
              FROM attempt a JOIN recipient r ON r.id = a.recipient_id WHERE \(cond) GROUP BY 1, 2, bucket
            """, arguments: args) { add(row, bucketColumn: 8) }
        return Array(out.values)
    }

    static func domainStats(_ w: TimeWindow, limit: Int, attempts: [AttemptAggregate]? = nil,
                            _ db: Database) throws -> (rows: [DomainStats], total: Int, suppressed: Int) {
        let split = WindowSplit(w)
        var stats: [String: DomainStats] = [:]
        var histograms: [String: [Int]] = [:]
        func with(_ domain: String, _ change: (inout DomainStats) -> Void) {
            var s = stats[domain] ?? DomainStats(domain: domain)
            change(&s)
            stats[domain] = s
        }
        let live = StateSQL.live
        if split.days != nil {
            // Final recipients of the whole days, from the rollup; waiting ones from the live index.
            let sums = Rollups.dColumns.map { "sum(\($0))" }.joined(separator: ", ")
            for row in try Row.fetchAll(db, sql: """
                SELECT domain, sum(delivered), sum(bounced), sum(expired), sum(suppressed), \(sums)
                  FROM recipient_daily WHERE day >= :d0 AND day < :d1 GROUP BY domain
                """, arguments: split.dayArgs) {
                with(row[0]) { s in
                    s.delivered += row[1]; s.bounced += row[2]; s.expired += row[3]; s.suppressed += row[4]
                }
                var h = histograms[row[0], default: [Int](repeating: 0, count: Rollups.buckets)]
                for i in 0..<Rollups.buckets { h[i] += row[5 + i] as Int }
                histograms[row[0]] = h
            }
            for row in try Row.fetchAll(db, sql: """
                SELECT domain, count(*) FROM recipient -- "+created_at": read the small live index, not every recipient of the days
                 WHERE \(live) AND +created_at >= :m0 AND +created_at < :m1 GROUP BY domain
                """, arguments: split.dayMillisArgs) {
                with(row[0]) { s in s.waiting += row[1] }
            }
        }
        let (cond, args) = split.rawCondition("created_at")
        let deliverBucket = Rollups.bucketSQL("(final_at - created_at)", Rollups.deliverBoundsMillis)
        for row in try Row.fetchAll(db, sql: """
            SELECT domain, state, CASE WHEN state = \(RecipientState.delivered.sql) THEN \(deliverBucket) END, count(*)
              FROM recipient WHERE \(cond) GROUP BY 1, 2, 3
            """, arguments: args) {
            let n: Int = row[3]
            let state: RecipientState = row[1]
            with(row[0]) { s in
                switch state {
                case .delivered: s.delivered += n
                case .bounced: s.bounced += n
                case .expired: s.expired += n
                case .suppressed: s.suppressed += n
                case .queued, .inflight, .deferred, .held: s.waiting += n
                }
            }
            if let b: Int = row[2] {
                var h = histograms[row[0], default: [Int](repeating: 0, count: Rollups.buckets)]
                h[b] += n
                histograms[row[0]] = h
            }
        }
        var deferrals: [String: Int] = [:]
        var hostCounts: [String: [String: Int]] = [:]
        for a in try attempts ?? attemptAggregates(split, db) {
            with(a.domain) { s in s.attempts += a.attempts }
            deferrals[a.domain, default: 0] += a.deferred
            if !a.host.isEmpty { hostCounts[a.domain, default: [:]][a.host, default: 0] += a.attempts }
        }
        var replies: [String: [String: Int]] = [:]
        if split.days != nil {
            for row in try Row.fetchAll(db, sql: """
                SELECT domain, reply, sum(n) FROM deferral_daily WHERE day >= :d0 AND day < :d1 GROUP BY 1, 2
                """, arguments: split.dayArgs) {
                replies[row[0], default: [:]][row[1], default: 0] += row[2] as Int
            }
        }
        let (acond, aargs) = split.rawCondition("a.started_at")
        for row in try Row.fetchAll(db, sql: """
            SELECT r.domain, \(Rollups.replySQL("a.")), count(*) FROM attempt a JOIN recipient r ON r.id = a.recipient_id
             WHERE a.outcome = \(AttemptOutcome.deferred.sql) AND \(acond) GROUP BY 1, 2
            """, arguments: aargs) {
            replies[row[0], default: [:]][row[1], default: 0] += row[2] as Int
        }
        var total = 0, suppressed = 0
        for d in Array(stats.keys) {
            var s = stats[d]!
            s.recipients = s.delivered + s.bounced + s.expired + s.suppressed + s.waiting
            total += s.recipients
            suppressed += s.suppressed
            let final = s.delivered + s.bounced + s.expired
            s.deliveryRate = final > 0 ? rounded(Double(s.delivered) / Double(final)) : nil
            if s.attempts > 0 { s.deferralRate = rounded(Double(deferrals[d, default: 0]) / Double(s.attempts)) }
            if let h = histograms[d] {
                s.medianSeconds = Rollups.median(h, Rollups.deliverBounds, scale: 1)
                s.p95Seconds = Rollups.p95(h, Rollups.deliverBounds, scale: 1)
            }
            if let top = replies[d]?.max(by: { ($0.value, $1.key) < ($1.value, $0.key) }) {
                s.topDeferral = top.key
                s.topDeferralCount = top.value
            }
            s.mxHosts = (hostCounts[d] ?? [:]).sorted { ($0.value, $1.key) > ($1.value, $0.key) }.map(\.key)
            stats[d] = s
        }
        let rows = stats.values.sorted { ($0.recipients, $0.attempts, $1.domain) > ($1.recipients, $1.attempts, $0.domain) }
        return (Array(rows.prefix(limit)), total, suppressed)
    }

    /// Per MX host, for attempts started in the window (the windowed `mx_stats` view).
    public func mxStats(_ w: TimeWindow, now: Int64, limit: Int = 50) throws -> [MXStats] {
        try read { db in try Store.mxStats(w, now: now, limit: limit, attempts: nil, db) }
    }

    static func mxStats(_ w: TimeWindow, now: Int64, limit: Int, attempts: [AttemptAggregate]?, _ db: Database) throws -> [MXStats] {
        var hosts: [String: Store.AttemptAggregate] = [:]
        var domains: [String: [(String, Int)]] = [:]
        for a in try attempts ?? Store.attemptAggregates(WindowSplit(w), db) where !a.host.isEmpty {
            var h = hosts[a.host] ?? Store.AttemptAggregate(domain: "", host: a.host)
            h.attempts += a.attempts; h.delivered += a.delivered; h.withTLS += a.withTLS; h.sessionMillis += a.sessionMillis
            for i in 0..<Rollups.buckets { h.histogram[i] += a.histogram[i] }
            hosts[a.host] = h
            domains[a.host, default: []].append((a.domain, a.attempts))
        }
        let top = hosts.values.sorted { ($0.attempts, $1.host) > ($1.attempts, $0.host) }.prefix(limit)
        let lastError = try db.cachedStatement(sql: """
            SELECT \(Rollups.replySQL("")), started_at FROM attempt
             WHERE mx_host = :host AND outcome <> \(AttemptOutcome.delivered.sql) AND started_at >= :since AND started_at < :until
             ORDER BY started_at DESC, id DESC LIMIT 1
            """)
        let health = try db.cachedStatement(sql: "SELECT failures, cooldown_until FROM mx_health WHERE host = ?")
        return try top.map { h in
            var m = MXStats(host: h.host, attempts: h.attempts, successRate: rounded(Double(h.delivered) / Double(h.attempts)),
                            tlsShare: rounded(Double(h.withTLS) / Double(h.attempts)),
                            meanSessionSeconds: (Double(h.sessionMillis) / Double(h.attempts)).rounded() / 1000,
                            p95SessionSeconds: Rollups.p95(h.histogram, Rollups.sessionBounds, scale: 0.001))
            m.domains = (domains[h.host] ?? []).sorted { ($0.1, $1.0) > ($1.1, $0.0) }.map(\.0)
            if let e = try Row.fetchOne(lastError, arguments: ["host": h.host, "since": w.since, "until": w.until]) {
                m.lastError = e[0]
                m.lastErrorAt = e[1]
            }
            if let row = try Row.fetchOne(health, arguments: [h.host]) {
                m.consecutiveFailures = row[0]
                let until: Int64? = row[1]
                m.coolingDownUntil = until.flatMap { $0 > now ? $0 : nil }
            }
            return m
        }
    }

    /// Waiting recipients per domain by age at `now` (the `queue_shape` view).
    public func queueShape(now: Int64, limit: Int = 100) throws -> [QueueShapeRow] {
        try read { db in
            try Row.fetchAll(db, sql: """
                SELECT domain, count(*),
                       sum(age < 5), sum(age >= 5 AND age < 10), sum(age >= 10 AND age < 20), sum(age >= 20 AND age < 40),
                       sum(age >= 40 AND age < 80), sum(age >= 80 AND age < 160), sum(age >= 160)
                  FROM (SELECT domain, (:now - created_at) / 60000.0 AS age FROM recipient
                         WHERE \(StateSQL.live))
                 GROUP BY domain ORDER BY count(*) DESC, domain LIMIT :limit
                """, arguments: ["now": now, "limit": limit]).map { row in
                QueueShapeRow(domain: row[0], total: row[1], buckets: (2...8).map { row[$0] })
            }
        }
    }

    // MARK: - Recipient-list analytics

    /// Recipients to role accounts: final ones of whole days from the rollup, the rest raw.
    static func roleCounts(_ split: WindowSplit, _ db: Database) throws -> [(role: String, recipients: Int)] {
        var counts: [String: Int] = [:]
        let roles = Rollups.roleList, local = Rollups.localPartSQL
        if split.days != nil {
            for row in try Row.fetchAll(db, sql: "SELECT role, sum(n) FROM role_daily WHERE day >= :d0 AND day < :d1 GROUP BY role",
                                        arguments: split.dayArgs) { counts[row[0], default: 0] += row[1] as Int }
            for row in try Row.fetchAll(db, sql: """
                SELECT \(local), count(*) FROM recipient
                 WHERE \(StateSQL.live) AND +created_at >= :m0 AND +created_at < :m1 -- "+": the live index, not every recipient
                   AND \(local) IN (\(roles)) GROUP BY 1
                """, arguments: split.dayMillisArgs) { counts[row[0], default: 0] += row[1] as Int }
        }
        let (cond, args) = split.rawCondition("created_at")
        for row in try Row.fetchAll(db, sql: """
            SELECT \(local), count(*) FROM recipient WHERE \(cond) AND \(local) IN (\(roles)) GROUP BY 1
            """, arguments: args) { counts[row[0], default: 0] += row[1] as Int }
        return counts.filter { $0.value > 0 }.map { ($0.key, $0.value) }.sorted { ($0.1, $1.0) > ($1.1, $0.0) }
    }

    public static let roleAccounts = [
        "abuse", "admin", "administrator", "billing", "contact", "help", "hostmaster", "hr", "info", "marketing",
        "no-reply", "noc", "noreply", "office", "postmaster", "root", "sales", "security", "support", "webmaster",
    ]

    /// `nonexistent`: the enhanced codes that make one bounce enough for a
    /// suppression candidate (the caller passes the protocol module's table).
    public func recipientAnalytics(_ w: TimeWindow, top: Int = 20, nonexistent: [String]) throws -> RecipientAnalytics {
        try read { db in
            var a = RecipientAnalytics()
            let args: StatementArguments = ["since": w.since, "until": w.until, "top": top]
            (a.perDomain, a.total, a.suppressedInWindow) = try Store.domainStats(w, limit: top, db)
            a.roleAccounts = try Store.roleCounts(WindowSplit(w), db)
            a.domains = a.perDomain.map { ($0.domain, $0.recipients, $0.mxHosts.first) }
            // Final outcomes in the window (recipient_final_at range).
            a.repeatedBounces = try Row.fetchAll(db, sql: """
                SELECT lower(address), count(*), max(final_at),
                       -- with one max(), SQLite takes bare columns from that row: the last bounce's reply
                       coalesce(last_code || ' ', '') || coalesce(last_enhanced || ' ', '') || coalesce(last_text, '')
                  FROM recipient r
                 WHERE \(StateSQL.failed) AND r.state = \(RecipientState.bounced.sql) -- the first term selects the recipient_failed index
                   AND r.final_at >= :since AND r.final_at < :until
                 GROUP BY lower(address) HAVING count(*) >= 2 ORDER BY count(*) DESC, lower(address) LIMIT :top
                """, arguments: args).map { AddressCount(address: $0[0], count: $0[1], lastReply: $0[3], lastAt: $0[2]) }
            // Suppression candidates: bounced or expired twice or more, or one "no such user", and not suppressed yet.
            a.suppressionCandidates = try Row.fetchAll(db, sql: """
                SELECT lower(address), count(*), max(final_at),
                       coalesce(last_code || ' ', '') || coalesce(last_enhanced || ' ', '') || coalesce(last_text, '')
                  FROM recipient r
                 WHERE r.final_at >= :since AND r.final_at < :until AND \(StateSQL.failed)
                   AND NOT EXISTS (SELECT 1 FROM suppression s WHERE s.address = r.address)
                 GROUP BY lower(address)
                HAVING count(*) >= 2 OR sum(r.last_enhanced IN (SELECT value FROM json_each(:nonexistent))) > 0
                 ORDER BY count(*) DESC, lower(address) LIMIT :top
                """, arguments: args + ["nonexistent": "[" + nonexistent.map { "\"\($0)\"" }.joined(separator: ",") + "]"]).map { AddressCount(address: $0[0], count: $0[1], lastReply: $0[3], lastAt: $0[2]) }
            return a
        }
    }
}
