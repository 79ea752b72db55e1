// The intake transaction: a message, all its recipients (state `queued`) and
// its `received` event, in one transaction (DESIGN.md promise 1). Called by
// TernIntake only.

import Foundation
import GRDB

/// An accepted message, as intake hands it to the store.
public struct NewMessage: Sendable {
    public var queueID: String
    public var receivedAt: Int64
    /// "" for the null sender.
    public var mailFrom: String
    /// The message as stored: our Received: on top of what the client sent.
    public var body: Data
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

    public init(queueID: String, receivedAt: Int64, mailFrom: String, body: Data, clientAddress: String?, helo: String?,
                authUser: String? = nil, headerMessageID: String?, envID: String?, ret: String?, bodyType: String?,
                smtputf8: Bool, origin: String, recipients: [NewRecipient]) {
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
    public func insertMessage(_ message: NewMessage, completion: @escaping @Sendable (Result<Int64, StoreError>) -> Void) {
        write({ db in try Store.insert(message, db) }, completion: completion)
    }

    public func insertMessage(_ message: NewMessage) async throws -> Int64 {
        try await write { db in try Store.insert(message, db) }
    }

    static func insert(_ m: NewMessage, _ db: Database) throws -> Int64 {
        let msg = try db.cachedStatement(sql: """
            INSERT INTO message (queue_id, received_at, mail_from, size, body, client_address, helo, auth_user,
                                 header_message_id, env_id, ret, body_type, smtputf8, origin)
            VALUES (:queue_id, :received_at, :mail_from, :size, :body, :client_address, :helo, :auth_user,
                    :header_message_id, :env_id, :ret, :body_type, :smtputf8, :origin)
            """)
        try msg.execute(arguments: [
            "queue_id": m.queueID, "received_at": m.receivedAt, "mail_from": m.mailFrom, "size": m.body.count,
            "body": m.body, "client_address": m.clientAddress, "helo": m.helo, "auth_user": m.authUser,
            "header_message_id": m.headerMessageID, "env_id": m.envID, "ret": m.ret, "body_type": m.bodyType,
            "smtputf8": m.smtputf8 ? 1 : 0, "origin": m.origin,
        ])
        let messageID = db.lastInsertedRowID
        let rcpt = try db.cachedStatement(sql: """
            INSERT INTO recipient (message_id, address, domain, state, next_attempt_at, notify, orcpt, created_at)
            VALUES (:message_id, :address, :domain, 'queued', :now, :notify, :orcpt, :now)
            """)
        for r in m.recipients {
            try rcpt.execute(arguments: [
                "message_id": messageID, "address": r.address, "domain": r.domain, "now": m.receivedAt,
                "notify": r.notify, "orcpt": r.orcpt,
            ])
        }
        let event = try db.cachedStatement(sql: """
            INSERT INTO event (at, kind, message_id, recipient_id, detail)
            VALUES (:at, 'received', :message_id, NULL, :detail)
            """)
        let detail = JSON.object([
            ("queue_id", .string(m.queueID)), ("from", .string(m.mailFrom)), ("size", .int(m.body.count)),
            ("recipients", .int(m.recipients.count)), ("client", m.clientAddress.map(JSON.string) ?? .null),
            ("helo", m.helo.map(JSON.string) ?? .null), ("origin", .string(m.origin)),
            ("message_id", m.headerMessageID.map(JSON.string) ?? .null),
        ])
        try event.execute(arguments: ["at": m.receivedAt, "message_id": messageID, "detail": detail.text])
        return messageID
    }
}
