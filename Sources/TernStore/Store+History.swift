// Delivery history and statistics for `tern history` and `tern stats`: the
// windowed forms of the views in migration 0004 (a test checks that over
// the whole history they agree with the views). Every query is bounded by
// an index range where the window allows it.

import Foundation
import GRDB

/// [since, until) in Unix milliseconds.
public struct TimeWindow: Sendable, Equatable {
    public var since: Int64
    public var until: Int64
    public init(since: Int64, until: Int64) {
        self.since = since
        self.until = until
    }
    public static let all = TimeWindow(since: Int64.min / 2, until: Int64.max / 2)
}

public struct HistoryFilter: Sendable {
    public var recipient: String?
    public var sender: String?
    public var domain: String?
    public var queueID: String?
    public var state: String?
    /// On `received_at`.
    public var window: TimeWindow?
    public var limit = 100
    public init() {}
}

/// One step in a recipient's life.
public struct TimelineItem: Sendable, Equatable {
    public var at: Int64
    /// `received`, `attempt`, or an event kind (`suppressed`, `expired`, `held`, …).
    public var kind: String
    public var mxHost: String?
    public var mxAddress: String?
    public var tls: String?
    public var code: Int?
    public var enhanced: String?
    public var text: String?
    /// For attempts: delivered, deferred or bounced. For events: their JSON detail.
    public var outcome: String?
    public var seconds: Double?
}

public struct HistoryEntry: Sendable {
    public var queueID: String
    public var sender: String
    public var recipient: String
    public var domain: String
    public var state: String
    public var attempts: Int
    public var receivedAt: Int64
    public var finalAt: Int64?
    public var finalCode: Int?
    public var finalEnhanced: String?
    public var finalText: String?
    public var mxHost: String?
    public var tls: String?
    public var secondsToDeliver: Double?
    public var clientAddress: String?
    public var recipientID: Int64
    public var messageID: Int64
    public var timeline: [TimelineItem] = []
}

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
    public var suppressedInWindow = 0
}

extension Store {
    // MARK: - History

    public func history(_ f: HistoryFilter) throws -> [HistoryEntry] {
        var conditions: [String] = []
        var args: [String: (any DatabaseValueConvertible)?] = ["limit": f.limit]
        // Each condition alone can use its index; none is written as `:x IS NULL OR …`.
        if let r = f.recipient {
            conditions.append("r.address IN (:rcpt, lower(:rcpt))")
            args["rcpt"] = r
        }
        if let s = f.sender {
            conditions.append("m.mail_from IN (:from, lower(:from))")
            args["from"] = s == "<>" ? "" : s
        }
        if let d = f.domain {
            conditions.append("r.domain = lower(:domain)")
            args["domain"] = d
        }
        if let q = f.queueID {
            conditions.append("m.queue_id = :qid")
            args["qid"] = q
        }
        if let st = f.state {
            conditions.append("r.state = :state")
            args["state"] = st
        }
        if let w = f.window {
            conditions.append("m.received_at >= :since AND m.received_at < :until")
            args["since"] = w.since
            args["until"] = w.until
        }
        let sql = """
            SELECT m.queue_id, m.mail_from, r.address, r.domain, r.state, r.attempts, m.received_at, r.final_at,
                   r.last_code, r.last_enhanced, r.last_text, m.client_address, r.id, m.id
              FROM recipient r JOIN message m ON m.id = r.message_id
             \(conditions.isEmpty ? "" : "WHERE " + conditions.joined(separator: " AND "))
             ORDER BY m.received_at DESC, r.id DESC LIMIT :limit
            """
        return try read { db in
            var entries = try Row.fetchAll(db, sql: sql, arguments: StatementArguments(args)).map { row in
                HistoryEntry(queueID: row[0], sender: row[1], recipient: row[2], domain: row[3], state: row[4], attempts: row[5],
                             receivedAt: row[6], finalAt: row[7], finalCode: row[8], finalEnhanced: row[9], finalText: row[10],
                             clientAddress: row[11], recipientID: row[12], messageID: row[13])
            }
            let attempts = try db.cachedStatement(sql: """
                SELECT started_at, ended_at, mx_host, mx_address, tls, code, enhanced, text, outcome
                  FROM attempt WHERE recipient_id = ? ORDER BY started_at, id
                """)
            let events = try db.cachedStatement(sql: """
                SELECT at, kind, detail FROM event
                 WHERE recipient_id = ? AND kind NOT IN ('delivered', 'deferred', 'bounced') ORDER BY at, id
                """)
            for i in entries.indices {
                let e = entries[i]
                var timeline = [TimelineItem(at: e.receivedAt, kind: "received", mxAddress: e.clientAddress)]
                for a in try Row.fetchAll(attempts, arguments: [e.recipientID]) {
                    let started: Int64 = a[0], ended: Int64 = a[1]
                    timeline.append(TimelineItem(at: started, kind: "attempt", mxHost: a[2], mxAddress: a[3], tls: a[4], code: a[5],
                                                 enhanced: a[6], text: a[7], outcome: a[8], seconds: Double(ended - started) / 1000))
                }
                for ev in try Row.fetchAll(events, arguments: [e.recipientID]) {
                    timeline.append(TimelineItem(at: ev[0], kind: ev[1], outcome: ev[2]))
                }
                timeline.sort { $0.at < $1.at }
                entries[i].timeline = timeline
                if let last = timeline.last(where: { $0.kind == "attempt" }) {
                    entries[i].mxHost = last.mxHost
                    entries[i].tls = last.tls
                }
                if e.state == "delivered", let f = e.finalAt { entries[i].secondsToDeliver = Double(f - e.receivedAt) / 1000 }
            }
            return entries
        }
    }

