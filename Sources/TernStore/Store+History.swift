// Delivery history for `tern history`: each matching recipient with its
// timeline (received, attempts, events). Statistics are in Store+Stats.swift.

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
    /// The Message-ID header field's id, without the angle brackets.
    public var headerMessageID: String?
    public var state: RecipientState?
    /// On `received_at`.
    public var window: TimeWindow?
    public var limit = 100
    /// Rows skipped first (pages of the API).
    public var offset = 0
    public init() {}
}

/// What a timeline item is: an attempt (from `attempt`) or an event.
public enum TimelineKind: Sendable, Equatable, CustomStringConvertible {
    case attempt
    case event(EventKind)

    public var description: String {
        switch self {
        case .attempt: return "attempt"
        case .event(let kind): return kind.rawValue
        }
    }
}

/// One step in a recipient's life.
public struct TimelineItem: Sendable, Equatable {
    public var at: Int64
    /// An attempt, or an event (`received`, `suppressed`, `expired`, `held`, …).
    public var kind: TimelineKind
    public var mxHost: String?
    public var mxAddress: String?
    public var tls: String?
    public var code: Int?
    public var enhanced: String?
    public var text: String?
    /// For attempts: delivered, deferred or bounced. For events: their JSON detail.
    public var outcome: String?
    public var seconds: Double?
    /// For failed attempts: the bounce category (`attempt.category`).
    public var category: String? = nil
}

public struct HistoryEntry: Sendable {
    public var queueID: String
    public var sender: String
    public var recipient: String
    public var domain: String
    public var state: RecipientState
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
    /// SPF, DKIM and DMARC as intake found them (nil: not checked).
    public var authentication: MessageAuthentication? = nil
    public var timeline: [TimelineItem] = []
}

/// The verdicts on a message row (migration 0010).
public struct MessageAuthentication: Sendable, Equatable {
    public var spf: String
    public var dkim: String
    public var dmarc: String
    public var disposition: String

    public var summary: String { "spf=\(spf) dkim=\(dkim) dmarc=\(dmarc)" + (disposition == "none" ? "" : " (\(disposition))") }
}

extension Store {
    // MARK: - History

