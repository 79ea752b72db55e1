// The delivery side of the store: find due destinations, claim recipients
// with a lease in one UPDATE … RETURNING (docs/architecture.md), and record what a
// delivery attempt did — attempt rows, recipient transitions, events and any
// DSN message — in one transaction (docs/architecture.md, promise 2). Called by the
// scheduler; the decisions (retry times, expiry, which DSN) are the
// scheduler's, the store only carries them out.

import Foundation
import GRDB

/// What the scheduler delivers as one: the recipients of one domain whose
/// messages were given one source pool (nil: the default pool). A
/// connection leaves from one source, so it carries one lane's mail.
public struct Lane: Hashable, Sendable, CustomStringConvertible {
    public var domain: String
    public var pool: String?

    public init(domain: String, pool: String? = nil) {
        self.domain = domain
        self.pool = pool
    }

    public var description: String { pool.map { "\(domain) (pool \($0))" } ?? domain }
}

/// A recipient handed to a worker, with its lease.
public struct ClaimedRecipient: Sendable, Equatable {
    public var id: Int64
    public var messageID: Int64
    public var address: String
    public var domain: String
    public var attempts: Int
    public var notify: String?
    public var orcpt: String?
    public var createdAt: Int64
    public var delayNotifiedAt: Int64?

    public init(id: Int64, messageID: Int64, address: String, domain: String, attempts: Int, notify: String?, orcpt: String?,
                createdAt: Int64, delayNotifiedAt: Int64?) {
        self.id = id
        self.messageID = messageID
        self.address = address
        self.domain = domain
        self.attempts = attempts
        self.notify = notify
        self.orcpt = orcpt
        self.createdAt = createdAt
        self.delayNotifiedAt = delayNotifiedAt
    }
}

/// A message read for delivery under a memory budget.
public enum MessageRead: Sendable {
    case found(StoredMessage)
    case missing
    /// The budget did not take the body's `bytes` now: the message without
    /// its body (`bodyRead` false).
    case noRoom(StoredMessage, bytes: Int)

    /// The message, with its body or without.
    public var message: StoredMessage? {
        switch self {
        case .found(let m), .noRoom(let m, _): m
        case .missing: nil
        }
    }
}

/// The message fields delivery needs.
public struct StoredMessage: Sendable {
    public var id: Int64
    public var queueID: String
    public var receivedAt: Int64
    public var mailFrom: String
    public var body: Data
    public var envID: String?
    public var ret: String?
    public var bodyType: String?
    public var smtputf8: Bool
    public var origin: String
    /// False: `body` is empty, the body was left in the store (recording
    /// an outcome needs none; a DSN reads it).
    public var bodyRead = true

    public init(id: Int64, queueID: String, receivedAt: Int64, mailFrom: String, body: Data, envID: String?, ret: String?,
                bodyType: String?, smtputf8: Bool, origin: String) {
        self.id = id
        self.queueID = queueID
        self.receivedAt = receivedAt
        self.mailFrom = mailFrom
        self.body = body
        self.envID = envID
        self.ret = ret
        self.bodyType = bodyType
        self.smtputf8 = smtputf8
        self.origin = origin
    }
}

/// The new state of one recipient after an attempt or an operator action.
public struct RecipientTransition: Sendable {
    public var recipientID: Int64
    public var messageID: Int64
    public var state: RecipientState
    public var nextAttemptAt: Int64?
    public var countsAsAttempt: Bool
    public var code: Int?
    public var enhanced: String?
    public var text: String?
    public var markDelayNotified: Bool
    /// The event written with it (`delivered`, `deferred`, `bounced`, …).
    public var event: EventKind
    public var eventDetail: String?
    /// The recipient's domain, address and created_at, when the producer has
    /// them (a claimed recipient): a final transition's rollups need them,
    /// and without them the transaction reads them back from the row.
    public var facts: (domain: String, address: String, createdAt: Int64)? = nil