    // MARK: - Routes

    /// Per destination domain, for recipients received in the window (the
    /// windowed `domain_stats` view), with the MX hosts they went to.
    public func domainStats(_ w: TimeWindow, limit: Int = 50) throws -> [DomainStats] {
        try read { db in try Store.domainStats(w, limit: limit, db) }
    }

    static func domainStats(_ w: TimeWindow, limit: Int, _ db: Database) throws -> [DomainStats] {
        let args: StatementArguments = ["since": w.since, "until": w.until, "limit": limit]
        var stats: [String: DomainStats] = [:]
        var order: [String] = []
        // Recipients by state (message_received_at range, then recipient_message).
        for row in try Row.fetchAll(db, sql: """
            SELECT r.domain, count(*), sum(r.state = 'delivered'), sum(r.state = 'bounced'), sum(r.state = 'expired'),
                   sum(r.state = 'suppressed'), sum(r.state IN ('queued', 'deferred', 'inflight', 'held'))
              FROM message m JOIN recipient r ON r.message_id = m.id
             WHERE m.received_at >= :since AND m.received_at < :until
             GROUP BY r.domain ORDER BY count(*) DESC, r.domain LIMIT :limit
            """, arguments: args) {
            var s = DomainStats(domain: row[0])
            (s.recipients, s.delivered, s.bounced, s.expired, s.suppressed, s.waiting) = (row[1], row[2], row[3], row[4], row[5], row[6])
            let final = s.delivered + s.bounced + s.expired
            s.deliveryRate = final > 0 ? rounded(Double(s.delivered) / Double(final)) : nil
            stats[s.domain] = s
            order.append(s.domain)
        }
        guard !order.isEmpty else { return [] }
        // Attempts of those recipients, their MX hosts, deferral replies, and time to deliver.
        var deferralReplies: [String: [String: Int]] = [:]
        var deferrals: [String: Int] = [:]
        var hostCounts: [String: [String: Int]] = [:]
        for row in try Row.fetchAll(db, sql: """
            SELECT r.domain, a.outcome, a.mx_host,
                   CASE WHEN a.outcome = 'deferred'
                        THEN coalesce(a.code || ' ', '') || coalesce(a.enhanced || ' ', '') || coalesce(a.text, '') END,
                   count(*)
              FROM message m JOIN recipient r ON r.message_id = m.id JOIN attempt a ON a.recipient_id = r.id
             WHERE m.received_at >= :since AND m.received_at < :until
             GROUP BY 1, 2, 3, 4
            """, arguments: args) {
            let domain: String = row[0]
            guard stats[domain] != nil else { continue }
            let n: Int = row[4]
            stats[domain]!.attempts += n
            if (row[1] as String) == "deferred" {
                deferrals[domain, default: 0] += n
                if let reply: String = row[3] { deferralReplies[domain, default: [:]][reply, default: 0] += n }
            }
            if let host: String = row[2] { hostCounts[domain, default: [:]][host, default: 0] += n }
        }
        var times: [String: [Double]] = [:]
        for row in try Row.fetchAll(db, sql: """
            SELECT r.domain, (r.final_at - m.received_at) / 1000.0 FROM message m JOIN recipient r ON r.message_id = m.id
             WHERE m.received_at >= :since AND m.received_at < :until AND r.state = 'delivered'
            """, arguments: args) {
            let d: String = row[0]
            if stats[d] != nil { times[d, default: []].append(row[1]) }
        }
        for d in order {
            var s = stats[d]!
            if s.attempts > 0 { s.deferralRate = rounded(Double(deferrals[d, default: 0]) / Double(s.attempts)) }
            if var t = times[d], !t.isEmpty {
                t.sort()
                s.medianSeconds = t[(t.count + 1) / 2 - 1]
                s.p95Seconds = t[(t.count * 95 + 99) / 100 - 1]
            }
            if let top = deferralReplies[d]?.max(by: { ($0.value, $1.key) < ($1.value, $0.key) }) {
                s.topDeferral = top.key
                s.topDeferralCount = top.value
            }
            s.mxHosts = (hostCounts[d] ?? [:]).sorted { ($0.value, $1.key) > ($1.value, $0.key) }.map(\.key)
            stats[d] = s
        }
        return order.map { stats[$0]! }
    }