    public func history(_ f: HistoryFilter) throws -> [HistoryEntry] {
        var conditions: [String] = []
        var args: [String: (any DatabaseValueConvertible)?] = ["limit": f.limit, "offset": f.offset]
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
        if let mid = f.headerMessageID {
            // A scan of the covering index (received_at, header_message_id),
            // never of the table and its bodies (migration 7).
            conditions.append("m.id IN (SELECT id FROM message WHERE header_message_id = :mid)")
            args["mid"] = mid
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
                   r.last_code, r.last_enhanced, r.last_text, m.client_address, r.id, m.id,
                   m.auth_spf, m.auth_dkim, m.auth_dmarc, m.auth_disposition
              FROM recipient r JOIN message m ON m.id = r.message_id
             \(conditions.isEmpty ? "" : "WHERE " + conditions.joined(separator: " AND "))
             ORDER BY m.received_at DESC, r.id DESC LIMIT :limit OFFSET :offset
            """
        return try read { db in
            var entries = try Row.fetchAll(db, sql: sql, arguments: StatementArguments(args)).map { row in
                HistoryEntry(queueID: row[0], sender: row[1], recipient: row[2], domain: row[3], state: row[4], attempts: row[5],
                             receivedAt: row[6], finalAt: row[7], finalCode: row[8], finalEnhanced: row[9], finalText: row[10],
                             clientAddress: row[11], recipientID: row[12], messageID: row[13],
                             authentication: (row[14] as String?).map { spf in
                                 MessageAuthentication(spf: spf, dkim: row[15] ?? "", dmarc: row[16] ?? "", disposition: row[17] ?? "")
                             })
            }
            let attempts = try db.cachedStatement(sql: """
                SELECT started_at, ended_at, mx_host, mx_address, tls, code, enhanced, text, outcome, category
                  FROM attempt WHERE recipient_id = ? ORDER BY started_at, id
                """)
            let events = try db.cachedStatement(sql: """
                SELECT at, kind, detail FROM event
                 WHERE recipient_id = ? AND NOT \([EventKind.delivered, .deferred, .bounced].orChain("kind")) ORDER BY at, id
                """)
            for i in entries.indices {
                let e = entries[i]
                var timeline = [TimelineItem(at: e.receivedAt, kind: .event(.received), mxAddress: e.clientAddress, text: e.authentication?.summary)]
                for a in try Row.fetchAll(attempts, arguments: [e.recipientID]) {
                    let started: Int64 = a[0], ended: Int64 = a[1]
                    timeline.append(TimelineItem(at: started, kind: .attempt, mxHost: a[2], mxAddress: a[3], tls: a[4], code: a[5],
                                                 enhanced: a[6], text: a[7], outcome: a[8] as String?, seconds: Double(ended - started) / 1000,
                                                 category: a[9]))
                }
                for ev in try Row.fetchAll(events, arguments: [e.recipientID]) {
                    timeline.append(TimelineItem(at: ev[0], kind: .event(ev[1]), outcome: ev[2]))
                }
                timeline.sort { $0.at < $1.at }
                entries[i].timeline = timeline
                if let last = timeline.last(where: { $0.kind == .attempt }) {
                    entries[i].mxHost = last.mxHost
                    entries[i].tls = last.tls
                }
                if e.state == .delivered, let f = e.finalAt { entries[i].secondsToDeliver = Double(f - e.receivedAt) / 1000 }
            }
            return entries
        }
    }
}

func rounded(_ x: Double) -> Double { (x * 10_000).rounded() / 10_000 }

/// Failed attempts of one bounce category in a window.
public struct CategoryCount: Sendable, Equatable {
    public var category: String
    public var deferred: Int
    public var bounced: Int
}

extension Store {
    /// Failed attempts started in the window, by category (most first).
    public func categoryCounts(_ w: TimeWindow) throws -> [CategoryCount] {
        try read { db in
            try Row.fetchAll(db, sql: """
                SELECT coalesce(category, 'other'),
                       sum(outcome = '\(AttemptOutcome.deferred.rawValue)'), sum(outcome = '\(AttemptOutcome.bounced.rawValue)')
                  FROM attempt WHERE started_at >= ? AND started_at < ? AND outcome <> '\(AttemptOutcome.delivered.rawValue)'
                 GROUP BY 1 ORDER BY count(*) DESC, 1
                """, arguments: [w.since, w.until]).map { CategoryCount(category: $0[0], deferred: $0[1], bounced: $0[2]) }
        }
    }
}

/// A failed attempt, for the dashboard's "last failures".
public struct RecentFailure: Sendable, Equatable {
    public var at: Int64
    public var queueID: String
    public var recipient: String
    public var outcome: String
    public var code: Int?
    public var enhanced: String?
    public var text: String?
    public var mxHost: String?
    public var category: String?
}

extension Store {
    /// The newest failed attempts (deferred or bounced) among the last
    /// `window` attempts: a bounded scan backwards from the newest.
    public func recentFailures(limit: Int = 20, window: Int = 20_000) throws -> [RecentFailure] {
        try read { db in
            try Row.fetchAll(db, sql: """
                SELECT a.started_at, m.queue_id, r.address, a.outcome, a.code, a.enhanced, a.text, a.mx_host, a.category
                  FROM attempt a JOIN recipient r ON r.id = a.recipient_id JOIN message m ON m.id = r.message_id
                 WHERE a.id > (SELECT coalesce(max(id), 0) FROM attempt) - ?2 AND a.outcome <> \(AttemptOutcome.delivered.sql)
                 ORDER BY a.id DESC LIMIT ?1
                """, arguments: [limit, window]).map { row in
                RecentFailure(at: row[0], queueID: row[1], recipient: row[2], outcome: row[3], code: row[4], enhanced: row[5], text: row[6],
                              mxHost: row[7], category: row[8])
            }
        }
    }
}