    public init(recipientID: Int64, messageID: Int64, state: RecipientState, nextAttemptAt: Int64?, countsAsAttempt: Bool,
                code: Int?, enhanced: String?, text: String?, markDelayNotified: Bool = false, event: EventKind,
                eventDetail: String? = nil) {
        self.recipientID = recipientID
        self.messageID = messageID
        self.state = state
        self.nextAttemptAt = nextAttemptAt
        self.countsAsAttempt = countsAsAttempt
        self.code = code
        self.enhanced = enhanced
        self.text = text
        self.markDelayNotified = markDelayNotified
        self.event = event
        self.eventDetail = eventDetail
    }

    /// A transition of a claimed recipient, which carries its own facts.
    public init(_ r: ClaimedRecipient, state: RecipientState, nextAttemptAt: Int64?, countsAsAttempt: Bool,
                code: Int?, enhanced: String?, text: String?, markDelayNotified: Bool = false, event: EventKind,
                eventDetail: String? = nil) {
        self.init(recipientID: r.id, messageID: r.messageID, state: state, nextAttemptAt: nextAttemptAt,
                  countsAsAttempt: countsAsAttempt, code: code, enhanced: enhanced, text: text,
                  markDelayNotified: markDelayNotified, event: event, eventDetail: eventDetail)
        facts = (r.domain, r.address, r.createdAt)
    }
}

public struct NewAttempt: Sendable {
    public var recipientID: Int64
    public var startedAt: Int64
    public var endedAt: Int64
    public var mxHost: String?
    public var mxAddress: String?
    public var sourceAddress: String?
    /// The `[[source]]` the connection left from (nil: the kernel's choice).
    public var source: String? = nil
    public var tls: String?
    public var code: Int?
    public var enhanced: String?
    public var text: String?
    public var outcome: AttemptOutcome
    public var category: String?
    /// The recipient's domain, for the rollups (looked up when nil).
    public var domain: String?

    public init(recipientID: Int64, startedAt: Int64, endedAt: Int64, mxHost: String?, mxAddress: String?,
                sourceAddress: String? = nil, tls: String?, code: Int?, enhanced: String?, text: String?,
                outcome: AttemptOutcome, category: String?, domain: String? = nil) {
        self.domain = domain
        self.recipientID = recipientID
        self.startedAt = startedAt
        self.endedAt = endedAt
        self.mxHost = mxHost
        self.mxAddress = mxAddress
        self.sourceAddress = sourceAddress
        self.tls = tls
        self.code = code
        self.enhanced = enhanced
        self.text = text
        self.outcome = outcome
        self.category = category
    }
}

/// Everything one attempt (or operator action) changes, committed together.
public struct OutcomeBatch: Sendable {
    public var at: Int64
    /// The lease holder whose outcomes these are: each transition applies
    /// only while its recipient is still `inflight` under this owner (a
    /// fence). A transition that lost its lease is not applied: its event
    /// is `lease_lost`, and its suppression and DSN are dropped. nil for
    /// operator actions, which read and change rows in one transaction.
    public var leaseOwner: String? = nil
    public var attempts: [NewAttempt] = []
    public var transitions: [RecipientTransition] = []
    /// DSN messages (origin `dsn`), with `dsnFor` set to the reported
    /// message and `about` the recipients they report (dropped when every
    /// one of them lost its lease).
    public var dsns: [(message: NewMessage, dsnFor: Int64, about: [Int64])] = []
    /// Addresses a hard bounce put on the suppression list (kept if already there),
    /// with the recipient and message whose bounce did it.
    public var suppressions: [(entry: Suppression, recipientID: Int64, messageID: Int64)] = []

    public init(at: Int64) { self.at = at }
}

