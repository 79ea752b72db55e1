// Intake, Postfix's "cleanup" role: the one path by which mail enters the
// queue (SMTP sessions and `tern sendmail`). It gives the message its queue
// id, prepends our `Received:` (RFC 5321 §4.4), adds `Message-ID:`/`Date:` to
// local submissions that lack them (RFC 6409 §8), and hands message,
// recipients and the `received` event to the store as one transaction. The
// caller learns the outcome only after the commit returned: 250 means on disk.

import Foundation
import Logging
import NIOCore
import TernDKIM
import TernMessage
import TernProtocol
import TernStore

/// Where a message came from; stored in `message.origin`.
public enum Origin: String, Sendable {
    case smtp, submission, local, dsn
}

public final class Intake: Sendable {
    public let store: Store
    public let hostname: String
    let clock: @Sendable () -> Int64
    let logger: Logger
    let onAccepted: @Sendable () -> Void
    let handoff: (any IntakeHandoff)?
    /// `Received:` fields a message may carry, ours included (Postfix's
    /// hopcount_limit): one more is a mail loop, refused with 554 5.4.6.
    public let maxHops: Int
    /// Signs mail from submission, local and trusted or authenticated
    /// clients, once, here: the stored body is what is sent, and a retry never signs again.
    public let signer: DKIMSigner?
    /// Chooses each message's source pool (nil: every message in the default pool).
    public let pools: PoolChooser?

    /// `clock` returns Unix milliseconds (injected so tests control time);
    /// `onAccepted` runs after each commit that queued recipients the usual
    /// way (the scheduler's wake-up); `handoff`, the running scheduler, takes
    /// the messages it has room for straight from memory.
    public init(store: Store, hostname: String, logger: Logger = Logger(label: "tern.intake"),
                clock: @escaping @Sendable () -> Int64 = { nowMillis() }, handoff: (any IntakeHandoff)? = nil,
                maxHops: Int = 50, signer: DKIMSigner? = nil, pools: PoolChooser? = nil, onAccepted: @escaping @Sendable () -> Void = {}) {
        self.store = store
        self.pools = pools
        self.signer = signer
        self.maxHops = maxHops
        self.hostname = hostname
        self.logger = logger
        self.clock = clock
        self.handoff = handoff
        self.onAccepted = onAccepted
    }

    /// Commits one message; `completion` gets the queue id, or the reply to
    /// give the client when the commit failed (452 4.3.1 disk full, 451 4.3.0
    /// otherwise). Nothing is half-written in either case.
    ///
    /// With `loop`, `completion` and the hand-over to the scheduler run on
    /// that event loop; without, on the store's writer thread, which every
    /// message's commit waits for and should do nothing else.
    ///
    /// `authentication`: the verdicts of the checks the listener ran (SPF,
    /// DKIM, DMARC), stored on the message row; their Authentication-Results:
    /// field goes under our Received:, and any such field already in the
    /// message that claims the same authserv-id is removed (RFC 8601 §5).
    public func accept(_ envelope: Envelope, body: ByteBuffer, origin: Origin, authUser: String? = nil, sign: Bool = true,
                       authentication: AuthenticationColumns? = nil,
                       on loop: (any EventLoop)? = nil, completion: @escaping @Sendable (CommitOutcome) -> Void) {
        accept(envelope, body: body, origin: origin, authUser: authUser, sign: sign, authentication: authentication, retries: 1,
               loop: loop, completion: completion)
    }

    private func accept(_ envelope: Envelope, body: ByteBuffer, origin: Origin, authUser: String?, sign: Bool = true,
                        authentication: AuthenticationColumns?, retries: Int,
                        loop: (any EventLoop)?, completion: @escaping @Sendable (CommitOutcome) -> Void) {
        // RFC 5321 §6.3: count the hops; ours makes one more.
        let hops = body.withUnsafeReadableBytes { HeaderBlock.count("Received", in: $0) } + 1
        if hops > maxHops {
            logger.warning("mail loop: too many hops", metadata: [
                "hops": "\(hops)", "from": "<\(envelope.mailFrom?.address ?? "")>", "peer": "\(envelope.clientAddress)",
            ])
            let refusal = CommitOutcome.rejected(SMTPReply(554, .routingLoop, "Error: too many hops (\(hops) Received: headers); mail loop?"))
            // Never inside the caller's own call: the session expects the outcome later.
            if let loop { loop.execute { completion(refusal) } } else { completion(refusal) }
            return
        }
        var prepared = prepare(envelope, body: body, origin: origin, authUser: authUser, sign: sign, authentication: authentication)
        prepared.lease = handoff?.reserve(prepared)
        let message = prepared
        store.insertMessage(message) { result in
            if let loop {
                loop.execute { self.committed(result, message, envelope, body, origin, authUser, sign, authentication, retries, loop, completion) }
            } else {
                self.committed(result, message, envelope, body, origin, authUser, sign, authentication, retries, nil, completion)
            }
        }
    }