    /// Per MX host, for attempts started in the window (the windowed `mx_stats` view).
    public func mxStats(_ w: TimeWindow, now: Int64, limit: Int = 50) throws -> [MXStats] {
        try read { db in
            let args: StatementArguments = ["since": w.since, "until": w.until, "limit": limit]
            var out: [MXStats] = []
            var index: [String: Int] = [:]
            for row in try Row.fetchAll(db, sql: """
                SELECT mx_host, count(*), 1.0 * sum(outcome = 'delivered') / count(*), 1.0 * sum(tls IS NOT NULL) / count(*),
                       avg((ended_at - started_at) / 1000.0)
                  FROM attempt WHERE started_at >= :since AND started_at < :until AND mx_host IS NOT NULL
                 GROUP BY mx_host ORDER BY count(*) DESC, mx_host LIMIT :limit
                """, arguments: args) {
                index[row[0]] = out.count
                out.append(MXStats(host: row[0], attempts: row[1], successRate: rounded(row[2]), tlsShare: rounded(row[3]),
                                   meanSessionSeconds: (1000 * (row[4] as Double)).rounded() / 1000))
            }
            var sessions: [String: [Double]] = [:]
            for row in try Row.fetchAll(db, sql: """
                SELECT a.mx_host, (a.ended_at - a.started_at) / 1000.0, a.outcome, a.started_at,
                       coalesce(a.code || ' ', '') || coalesce(a.enhanced || ' ', '') || coalesce(a.text, ''), r.domain
                  FROM attempt a JOIN recipient r ON r.id = a.recipient_id
                 WHERE a.started_at >= :since AND a.started_at < :until AND a.mx_host IS NOT NULL
                 ORDER BY a.started_at, a.id
                """, arguments: args) {
                guard let i = index[row[0]] else { continue }
                sessions[row[0], default: []].append(row[1])
                if (row[2] as String) != "delivered" {
                    out[i].lastError = row[4]
                    out[i].lastErrorAt = row[3]
                }
                let domain: String = row[5]
                if !out[i].domains.contains(domain) { out[i].domains.append(domain) }
            }
            for i in out.indices {
                if var t = sessions[out[i].host], !t.isEmpty {
                    t.sort()
                    out[i].p95SessionSeconds = t[(t.count * 95 + 99) / 100 - 1]
                }
            }
            let health = try db.cachedStatement(sql: "SELECT failures, cooldown_until FROM mx_health WHERE host = ?")
            for i in out.indices {
                if let h = try Row.fetchOne(health, arguments: [out[i].host]) {
                    out[i].consecutiveFailures = h[0]
                    let until: Int64? = h[1]
                    out[i].coolingDownUntil = until.flatMap { $0 > now ? $0 : nil }
                }
            }
            return out
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
                         WHERE state IN ('queued', 'deferred', 'inflight', 'held'))
                 GROUP BY domain ORDER BY count(*) DESC, domain LIMIT :limit
                """, arguments: ["now": now, "limit": limit]).map { row in
                QueueShapeRow(domain: row[0], total: row[1], buckets: (2...8).map { row[$0] })
            }
        }
    }

    // MARK: - Recipient-list analytics

    public static let roleAccounts = [
        "abuse", "admin", "administrator", "billing", "contact", "help", "hostmaster", "hr", "info", "marketing",
        "no-reply", "noc", "noreply", "office", "postmaster", "root", "sales", "security", "support", "webmaster",
    ]

    public func recipientAnalytics(_ w: TimeWindow, top: Int = 20) throws -> RecipientAnalytics {
        try read { db in
            var a = RecipientAnalytics()
            let args: StatementArguments = ["since": w.since, "until": w.until, "top": top]
            a.perDomain = try Store.domainStats(w, limit: top, db)
            // One pass over the window's recipients: total, roles.
            let roles = Store.roleAccounts.map { "'\($0)'" }.joined(separator: ",")
            for row in try Row.fetchAll(db, sql: """
                SELECT lower(substr(r.address, 1, instr(r.address, '@') - 1)) AS local, count(*)
                  FROM message m JOIN recipient r ON r.message_id = m.id
                 WHERE m.received_at >= :since AND m.received_at < :until
                 GROUP BY local IN (\(roles)), CASE WHEN local IN (\(roles)) THEN local END
                """, arguments: args) {
                let n: Int = row[1]
                a.total += n
                if let local: String = row[0], Store.roleAccounts.contains(local) { a.roleAccounts.append((local, n)) }
            }
            a.roleAccounts.sort { ($0.recipients, $1.role) > ($1.recipients, $0.role) }
            a.domains = a.perDomain.map { ($0.domain, $0.recipients, $0.mxHosts.first) }
            // Final outcomes in the window (recipient_final_at range).
            a.repeatedBounces = try Row.fetchAll(db, sql: """
                SELECT lower(address), count(*), max(final_at),
                       -- with one max(), SQLite takes bare columns from that row: the last bounce's reply
                       coalesce(last_code || ' ', '') || coalesce(last_enhanced || ' ', '') || coalesce(last_text, '')
                  FROM recipient r
                 WHERE r.final_at >= :since AND r.final_at < :until AND r.state = 'bounced'
                 GROUP BY lower(address) HAVING count(*) >= 2 ORDER BY count(*) DESC, lower(address) LIMIT :top
                """, arguments: args).map { AddressCount(address: $0[0], count: $0[1], lastReply: $0[3], lastAt: $0[2]) }
            // Suppression candidates: bounced or expired twice or more, or one "no such user", and not suppressed yet.
            a.suppressionCandidates = try Row.fetchAll(db, sql: """
                SELECT lower(address), count(*), max(final_at),
                       coalesce(last_code || ' ', '') || coalesce(last_enhanced || ' ', '') || coalesce(last_text, '')
                  FROM recipient r
                 WHERE r.final_at >= :since AND r.final_at < :until AND r.state IN ('bounced', 'expired')
                   AND NOT EXISTS (SELECT 1 FROM suppression s WHERE s.address = r.address)
                 GROUP BY lower(address)
                HAVING count(*) >= 2 OR sum(r.last_enhanced IN ('5.1.1', '5.1.2', '5.1.10')) > 0
                 ORDER BY count(*) DESC, lower(address) LIMIT :top
                """, arguments: args).map { AddressCount(address: $0[0], count: $0[1], lastReply: $0[3], lastAt: $0[2]) }
            a.suppressedInWindow = try Int.fetchOne(db, sql: """
                SELECT count(*) FROM recipient WHERE final_at >= :since AND final_at < :until AND state = 'suppressed'
                """, arguments: args) ?? 0
            return a
        }
    }
}

func rounded(_ x: Double) -> Double { (x * 10_000).rounded() / 10_000 }
