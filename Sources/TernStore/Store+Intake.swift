// The intake transaction: a message, all its recipients (state `queued`) and
// its `received` event, in one transaction (docs/architecture.md, promise 1). Called by
// TernIntake only.

import Foundation
import GRDB
import GRDBSQLite

/// A lease granted at intake: the owner and until when.
public struct IntakeLease: Sendable, Equatable {
    public var owner: String
    public var until: Int64
    public init(owner: String, until: Int64) {
        self.owner = owner
        self.until = until
    }
}

/// What the intake transaction wrote: the message id, and the ids of the
/// recipients it leased (nil for one inserted `queued`, e.g. a suppressed
/// address, which the scheduler's normal pass settles).
public struct InsertedMessage: Sendable, Equatable {
    public var id: Int64
    public var leasedRecipientIDs: [Int64?]
}

/// The running scheduler's side of "claimed at intake" (KumoMTA's ready
/// queue, Postfix's active queue fed by cleanup): before the commit intake
/// asks for a lease, and after it hands the committed message over in
/// memory, so that delivery needs neither a claim nor a read of the body.
public protocol IntakeHandoff: Sendable {
    /// A lease for `message`'s recipients, or nil to queue it the usual way
    /// (no room in memory, stopping).
    func reserve(_ message: NewMessage) -> IntakeLease?
    /// The message is committed with the recipients `inserted` names leased.
    func handOff(_ message: NewMessage, inserted: InsertedMessage)
    /// The commit failed: forget the reservation.
    func cancel(_ message: NewMessage)
}

/// An accepted message, as intake hands it to the store.
/// The verdicts stored on a message row: results as the RFCs spell them.
public struct AuthenticationColumns: Sendable, Equatable {
    public var spf: String
    public var dkim: String
    public var dmarc: String
    public var disposition: String
    /// The Authentication-Results: field's value.
    public var results: String

    /// The authserv-id the value starts with.
    public var authservID: String { results.split(separator: ";", maxSplits: 1).first.map { $0.trimmingCharacters(in: .whitespaces) } ?? "" }

    public init(spf: String, dkim: String, dmarc: String, disposition: String, results: String) {
        self.spf = spf
        self.dkim = dkim
        self.dmarc = dmarc
        self.disposition = disposition
        self.results = results
    }
}

public struct NewMessage: Sendable {
    public var queueID: String
    public var receivedAt: Int64
    /// "" for the null sender.
    public var mailFrom: String
    /// The message as stored: our Received: on top of what the client sent.
    /// With a `tail`, only the start (the fields Tern adds) and the tail
    /// the rest, as the client sent it, in the buffer it arrived in.
    public var body: Data
    /// The text as received, not copied (large messages: see Intake).
    public var tail: (any BodyTail)? = nil
    /// The stored body's length.
    public var size: Int { body.count + (tail?.count ?? 0) }
    public var clientAddress: String?
    public var helo: String?
    public var authUser: String?
    public var headerMessageID: String?
    public var envID: String?
    public var ret: String?
    public var bodyType: String?
    public var smtputf8: Bool
    public var origin: String
    public var recipients: [NewRecipient]
    /// The source pool chosen at intake (nil: the default pool).
    public var pool: String? = nil
    /// SPF, DKIM and DMARC verdicts of received mail (migration 0010); nil when not checked.
    public var authentication: AuthenticationColumns? = nil
    /// Set when the running scheduler takes the message straight from
    /// memory: the recipients are inserted already leased to it (`inflight`),
    /// in the intake transaction itself, so no claim has to follow.
    public var lease: IntakeLease?

    public init(queueID: String, receivedAt: Int64, mailFrom: String, body: Data, clientAddress: String?, helo: String?,
                authUser: String? = nil, headerMessageID: String?, envID: String?, ret: String?, bodyType: String?,
                smtputf8: Bool, origin: String, recipients: [NewRecipient], authentication: AuthenticationColumns? = nil) {
        self.authentication = authentication
        self.queueID = queueID
        self.receivedAt = receivedAt
        self.mailFrom = mailFrom
        self.body = body
        self.clientAddress = clientAddress
        self.helo = helo
        self.authUser = authUser
        self.headerMessageID = headerMessageID
        self.envID = envID
        self.ret = ret
        self.bodyType = bodyType
        self.smtputf8 = smtputf8
        self.origin = origin
        self.recipients = recipients
    }
}

/// Bytes a message's stored body ends with, written into the database
/// where they are (a received message's buffer), not copied into a `Data`.
public protocol BodyTail: Sendable {
    var count: Int { get }
    func withBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R
}

public struct NewRecipient: Sendable, Equatable {
    public var address: String
    /// Lower-case IDNA A-label.
    public var domain: String
    public var notify: String?
    public var orcpt: String?

    public init(address: String, domain: String, notify: String? = nil, orcpt: String? = nil) {
        self.address = address
        self.domain = domain
        self.notify = notify
        self.orcpt = orcpt
    }
}

extension Store {
    /// Inserts the message through group commit; `completion` runs after the
    /// transaction that carries it is durable (or failed as a whole).
    public func insertMessage(_ message: NewMessage, completion: @escaping @Sendable (Result<InsertedMessage, StoreError>) -> Void) {
        // The event's JSON is built here, on the caller's thread: the writer
        // thread is the one every message waits for.
        let detail = Store.receivedDetail(message)
        write(bytes: message.size, { db in try Store.insertReturningRecipients(message, db, detail: detail) }, completion: completion)
    }