    private func committed(_ result: Result<InsertedMessage, StoreError>, _ message: NewMessage, _ envelope: Envelope,
                           _ body: ByteBuffer, _ origin: Origin, _ authUser: String?, _ sign: Bool,
                           _ authentication: AuthenticationColumns?, _ retries: Int,
                           _ loop: (any EventLoop)?, _ completion: @escaping @Sendable (CommitOutcome) -> Void) {
        switch result {
        case .success(let inserted):
            logger.info("accepted", metadata: [
                "msg": "\(message.queueID)", "from": "<\(message.mailFrom)>", "size": "\(message.size)",
                "nrcpt": "\(message.recipients.count)", "peer": "\(message.clientAddress ?? "local")",
            ])
            completion(.accepted(queueID: message.queueID))
            if message.lease != nil { self.handoff?.handOff(message, inserted: inserted) }
            if message.lease == nil || inserted.leasedRecipientIDs.contains(nil) { self.onAccepted() }
        case .failure(.constraint(let why)) where retries > 0 && why.contains("queue_id"):
            // Two processes drew the same queue id: draw again.
            if message.lease != nil { self.handoff?.cancel(message) }
            self.accept(envelope, body: body, origin: origin, authUser: authUser, sign: sign, authentication: authentication, retries: retries - 1,
                        loop: loop, completion: completion)
        case .failure(let error):
            if message.lease != nil { self.handoff?.cancel(message) }
            logger.error("commit failed", metadata: ["error": "\(error)", "peer": "\(message.clientAddress ?? "local")"])
            completion(.rejected(Intake.reply(for: error)))
        }
    }

    public func accept(_ envelope: Envelope, body: ByteBuffer, origin: Origin, authUser: String? = nil) async -> CommitOutcome {
        await withCheckedContinuation { cont in
            accept(envelope, body: body, origin: origin, authUser: authUser) { cont.resume(returning: $0) }
        }
    }

    /// The SMTP reply for a failed commit.
    public static func reply(for error: StoreError) -> SMTPReply {
        switch error {
        case .full:
            return SMTPReply(452, .mailSystemFull, "Error: insufficient system storage, try again later")
        default:
            return SMTPReply(451, .systemError, "Error: local error in processing, try again later")
        }
    }