extension Store {
    /// Lanes (domain, pool) with claimable recipients: the earliest due time
    /// and how many are due now, counted up to `countCap` (the scheduler
    /// wants no more than its workers can take).
    ///
    /// The cost does not grow with the queue (issue 21): instead of a
    /// GROUP BY over every waiting row (170 ms a pass with a million waiting
    /// for a dead destination), the lanes are walked in the claim index, a
    /// seek each: the first row of a lane is its earliest, and the next
    /// lane starts after it. So a pass costs a few seeks per lane whether
    /// one recipient waits or a million. The database, not a copy in
    /// memory, stays the truth: `tern queue flush|release` from another
    /// process is seen at the next pass.
    public func dueDomains(now: Int64, countCap: Int = 1_000) throws -> [(lane: Lane, nextAttemptAt: Int64, dueCount: Int)] {
        try dueLanes().map { d in
            (d.lane, d.nextAttemptAt, d.nextAttemptAt <= now ? try dueCount(d.lane, now: now, cap: countCap) : 0)
        }
    }

    /// The lanes with claimable recipients and the earliest due time of
    /// each: a few seeks per lane in the claim index, in one statement (a
    /// statement per seek cost four times as much in bindings and rows).
    public func dueLanes() throws -> [(lane: Lane, nextAttemptAt: Int64)] {
        try readStatement { db in
            try Row.fetchAll(db.cachedStatement(sql: Store.dueLaneSQL.lanes)).map { (Lane(domain: $0[0], pool: $0[1]), $0[2]) }
        }
    }

    /// How many of the lane's claimable recipients are due at `now`,
    /// counted up to `cap` (a range of the claim index, no further).
    public func dueCount(_ lane: Lane, now: Int64, cap: Int) throws -> Int {
        guard cap > 0 else { return 0 }
        return try readStatement { db in
            try Int.fetchOne(db.cachedStatement(sql: Store.dueLaneSQL.count),
                             arguments: ["d": lane.domain, "p": lane.pool, "now": now, "cap": cap]) ?? 0
        }
    }

    /// The walk's statements (tests check that each step is a seek in the claim index).
    ///
    /// `lanes` starts at the first row of the claim index (the first lane's
    /// earliest) and steps to the first row after the lane: the same
    /// domain's next pool (a NULL pool sorts first), else the next domain.
    package static let dueLaneSQL: (lanes: String, count: String) = {
        let claim = "FROM recipient INDEXED BY recipient_claim WHERE \(StateSQL.claimable)"
        return ("""
                WITH RECURSIVE lane(domain, pool, t) AS (
                  SELECT * FROM (SELECT domain, pool, next_attempt_at \(claim) ORDER BY domain, pool, next_attempt_at LIMIT 1)
                  UNION ALL
                  SELECT r.domain, r.pool, r.next_attempt_at FROM lane, recipient r WHERE r.id = coalesce(
                    (SELECT id \(claim) AND domain = lane.domain AND pool > lane.pool ORDER BY pool, next_attempt_at LIMIT 1),
                    (SELECT id \(claim) AND lane.pool IS NULL AND domain = lane.domain AND pool IS NOT NULL
                      ORDER BY pool, next_attempt_at LIMIT 1),
                    (SELECT id \(claim) AND domain > lane.domain ORDER BY domain, pool, next_attempt_at LIMIT 1))
                )
                SELECT domain, pool, t FROM lane
                """,
                """
                SELECT count(*) FROM (SELECT 1 \(claim) AND domain = :d AND pool IS :p AND next_attempt_at <= :now LIMIT :cap)
                """)
    }()