    public func insertMessage(_ message: NewMessage) async throws -> Int64 {
        try await write(bytes: message.size) { db in try Store.insert(message, db) }
    }

    static func insert(_ m: NewMessage, _ db: Database) throws -> Int64 {
        try insertReturningRecipients(m, db).id
    }

    /// The `received` event's detail.
    static func receivedDetail(_ m: NewMessage) -> String {
        var json = JSONObjectWriter()
        json.add("queue_id", m.queueID)
        json.add("from", m.mailFrom)
        json.add("size", m.size)
        json.add("recipients", m.recipients.count)
        json.add("client", m.clientAddress)
        json.add("helo", m.helo)
        json.add("origin", m.origin)
        json.add("message_id", m.headerMessageID)
        return json.finish()
    }

    static func insertReturningRecipients(_ m: NewMessage, _ db: Database, detail: String? = nil) throws -> InsertedMessage {
        var msg = try DirectStatement(db.cachedStatement(sql: """
            INSERT INTO message (queue_id, received_at, mail_from, size, body, client_address, helo, auth_user,
                                 header_message_id, env_id, ret, body_type, smtputf8, origin,
                                 auth_spf, auth_dkim, auth_dmarc, auth_disposition, auth_results)
            VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19)
            """))
        msg.bind(m.queueID)
        msg.bind(m.receivedAt)
        msg.bind(m.mailFrom)
        msg.bind(m.size)
        if m.tail != nil { msg.bindZeroBlob(m.size) } else { msg.bind(m.body) }
        msg.bind(m.clientAddress)
        msg.bind(m.helo)
        msg.bind(m.authUser)
        msg.bind(m.headerMessageID)
        msg.bind(m.envID)
        msg.bind(m.ret)
        msg.bind(m.bodyType)
        msg.bind(m.smtputf8)
        msg.bind(m.origin)
        msg.bind(m.authentication?.spf)
        msg.bind(m.authentication?.dkim)
        msg.bind(m.authentication?.dmarc)
        msg.bind(m.authentication?.disposition)
        msg.bind(m.authentication?.results)
        try msg.execute(db)
        let messageID = db.lastInsertedRowID
        if let tail = m.tail {
            // The zero-filled body is written in place: the start, then the
            // tail from the buffer it arrived in (incremental BLOB I/O).
            try Store.withBodyBlob(db, messageID: messageID, writable: true) { blob in
                var written = m.body.withUnsafeBytes { raw in
                    raw.isEmpty ? SQLITE_OK : sqlite3_blob_write(blob, raw.baseAddress, Int32(raw.count), 0)
                }
                if written == SQLITE_OK {
                    written = tail.withBytes { raw in
                        raw.isEmpty ? SQLITE_OK : sqlite3_blob_write(blob, raw.baseAddress, Int32(raw.count), Int32(m.body.count))
                    }
                }
                guard written == SQLITE_OK else { throw Store.sqliteError(written, db) }
            }
        }
        let insertRecipient = try db.cachedStatement(sql: Store.insertRecipientSQL)
        // A suppressed address is not leased: the scheduler's pass settles it
        // (no attempt, a DSN as NOTIFY asks) like any other suppressed recipient.
        let suppressed = m.lease == nil ? nil : try db.cachedStatement(sql: """
            SELECT 1 FROM suppression WHERE address = ? AND (expires_at IS NULL OR expires_at > ?)
            """)
        var leased: [Int64?] = []
        leased.reserveCapacity(m.recipients.count)
        for r in m.recipients {
            var lease = m.lease
            if let suppressed {
                var check = DirectStatement(suppressed)
                check.bind(r.address)
                check.bind(m.receivedAt)
                if try check.executeReturning(db, { _ in true }) != nil { lease = nil }
            }
            var rcpt = DirectStatement(insertRecipient)
            rcpt.bind(messageID)
            rcpt.bind(r.address)
            rcpt.bind(r.domain)
            rcpt.bind(m.receivedAt)
            rcpt.bind(r.notify)
            rcpt.bind(r.orcpt)
            rcpt.bind(lease?.owner)
            rcpt.bind(lease?.until)
            rcpt.bind(m.pool)
            try rcpt.execute(db)
            leased.append(lease == nil ? nil : db.lastInsertedRowID)
        }
        try Store.addEvent(db, at: m.receivedAt, kind: .received, messageID: messageID, recipientID: nil,
                           detail: detail ?? receivedDetail(m))
        return InsertedMessage(id: messageID, leasedRecipientIDs: leased)
    }
}

extension Store {
    /// Built once: the statement cache is keyed by the SQL text, and an
    /// interpolated string would be built and hashed again for every message.
    static let insertRecipientSQL = """
        INSERT INTO recipient (message_id, address, domain, state, next_attempt_at, notify, orcpt, created_at,
                               lease_owner, lease_expires_at, pool)
        VALUES (?1, ?2, ?3, CASE WHEN ?7 IS NULL THEN \(RecipientState.queued.sql) ELSE \(RecipientState.inflight.sql) END, ?4, ?5, ?6, ?4, ?7, ?8, ?9)
        """
}