    /// Builds the stored form of a message: queue id, headers, recipients.
    func prepare(_ envelope: Envelope, body: ByteBuffer, origin: Origin, authUser: String?, sign: Bool = true,
                 authentication: AuthenticationColumns? = nil) -> NewMessage {
        let now = clock()
        let queueID = QueueID.make(millis: now)
        var received = ReceivedHeader(
            helo: envelope.helo, clientAddress: envelope.clientAddress, byHost: hostname,
            protocolName: envelope.protocolName, queueID: queueID,
            forRecipient: envelope.recipients.count == 1 ? envelope.recipients[0].mailbox.address : nil,
            date: now)
        received.tls = envelope.tls
        var prefix = origin == .local ? localReceived(queueID: queueID, now: now) : received.field
        var messageID = body.withUnsafeReadableBytes { HeaderBlock.firstValue("Message-ID", in: $0) }
            .flatMap(TernMessage.messageID(fromFieldValue:))
        if origin == .local || origin == .submission {
            if messageID == nil {
                messageID = "\(queueID)@\(hostname)"
                prefix += "Message-ID: <\(messageID!)>\r\n"
            }
            if body.withUnsafeReadableBytes({ HeaderBlock.firstValue("Date", in: $0) }) == nil {
                prefix += "Date: \(RFC5322Date.format(millis: now))\r\n"
            }
        }
        if let authentication { prefix += "Authentication-Results: \(authentication.results)\r\n" }
        // Ours to sign: submission and local mail, and mail from trusted or
        // authenticated clients; never mail relayed for the world.
        let ours = origin == .submission || origin == .local || envelope.trustedClient || authUser != nil
        // A large text that needs no change is not copied: it goes into the
        // database from the buffer it arrived in (one copy fewer of up to
        // limits.max_message_size per session committing).
        let inPlace = !(signer != nil && sign && ours) && body.readableBytes > Store.largeBody
        var data = Data(capacity: prefix.utf8.count + (inPlace ? 0 : body.readableBytes))
        data.append(contentsOf: prefix.utf8)
        var tail: BufferTail? = nil
        // The pool tag is read, and removed before signing: it is never sent.
        let tagName = pools?.header?.lowercased()
        var tag: String? = nil
        body.withUnsafeReadableBytes { raw in
            let forged = authentication != nil && HeaderBlock.count("Authentication-Results", in: raw) > 0
            if let tagName, HeaderBlock.count(tagName, in: raw) > 0 { tag = HeaderBlock.firstValue(tagName, in: raw) }
            // Copied through a rebuilt header only when it holds such fields at all.
            if forged || tag != nil {
                let ours = authentication?.authservID.lowercased()
                data.append(contentsOf: Intake.without(raw) { f in
                    if f.lowercasedName == tagName { return true }
                    guard let ours, f.lowercasedName == "authentication-results" else { return false }
                    return Intake.authservID(of: f) == ours
                })
            } else if inPlace {
                tail = BufferTail(buffer: body)
            } else {
                data.append(contentsOf: raw)
            }
        }
        let pool = pools?.choose(mailFrom: envelope.mailFrom?.address ?? "", authUser: authUser, origin: origin, tag: tag, mayTag: ours)
        if let signer, sign, ours {
            do {
                let signature = try signer.sign(Array(data), now: now / 1000)
                if !signature.isEmpty { data.insert(contentsOf: signature.utf8, at: 0) }
            } catch {
                logger.error("DKIM signing failed; the message goes unsigned", metadata: ["msg": "\(queueID)", "error": "\(error)"])
            }
        }
        let recipients = envelope.recipients.map { r in
            NewRecipient(address: r.mailbox.address, domain: r.mailbox.normalizedDomain,
                         notify: r.notify?.storedForm, orcpt: r.orcpt?.storedForm)
        }
        var message = NewMessage(
            queueID: queueID, receivedAt: now, mailFrom: envelope.mailFrom?.address ?? "", body: data,
            clientAddress: envelope.clientAddress.isEmpty ? nil : envelope.clientAddress,
            helo: envelope.helo.isEmpty ? nil : envelope.helo, authUser: authUser,
            headerMessageID: messageID, envID: envelope.parameters.envelopeID,
            ret: envelope.parameters.ret?.rawValue, bodyType: envelope.parameters.body?.rawValue,
            smtputf8: envelope.parameters.smtputf8, origin: origin.rawValue, recipients: recipients, authentication: authentication)
        message.pool = pool
        message.tail = tail
        return message
    }

    /// The authserv-id an Authentication-Results: field claims, lower-cased.
    static func authservID(of f: RawHeaderField) -> String {
        let value = String(decoding: DKIMCanonical.value(of: f), as: UTF8.self)
        return (value.split(separator: ";", maxSplits: 1).first.map { $0.split(whereSeparator: { $0.isWhitespace }).first.map(String.init) ?? "" } ?? "")
            .lowercased()
    }

    /// The message without the Authentication-Results: fields that claim our
    /// authserv-id (RFC 8601 §5: a sender could forge our verdicts). The body is untouched.
    static func withoutForgedResults(_ message: UnsafeRawBufferPointer, authservID: String) -> [UInt8] {
        let ours = authservID.lowercased()
        return without(message) { $0.lowercasedName == "authentication-results" && Intake.authservID(of: $0) == ours }
    }

    /// The message without the header fields `drop` picks. The body is untouched.
    static func without(_ message: UnsafeRawBufferPointer, drop: (RawHeaderField) -> Bool) -> [UInt8] {
        let bytes = Array(message)
        let (fields, _) = DKIMCanonical.split(bytes)
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count)
        for f in fields where !drop(f) {
            out += f.raw
        }
        // The fields lie end to end from the start: what follows them (the empty line and the body) is copied as it is.
        out += bytes[fields.reduce(0) { $0 + $1.raw.count }...]
        return out
    }

    private func localReceived(queueID: String, now: Int64) -> String {
        "Received: by \(hostname) (Tern, from userid \(getuid()))\r\n\tid \(queueID); \(RFC5322Date.format(millis: now))\r\n"
    }
}

/// A received message's text, as the stored body's tail (no copy).
struct BufferTail: BodyTail {
    let buffer: ByteBuffer
    var count: Int { buffer.readableBytes }
    func withBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try buffer.withUnsafeReadableBytes(body)
    }
}