    /// Returns in-flight recipients whose lease ran out (or, with
    /// `everyOtherOwner`, that another process instance holds — at start-up
    /// those cannot be live) to their claimable state, with a `lease_expired`
    /// event each. Returns how many.
    ///
    /// `holding`: recipients this process is working on. Their leases are
    /// never taken, even past their time (the process renews them; a late
    /// renewal must not hand a live delivery to a second worker).
    public func recoverLeases(now: Int64, owner: String, everyOtherOwner: Bool,
                              holding: () -> [Int64] = { [] }) async throws -> Int {
        let expired = "state = \(RecipientState.inflight.sql) AND (lease_expires_at < :now OR (:all AND lease_owner <> :owner))"
        let stale = try readStatement { db in
            try Int.fetchOne(db.cachedStatement(sql: "SELECT count(*) FROM recipient WHERE \(expired)"),
                             arguments: ["now": now, "all": everyOtherOwner, "owner": owner]) ?? 0
        }
        if stale == 0 { return 0 }
        // Only now the (possibly long) list of what this process holds.
        let held = "[" + holding().map(String.init).joined(separator: ",") + "]"
        let condition = expired + " AND NOT (lease_owner = :owner AND id IN (SELECT value FROM json_each(:holding)))"
        let arguments: StatementArguments = ["now": now, "all": everyOtherOwner, "owner": owner, "holding": held]
        return try await write(durable: false) { db in
            let rows = try Row.fetchAll(db, sql: """
                UPDATE recipient
                   SET state = CASE WHEN attempts > 0 THEN \(RecipientState.deferred.sql) ELSE \(RecipientState.queued.sql) END,
                       lease_owner = NULL, lease_expires_at = NULL
                 WHERE \(condition)
                RETURNING id, message_id
                """, arguments: arguments)
            let event = try db.cachedStatement(sql: """
                INSERT INTO event (at, kind, message_id, recipient_id, detail) VALUES (:at, \(EventKind.leaseExpired.sql), :m, :r, NULL)
                """)
            for r in rows { try event.execute(arguments: ["at": now, "m": r[1] as Int64, "r": r[0] as Int64]) }
            return rows.count
        }
    }

    /// Extends the leases of recipients this owner is still working on;
    /// returns how many it still holds.
    public func renewLeases(_ ids: [Int64], owner: String, until: Int64) async throws -> Int {
        guard !ids.isEmpty else { return 0 }
        return try await write(durable: false) { db in
            try db.execute(sql: """
                UPDATE recipient SET lease_expires_at = :until
                 WHERE state = \(RecipientState.inflight.sql) AND lease_owner = :owner AND id IN (SELECT value FROM json_each(:ids))
                """, arguments: ["until": until, "owner": owner, "ids": "[" + ids.map(String.init).joined(separator: ",") + "]"])
            return db.changesCount
        }
    }

    /// Gives back claimed recipients that were not tried (no event: nothing happened to them).
    public func releaseLeases(_ ids: [Int64], owner: String) async throws -> Int {
        guard !ids.isEmpty else { return 0 }
        return try await write(durable: false) { db in
            var n = 0
            let stmt = try db.cachedStatement(sql: """
                UPDATE recipient SET state = CASE WHEN attempts > 0 THEN \(RecipientState.deferred.sql) ELSE \(RecipientState.queued.sql) END,
                       lease_owner = NULL, lease_expires_at = NULL
                 WHERE id = :id AND state = \(RecipientState.inflight.sql) AND lease_owner = :owner
                """)
            for id in ids {
                try stmt.execute(arguments: ["id": id, "owner": owner])
                n += db.changesCount
            }
            return n
        }
    }

    /// Claims up to `limit` due recipients of `domain` with a lease, in
    /// next_attempt_at order (the claim of docs/architecture.md).
    public func claim(domain: String, now: Int64, owner: String, leaseUntil: Int64, limit: Int) async throws -> [ClaimedRecipient] {
        try await claim(Lane(domain: domain), now: now, owner: owner, leaseUntil: leaseUntil, limit: limit)
    }

    /// Claims due recipients of one domain and pool.
    public func claim(_ lane: Lane, now: Int64, owner: String, leaseUntil: Int64, limit: Int) async throws -> [ClaimedRecipient] {
        try await write(durable: false) { db in
            let stmt = try db.cachedStatement(sql: """
                UPDATE recipient SET state = \(RecipientState.inflight.sql), lease_owner = :owner, lease_expires_at = :lease
                 WHERE id IN (SELECT id FROM recipient
                               WHERE \(StateSQL.claimable) AND next_attempt_at <= :now AND domain = :domain
                                 AND pool IS :pool
                               ORDER BY next_attempt_at, id LIMIT :limit)
                RETURNING id, message_id, address, domain, attempts, notify, orcpt, created_at, delay_notified_at
                """)
            let rows = try Row.fetchAll(stmt, arguments: ["owner": owner, "lease": leaseUntil, "now": now, "domain": lane.domain, "pool": lane.pool,
                                                         "limit": limit])
            return rows.map { r in
                ClaimedRecipient(id: r[0], messageID: r[1], address: r[2], domain: r[3], attempts: r[4], notify: r[5],
                                 orcpt: r[6], createdAt: r[7], delayNotifiedAt: r[8])
            }.sorted { ($0.messageID, $0.id) < ($1.messageID, $1.id) }
        }
    }

    public func message(id: Int64) throws -> StoredMessage? {
        try readStatement { db in try Store.fetchMessage(id, db) }
    }

    /// Message `id` with its body, if `admit` takes the body's length (a
    /// memory budget's reservation, made before the body is read).
    public func message(id: Int64, admit: (Int) -> Bool) throws -> MessageRead {
        try readStatement { db in try Store.fetchMessage(id, db, admit: admit) }
    }

    /// Commits a batch of outcomes in one transaction.
    public func record(_ batch: OutcomeBatch) async throws {
        _ = try await writeWithRollups(durable: false) { db, rollups in try Store.apply(batch, db, rollups: &rollups); return 0 }
    }

    /// Writes the batch's rows now; its rollup changes go into `rollups`, for
    /// the caller to write (group commit does, once per transaction).
    static func apply(_ batch: OutcomeBatch, _ db: Database, rollups: inout RollupBatch) throws {
        var lost: Set<Int64> = []
        // ?1 state, ?2 attempts added, ?3 next attempt, ?4-?6 reply, ?7 mark
        // delay-notified, ?8 now, ?9 id, ?10 the state is final, ?11 the lease
        // owner the row must still have (the fence; NULL: none).
        let updateRecipient = try db.cachedStatement(sql: Store.updateRecipientSQL)
        // Not RETURNING: SQLite gathers RETURNING rows in an ephemeral table,
        // opened and closed per statement (sqlite3BtreeOpen/Close were 7 % of
        // the server's CPU with 10 recipients per message). The scheduler's
        // transitions carry the facts; only others need this lookup by rowid.
        let finalRow = try db.cachedStatement(sql: "SELECT domain, address, created_at FROM recipient WHERE id = ?1")
        for t in batch.transitions {
            var update = DirectStatement(updateRecipient)
            update.bind(t.state.rawValue)
            update.bind(t.countsAsAttempt)
            update.bind(t.nextAttemptAt)
            update.bind(t.code)
            update.bind(t.enhanced)
            update.bind(t.text)
            update.bind(t.markDelayNotified)
            update.bind(batch.at)
            update.bind(t.recipientID)
            let final = t.state.isFinal
            update.bind(final)
            update.bind(batch.leaseOwner)
            try update.execute(db)
            if db.changesCount == 0, let owner = batch.leaseOwner {
                // The lease was taken back (expired and swept, or the row was
                // changed by an operator): this outcome must not overwrite it.
                lost.insert(t.recipientID)
                try Store.addEvent(db, at: batch.at, kind: .leaseLost, messageID: t.messageID, recipientID: t.recipientID,
                                   detail: JSON.object([("owner", .string(owner)), ("outcome", .string(t.state.rawValue)),
                                                        ("code", t.code.map { .int($0) } ?? .null)]).text)
                continue
            }
            if final && db.changesCount > 0 {
                if let f = t.facts {
                    rollups.addFinal(state: t.state, domain: f.domain, address: f.address, createdAt: f.createdAt, finalAt: batch.at, sign: 1)
                } else {
                    var lookup = DirectStatement(finalRow)
                    lookup.bind(t.recipientID)
                    let row = try lookup.executeReturning(db) { c in (c.string(0), c.string(1), c.int64(2)) }
                    if let row, let domain = row.0, let address = row.1, let createdAt = row.2 {
                        rollups.addFinal(state: t.state, domain: domain, address: address, createdAt: createdAt, finalAt: batch.at, sign: 1)
                    }
                }
            }
            try Store.addEvent(db, at: batch.at, kind: t.event, messageID: t.messageID, recipientID: t.recipientID, detail: t.eventDetail)
        }
        let insertAttempt = try db.cachedStatement(sql: """
            INSERT INTO attempt (recipient_id, started_at, ended_at, mx_host, mx_address, source_address, tls,
                                 code, enhanced, text, outcome, category, source)
            VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)
            """)
        for a in batch.attempts {
            var attempt = DirectStatement(insertAttempt)
            attempt.bind(a.recipientID)
            attempt.bind(a.startedAt)
            attempt.bind(a.endedAt)
            attempt.bind(a.mxHost)
            attempt.bind(a.mxAddress)
            attempt.bind(a.sourceAddress)
            attempt.bind(a.tls)
            attempt.bind(a.code)
            attempt.bind(a.enhanced)
            attempt.bind(a.text)
            attempt.bind(a.outcome.rawValue)
            attempt.bind(a.category)
            attempt.bind(a.source)
            try attempt.execute(db)
            try rollups.addAttempt(a, sign: 1, db)
        }
        let suppress = try db.cachedStatement(sql: """
            INSERT OR IGNORE INTO suppression (address, reason, source, created_at, expires_at) VALUES (?, ?, ?, ?, ?)
            """)
        for (e, recipientID, messageID) in batch.suppressions where !lost.contains(recipientID) {
            try suppress.execute(arguments: [e.address, e.reason, e.source, e.createdAt, e.expiresAt])
            if db.changesCount > 0 {
                try Store.addEvent(db, at: batch.at, kind: .suppressionAdded, messageID: messageID, recipientID: recipientID,
                                   detail: JSON.object([("address", .string(e.address)), ("reason", .string(e.reason))]).text)
            }
        }
        for (dsn, original, about) in batch.dsns where about.isEmpty || !about.allSatisfy(lost.contains) {
            let id = try Store.insert(dsn, db)
            try db.execute(sql: "UPDATE message SET dsn_for = ? WHERE id = ?", arguments: [original, id])
            try Store.addEvent(db, at: batch.at, kind: .dsnQueued, messageID: original, recipientID: nil,
                               detail: JSON.object([("dsn_queue_id", .string(dsn.queueID)),
                                                    ("to", .string(dsn.recipients.first?.address ?? ""))]).text)
        }
    }

    /// One tracking event, through the cached positional statement that
    /// intake and outcomes share.
    static func addEvent(_ db: Database, at: Int64, kind: EventKind, messageID: Int64?, recipientID: Int64?, detail: String?) throws {
        var event = DirectStatement(try db.cachedStatement(sql: """
            INSERT INTO event (at, kind, message_id, recipient_id, detail) VALUES (?1, ?2, ?3, ?4, ?5)
            """))
        event.bind(at)
        event.bind(kind.rawValue)
        event.bind(messageID)
        event.bind(recipientID)
        event.bind(detail)
        try event.execute(db)
    }
}

extension Store {
    /// Built once (see `insertRecipientSQL`): one per outcome batch.
    static let updateRecipientSQL = """
        UPDATE recipient
           SET state = ?1,
               attempts = attempts + ?2,
               next_attempt_at = coalesce(?3, next_attempt_at),
               lease_owner = NULL, lease_expires_at = NULL,
               last_code = coalesce(?4, last_code),
               last_enhanced = coalesce(?5, last_enhanced),
               last_text = coalesce(?6, last_text),
               delay_notified_at = CASE WHEN ?7 THEN ?8 ELSE delay_notified_at END,
               final_at = CASE WHEN ?10 THEN ?8 ELSE NULL END
         WHERE id = ?9 AND (?11 IS NULL OR (state = \(RecipientState.inflight.sql) AND lease_owner = ?11))
        """
}
