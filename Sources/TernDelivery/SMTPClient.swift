// The SMTP client (RFC 5321 §3, §4) on SwiftNIO: connects to one hop, reads
// the greeting, says EHLO (HELO when EHLO is refused), then carries
// messages: RSET between them, MAIL/RCPT/DATA pipelined when the server
// offers PIPELINING, per-phase timeouts from RFC 5321 §4.5.3.2, and every
// reply mapped to an outcome per recipient.

import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NIOSSL
import TernMessage
import TernProtocol
import TernRouting

/// When to use STARTTLS (RFC 3207).
public enum TLSPolicy: String, Sendable, CaseIterable {
    /// Never.
    case none
    /// When offered, without checking the certificate; plaintext when not
    /// offered or when the handshake fails (opportunistic, RFC 7435).
    case may
    /// Always, without checking the certificate; defer otherwise.
    case require
    /// Always, with the certificate checked against trusted roots and the MX name; defer otherwise.
    case verify
}

/// Client settings; timeouts in seconds (defaults are RFC 5321 §4.5.3.2's).
public struct ClientConfig: Sendable {
    /// The name we give in EHLO/HELO.
    public var heloName: String
    public var tlsPolicy: TLSPolicy = .may
    /// Trusted roots for `verify` (PEM); nil for the system's.
    public var tlsCAFile: String? = nil
    public var connectTimeout: Int64 = 30
    public var greetingTimeout: Int64 = 300
    public var ehloTimeout: Int64 = 300
    public var mailTimeout: Int64 = 300
    public var rcptTimeout: Int64 = 300
    public var dataInitTimeout: Int64 = 120
    public var dataBlockTimeout: Int64 = 180
    public var dataEndTimeout: Int64 = 600
    public var quitTimeout: Int64 = 10
    /// `Received:` fields a queued message may carry before it is bounced
    /// as a mail loop instead of sent (5.4.6, as intake's limit).
    public var maxHops: Int = 50

    public init(heloName: String) { self.heloName = heloName }

    /// Every timeout set to `seconds` (tests).
    public mutating func setAllTimeouts(_ seconds: Int64) {
        greetingTimeout = seconds; ehloTimeout = seconds; mailTimeout = seconds; rcptTimeout = seconds
        dataInitTimeout = seconds; dataBlockTimeout = seconds; dataEndTimeout = seconds; quitTimeout = seconds
        connectTimeout = seconds
    }
}

enum OpenResult {
    case success(SMTPClientConnection)
    case failure(SMTPReply)
    /// STARTTLS was tried and failed (`may` retries the hop in plaintext).
    case tlsFailure(SMTPReply)
    /// The server is ourselves (it greets or answers EHLO with our name).
    case loop(SMTPReply)
}

/// The addresses Tern itself listens on, so that delivery never connects
/// to itself (Postfix: "mail for D loops back to myself").
public final class OwnEndpoints: Sendable {
    private let box = NIOLockedValueBox<(listeners: [(address: IPAddress?, port: Int)], local: [IPAddress])>(([], []))

    public init() {}

    /// The listeners' bound addresses; a wildcard (0.0.0.0, ::) stands for
    /// every address of this machine's interfaces and loopback.
    public func set(_ bound: [SocketAddress]) {
        let listeners: [(address: IPAddress?, port: Int)] = bound.compactMap { a in
            guard let port = a.port, let text = a.ipAddress, let ip = IPAddress(text) else { return nil }
            return (ip.isUnspecified ? nil : ip.unmapped, port)
        }
        var local: [IPAddress] = []
        if listeners.contains(where: { $0.address == nil }) {
            local = ((try? System.enumerateDevices()) ?? []).compactMap { $0.address?.ipAddress.flatMap(IPAddress.init)?.unmapped }
        }
        box.withLockedValue { $0 = (listeners, local) }
    }

    /// Whether connecting to `address`:`port` reaches one of our listeners.
    public func contains(_ address: IPAddress, port: Int) -> Bool {
        let ip = address.unmapped
        return box.withLockedValue { own in
            own.listeners.contains { l in
                guard l.port == port else { return false }
                guard let a = l.address else { return ip.isLoopback || own.local.contains(ip) }
                return a == ip
            }
        }
    }
}

/// TLS contexts, made once per agent (loading roots is not cheap).
struct TLSContexts: Sendable {
    let opportunistic: NIOSSLContext
    let verifying: NIOSSLContext?

    init(caFile: String?, needVerifying: Bool) throws {
        var loose = TLSConfiguration.makeClientConfiguration()
        loose.minimumTLSVersion = .tlsv12
        loose.certificateVerification = .none
        opportunistic = try NIOSSLContext(configuration: loose)
        if needVerifying {
            var strict = TLSConfiguration.makeClientConfiguration()
            strict.minimumTLSVersion = .tlsv12
            strict.certificateVerification = .fullVerification
            if let f = caFile { strict.trustRoots = .file(f) }
            verifying = try NIOSSLContext(configuration: strict)
        } else {
            verifying = nil
        }
    }
}

final class SMTPClientConnection: DeliveryConnection, @unchecked Sendable {
    // Used by one worker at a time; the handler is only touched on its loop.
    let channel: Channel
    let handler: NIOLoopBound<SMTPReplyHandler>
    let config: ClientConfig
    private(set) var capabilities: ServerCapabilities
    private(set) var context: AttemptContext
    private var broken = false
    /// A MAIL was accepted and its transaction not ended by a reply to the
    /// final dot: the next message starts with RSET. After a completed
    /// transaction the server has reset already (RFC 5321 §4.1.1.4), so
    /// back-to-back messages need none.
    private var openTransaction = false
    /// Replies to the commands of the message that went out with the
    /// previous message's content (RFC 2920 §3.1); it must be sent next.
    private var started: (messageID: Int64, mail: SMTPReply, rcpts: [SMTPReply], data: SMTPReply?)? = nil

    var startedMessageID: Int64? { started?.messageID }

    let logger: Logger?

    private init(channel: Channel, handler: NIOLoopBound<SMTPReplyHandler>, config: ClientConfig, hop: Hop, logger: Logger?) {
        self.logger = logger
        self.channel = channel
        self.handler = handler
        self.config = config
        self.capabilities = ServerCapabilities()
        self.context = AttemptContext(mxHost: hop.host, mxAddress: hop.address.description)
    }

    var isReusable: Bool { !broken && channel.isActive }

    /// Connects, reads the greeting and introduces itself. On failure, the
    /// reply to record (4xx: try the next hop).
    static func open(_ hop: Hop, config: ClientConfig, tls: TLSContexts?, group: EventLoopGroup, logger: Logger? = nil) async -> OpenResult {
        let channel: Channel
        let handler: NIOLoopBound<SMTPReplyHandler>
        do {
            let address = try SocketAddress(ipAddress: hop.address.description, port: hop.port)
            // Keep the handler itself: a server that greets 421 and hangs up may
            // have emptied the pipeline before we could look it up there.
            let slot = NIOLockedValueBox<NIOLoopBound<SMTPReplyHandler>?>(nil)
            // On the loop the worker runs on, when it runs on one: its
            // exchanges then stay on that thread.
            channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.currentEventLoop ?? group)
                .connectTimeout(.seconds(config.connectTimeout))
                .channelOption(.socketOption(.tcp_nodelay), value: 1)
                .channelInitializer { ch in
                    ch.eventLoop.makeCompletedFuture {
                        let h = SMTPReplyHandler()
                        try ch.pipeline.syncOperations.addHandler(h)
                        slot.withLockedValue { $0 = NIOLoopBound(h, eventLoop: ch.eventLoop) }
                    }
                }
                .connect(to: address).get()
            guard let h = slot.withLockedValue({ $0 }) else { throw ClientFault.closed }
            handler = h
        } catch {
            return .failure(SMTPReply(451, .noAnswerFromHost, "connect to \(hop) failed: \(error)"))
        }
        let c = SMTPClientConnection(channel: channel, handler: handler, config: config, hop: hop, logger: logger)
        do {
            let greeting = try await c.expect(config.greetingTimeout)
            guard greeting.code == 220 else {
                await c.close()
                return .failure(SMTPReply(451, .noAnswerFromHost, "\(hop) greeted with: \(greeting.keepingText(400))"))
            }
            // A server that greets with our own name is us (RFC 5321 §6.3).
            if ClientProtocol.firstWord(greeting).lowercased() == config.heloName.lowercased() {
                await c.close()
                return .loop(SMTPReply(554, .routingLoop, "mail for \(hop.host) loops back to myself (\(hop) greets as \(config.heloName))"))
            }
            let ehlo = try await c.exchange(["EHLO \(config.heloName)"], config.ehloTimeout, steps: [.ehlo])[0]
            if ehlo.code == 250 {
                if ClientProtocol.firstWord(ehlo).lowercased() == config.heloName.lowercased() {
                    await c.close()
                    return .loop(SMTPReply(554, .routingLoop, "mail for \(hop.host) loops back to myself (\(hop) answers EHLO as \(config.heloName))"))
                }
                c.capabilities = ServerCapabilities(ehloReply: ehlo)
            } else {
                let helo = try await c.exchange(["HELO \(config.heloName)"], config.ehloTimeout, steps: [.helo])[0]
                guard helo.code == 250 else {
                    await c.close()
                    return .failure(SMTPReply(451, .noAnswerFromHost, "\(hop) refused EHLO and HELO: \(helo)"))
                }
            }
            if let failure = try await c.negotiateTLS(hop, tls: tls) {
                await c.abort()
                return failure
            }
            c.context.remoteDSN = c.capabilities.dsn
            return .success(c)
        } catch {
            await c.abort()
            return .failure(SMTPReply(451, .connectionDropped, "\(hop) failed before mail: \(error)"))
        }
    }

    /// STARTTLS per the policy; nil when the session may go on.
    private func negotiateTLS(_ hop: Hop, tls: TLSContexts?) async throws -> OpenResult? {
        let policy = config.tlsPolicy
        guard policy != .none, let tls else { return nil }
        guard capabilities.startTLS else {
            if policy == .may { return nil }
            return .failure(SMTPReply(451, .encryptionNeeded, "\(hop) does not offer STARTTLS, which the TLS policy requires"))
        }
        let reply = try await exchange(["STARTTLS"], config.ehloTimeout, steps: [.startTLS])[0]
        guard reply.code == 220 else {
            if policy == .may { return nil }
            return .failure(SMTPReply(451, .encryptionNeeded, "\(hop) refused STARTTLS: \(reply)"))
        }
        do {
            let sslContext = policy == .verify ? (tls.verifying ?? tls.opportunistic) : tls.opportunistic
            // SNI and the name check use the MX host name; an address literal has none.
            let name = IPAddress(hop.host) == nil && !hop.host.hasPrefix("[") ? hop.host : nil
            let h = handler
            let channel = self.channel
            try await channel.eventLoop.submit {
                h.value.discardBuffered()
                let ssl = try NIOSSLClientHandler(context: sslContext, serverHostname: name)
                try channel.pipeline.syncOperations.addHandler(ssl, position: .first)
            }.get()
            // RFC 3207 §4.2: forget what was learned before TLS and ask again.
            let ehlo = try await exchange(["EHLO \(config.heloName)"], config.ehloTimeout, steps: [.ehlo])[0]
            guard ehlo.code == 250 else { throw ClientFault.protocolError("EHLO after STARTTLS: \(ehlo)") }
            capabilities = ServerCapabilities(ehloReply: ehlo)
            let version = try? await channel.nioSSL_tlsVersion().get()
            switch version {
            case .tlsv13?: context.tls = "TLSv1.3"
            case .tlsv12?: context.tls = "TLSv1.2"
            case let v?: context.tls = "\(v)"
            case nil: context.tls = "TLS"
            }
            return nil
        } catch {
            return .tlsFailure(SMTPReply(451, .cryptographicFailure, "TLS with \(hop) failed: \(error)"))
        }
    }


    private func expect(_ seconds: Int64) async throws -> SMTPReply {
        let h = handler
        let loop = channel.eventLoop
        return try await loop.flatSubmit { h.value.expect(timeout: .seconds(seconds), loop: loop) }.get()
    }

    /// Writes the lines in one go and reads one reply per line, in order.
    private func exchange(_ lines: [String], _ seconds: Int64..., steps: [ClientStep]? = nil) async throws -> [SMTPReply] {
        try await exchange(lines, timeouts: lines.indices.map { seconds[min($0, seconds.count - 1)] }, steps: steps)
    }

    /// With `steps`, each reply is checked against its command as it
    /// comes; the first that does not fit ends the exchange (`outOfStep`).
    private func exchange(_ lines: [String], timeouts: [Int64], steps: [ClientStep]? = nil) async throws -> [SMTPReply] {
        var bytes = channel.allocator.buffer(capacity: lines.reduce(0) { $0 + $1.utf8.count + 2 })
        SMTPClientConnection.append(lines, to: &bytes)
        return try await sendAndExpect(bytes, timeouts: timeouts, steps: steps)
    }

    private static func append(_ lines: [String], to buffer: inout ByteBuffer) {
        for l in lines { buffer.writeString(l); buffer.writeStaticString("\r\n") }
    }

    /// A transaction's commands before DATA: MAIL, then RCPT for each recipient.
    private static func transactionCommands(_ env: ClientEnvelope, _ caps: ServerCapabilities) -> [String] {
        [ClientProtocol.mailCommand(env, caps)] + env.recipients.map { ClientProtocol.rcptCommand($0, caps) }
    }

    /// What MAIL and each RCPT of a transaction answer.
    private static func transactionSteps(_ env: ClientEnvelope) -> [ClientStep] {
        [.mail] + Array(repeating: .rcpt, count: env.recipients.count)
    }

    /// The reply timeouts of a pipelined group of `lines` followed by DATA.
    private func groupTimeouts(_ lines: [String]) -> [Int64] {
        lines.map { $0 == "RSET" || $0.hasPrefix("MAIL") ? config.mailTimeout : config.rcptTimeout } + [config.dataInitTimeout]
    }

    private func write(_ bytes: [UInt8], expectWithin seconds: Int64) async throws -> SMTPReply {
        var buffer = channel.allocator.buffer(capacity: bytes.count)
        buffer.writeBytes(bytes)
        return try await sendAndExpect(buffer, timeouts: [seconds])[0]
    }

    /// Writes `payload` and reads one reply per timeout, in order.
    ///
    /// One hop to the loop and one resume back per exchange: the waits are
    /// registered, the bytes written and the replies gathered all on the
    /// loop. (Awaiting each reply's future from the task instead cost a hop
    /// to the loop per future, even a completed one, to attach the callback,
    /// and a resume of the task for each.)
    private func sendAndExpect(_ payload: ByteBuffer, timeouts: [Int64], steps: [ClientStep]? = nil) async throws -> [SMTPReply] {
        let (replies, fault) = await sendAndGather(payload, timeouts: timeouts, steps: steps)
        if let fault { throw fault }
        return replies
    }

    /// `sendAndExpect` that keeps the replies that came before a failure:
    /// the first reply of a group may settle a message even when a later
    /// one never comes.
    private func sendAndGather(_ payload: ByteBuffer, timeouts: [Int64], steps: [ClientStep]? = nil) async -> ([SMTPReply], ClientFault?) {
        precondition(!timeouts.isEmpty, "an exchange expects at least one reply")
        precondition(steps == nil || steps!.count == timeouts.count, "one step per expected reply")
        let h = handler
        let loop = channel.eventLoop
        let channel = self.channel
        let (replies, fault): ([SMTPReply], ClientFault?) = await withCheckedContinuation { cont in
            let start: @Sendable () -> Void = {
                let gathered = Gathered(expected: timeouts.count)
                // Register the waits before writing, so no reply can come first.
                for t in timeouts {
                    h.value.expect(timeout: .seconds(t), loop: loop) { result in
                        guard !gathered.finished else { return }
                        switch result {
                        case .success(let reply):
                            if let steps, !steps[gathered.replies.count].accepts(reply) {
                                // The session is out of step: no later reply can be trusted.
                                gathered.finished = true
                                cont.resume(returning: (gathered.replies, .outOfStep(steps[gathered.replies.count], reply)))
                                return
                            }
                            gathered.replies.append(reply)
                            if gathered.replies.count == gathered.expected {
                                gathered.finished = true
                                cont.resume(returning: (gathered.replies, nil))
                            }
                        case .failure(let fault):
                            // The first failure ends the exchange; every later wait fails with it.
                            gathered.finished = true
                            cont.resume(returning: (gathered.replies, fault))
                        }
                    }
                }
                channel.writeAndFlush(payload, promise: nil)
            }
            // A worker runs on its connection's loop (EventLoopExecutor): it
            // starts the exchange in place instead of queueing a task for it.
            if loop.inEventLoop { start() } else { loop.execute(start) }
        }
        if replies.contains(where: { $0.code == 421 }) { broken = true } // RFC 5321 §3.8: the server is closing
        if case .outOfStep? = fault { broken = true; channel.close(promise: nil) }
        return (replies, fault)
    }

    /// Replies of one exchange, gathered on the loop.
    private final class Gathered {
        let expected: Int
        var replies: [SMTPReply] = []
        var finished = false
        init(expected: Int) {
            self.expected = expected
            replies.reserveCapacity(expected)
        }
    }

    func send(_ message: OutboundMessage) async -> [Int64: RecipientOutcome] {
        await send(message, next: nil)
    }

    /// The deferral for replies that do not fit their commands: the
    /// session is out of step, so no reply on it can be trusted.
    func outOfStep(_ step: ClientStep, _ reply: SMTPReply) -> SMTPReply {
        SMTPReply(451, .protocolError,
                  "\(context.mxHost ?? "server") answered \(step) with \"\(reply.keepingText(200))\": replies out of step with commands; connection closed")
    }

    /// Ends a session whose replies are out of step: every recipient of
    /// the message without a certain final reply is deferred, the
    /// connection dropped (issue 15: a peer answering pipelined commands
    /// out of order had 300 recipients counted delivered on a 354).
    private func abandon(_ env: ClientEnvelope, _ results: inout [Int64: RecipientOutcome], _ step: ClientStep, _ reply: SMTPReply) async {
        let deferral = outOfStep(step, reply)
        logger?.warning("replies out of step; connection closed", metadata: ["mx": "\(context.mxHost ?? "?")", "step": "\(step)",
                                                                           "reply": "\(reply.keepingText(200))"])
        for r in env.recipients { results[r.id] = .deferred(deferral) }
        started = nil
        await abort()
    }

    func send(_ message: OutboundMessage, next: OutboundMessage?) async -> [Int64: RecipientOutcome] {
        let env = message.envelope
        var results: [Int64: RecipientOutcome] = [:]
        let early = started
        started = nil
        if let early, early.messageID != message.messageID {
            // Not the message whose commands went out: the server may be
            // waiting for that one's content. Nothing else can be sent here.
            await abort()
            let reply = SMTPReply(451, .connectionDropped, "connection with \(context.mxHost ?? "server") reset: message \(early.messageID) was started but not sent")
            for r in env.recipients { results[r.id] = .deferred(reply) }
            return results
        }
        if early == nil, let refusal = ClientProtocol.preflight(env, capabilities) {
            for r in env.recipients { results[r.id] = .bounced(refusal) }
            return results
        }
        // A message that has made too many hops is looping: bounce it.
        let hops = message.body.withUnsafeBytes { HeaderBlock.count("Received", in: $0) }
        if hops > config.maxHops {
            let reply = SMTPReply(554, .routingLoop, "too many hops (\(hops) Received: headers); mail loop?")
            for r in env.recipients { results[r.id] = .bounced(reply) }
            if early != nil { await abort() } // the server waits for this message's content
            return results
        }
        let caps = capabilities
        var phase = "MAIL"
        do {
            var mailReply: SMTPReply
            var rcptReplies: [SMTPReply] = []
            var dataReply: SMTPReply? = nil
            if let early {
                // Sent with the previous message's content; the replies are in.
                (mailReply, rcptReplies, dataReply) = (early.mail, early.rcpts, early.data)
            } else if caps.pipelining {
                // RFC 2920: RSET, MAIL, RCPT… and DATA in one group.
                let lines = (openTransaction ? ["RSET"] : []) + SMTPClientConnection.transactionCommands(env, caps)
                let steps = (openTransaction ? [ClientStep.rset] : []) + SMTPClientConnection.transactionSteps(env) + [.data]
                var replies = try await exchange(lines + ["DATA"], timeouts: groupTimeouts(lines), steps: steps)
                if lines.first == "RSET" { replies.removeFirst() }
                mailReply = replies.removeFirst()
                rcptReplies = Array(replies.prefix(env.recipients.count))
                dataReply = replies.last
            } else {
                if openTransaction { _ = try await exchange(["RSET"], config.mailTimeout, steps: [.rset]) }
                mailReply = try await exchange([ClientProtocol.mailCommand(env, caps)], config.mailTimeout, steps: [.mail])[0]
                if mailReply.code == 250 {
                    phase = "RCPT"
                    for r in env.recipients {
                        rcptReplies.append(try await exchange([ClientProtocol.rcptCommand(r, caps)], config.rcptTimeout, steps: [.rcpt])[0])
                    }
                    if rcptReplies.contains(where: { $0.code / 100 == 2 }) {
                        phase = "DATA"
                        dataReply = try await exchange(["DATA"], config.dataInitTimeout, steps: [.data])[0]
                    }
                }
            }
            openTransaction = mailReply.code / 100 == 2
            if mailReply.code / 100 != 2 {
                for r in env.recipients { results[r.id] = RecipientOutcome.from(mailReply) }
                if dataReply?.code == 354 { _ = try? await write(Array(".\r\n".utf8), expectWithin: config.dataEndTimeout) }
                return results
            }
            var accepted: [ClientRecipient] = []
            for (r, reply) in zip(env.recipients, rcptReplies) {
                if reply.code / 100 == 2 { accepted.append(r) } else { results[r.id] = RecipientOutcome.from(reply) }
            }
            guard let data = dataReply, !accepted.isEmpty else {
                if dataReply?.code == 354 { _ = try? await write(Array(".\r\n".utf8), expectWithin: config.dataEndTimeout) }
                return results
            }
            guard data.code == 354 else {
                for r in accepted { results[r.id] = RecipientOutcome.from(data) }
                return results
            }
            phase = "end of data"
            let content = ClientProtocol.dataText(message.body)
            // RFC 2920 §3.1: the content may begin a pipelined group, so the
            // next message's MAIL, RCPT… and DATA go out with this final dot:
            // one round trip per message instead of two.
            var nextLines: [String] = []
            if let next, caps.pipelining, ClientProtocol.preflight(next.envelope, caps) == nil {
                nextLines = SMTPClientConnection.transactionCommands(next.envelope, caps)
            }
            var payload = channel.allocator.buffer(capacity: content.count + nextLines.reduce(6) { $0 + $1.utf8.count + 2 })
            payload.writeBytes(content)
            var timeouts = [config.dataEndTimeout]
            if !nextLines.isEmpty {
                SMTPClientConnection.append(nextLines + ["DATA"], to: &payload)
                timeouts += groupTimeouts(nextLines)
            }
            // Every reply of the group must fit its command: if one does not,
            // the server answered out of order and the first reply may not be
            // the answer to this final dot (RFC 2920 §3.1).
            let steps = [ClientStep.endOfData] + (nextLines.isEmpty ? [] : SMTPClientConnection.transactionSteps(next!.envelope) + [.data])
            let (replies, fault) = await sendAndGather(payload, timeouts: timeouts, steps: steps)
            if case .outOfStep(let step, let reply)? = fault {
                await abandon(env, &results, step, reply)
                return results
            }
            // This message's reply counts even if the next one's group then
            // failed: recording it deferred would deliver it twice.
            guard let final = replies.first else { throw fault ?? ClientFault.closed }
            openTransaction = false
            for r in accepted { results[r.id] = RecipientOutcome.from(final) }
            if fault != nil {
                broken = true
                return results
            }
            if let next, !nextLines.isEmpty {
                let n = next.envelope.recipients.count
                started = (next.messageID, replies[1], Array(replies[2..<(2 + n)]), replies[2 + n])
                openTransaction = replies[1].code / 100 == 2
            }
            return results
        } catch ClientFault.outOfStep(let step, let reply) {
            await abandon(env, &results, step, reply)
            return results
        } catch {
            // Timeouts and dropped connections are temporary; a reply lost after
            // the final dot may mean the message arrived (a possible duplicate).
            broken = true
            let reply = SMTPReply(451, .connectionDropped, "lost connection with \(context.mxHost ?? "server") during \(phase): \(error)")
            for r in env.recipients where results[r.id] == nil { results[r.id] = .deferred(reply) }
            return results
        }
    }

    func close() async {
        // A server waiting for content would read QUIT as content: drop the
        // connection instead (the server discards the open transaction).
        if isReusable && started?.data?.code != 354 {
            _ = try? await exchange(["QUIT"], config.quitTimeout)
        }
        await abort()
    }

    private func abort() async {
        broken = true
        try? await channel.close()
    }
}

/// The production agent: routes the domain, then tries each hop in order
/// until one greets and accepts EHLO/HELO. With `health`, hosts that keep
/// failing are skipped while they cool down (the circuit breaker).
public final class SMTPDeliveryAgent: DeliveryAgent {
    let router: Router
    let config: ClientConfig
    let group: EventLoopGroup
    let logger: Logger
    let tls: TLSContexts?
    let health: (any HostHealth)?
    /// Where Tern itself listens: never a next hop.
    public let own: OwnEndpoints

    public init(router: Router, config: ClientConfig, group: EventLoopGroup, health: (any HostHealth)? = nil,
                own: OwnEndpoints = OwnEndpoints(), logger: Logger = Logger(label: "tern.delivery")) throws {
        self.own = own
        self.router = router
        self.config = config
        self.group = group
        self.health = health
        self.logger = logger
        self.tls = config.tlsPolicy == .none ? nil : try TLSContexts(caFile: config.tlsCAFile, needVerifying: config.tlsPolicy == .verify)
    }

    public func connect(domain: String) async -> ConnectOutcome {
        switch await router.plan(domain) {
        case .bounce(let r), .deferral(let r):
            return .failed(r, AttemptContext())
        case .hops(let planned):
            let (hops, skipped) = health?.arrange(planned) ?? (planned, [])
            if hops.isEmpty, let first = skipped.min(by: { $0.until < $1.until }) {
                let reply = SMTPReply(451, .noAnswerFromHost,
                                      "All MX hosts of \(domain) are cooling down after repeated failures (\(first.hop) until \(Date(timeIntervalSince1970: Double(first.until) / 1000)))")
                return .failed(reply, AttemptContext(mxHost: first.hop.host))
            }
            var last: (SMTPReply, AttemptContext)? = nil
            hopLoop: for hop in hops {
                if own.contains(hop.address, port: hop.port) {
                    // Postfix's rule: hosts from ourselves on are not tried. With a
                    // better hop tried and failed, wait for it; else the mail loops.
                    logger.warning("next hop is this server", metadata: ["mx": "\(hop)", "domain": "\(domain)"])
                    if last != nil { break hopLoop }
                    return .failed(SMTPReply(554, .routingLoop, "mail for \(domain) loops back to myself (\(hop) is where this server listens)"),
                                   AttemptContext(mxHost: hop.host, mxAddress: hop.address.description))
                }
                var result = await SMTPClientConnection.open(hop, config: config, tls: tls, group: group, logger: logger)
                if case .tlsFailure(let reply) = result, config.tlsPolicy == .may {
                    // Opportunistic TLS: a broken handshake is no reason not to deliver.
                    logger.info("STARTTLS failed; retrying in plaintext", metadata: ["mx": "\(hop)", "reply": "\(reply)"])
                    var plain = config
                    plain.tlsPolicy = .none
                    result = await SMTPClientConnection.open(hop, config: plain, tls: nil, group: group, logger: logger)
                }
                switch result {
                case .loop(let reply):
                    logger.warning("next hop is this server", metadata: ["mx": "\(hop)", "reply": "\(reply)"])
                    if last != nil { break hopLoop }
                    return .failed(reply, AttemptContext(mxHost: hop.host, mxAddress: hop.address.description))
                case .success(let c):
                    health?.succeeded(hop)
                    return .connected(c)
                case .failure(let reply), .tlsFailure(let reply):
                    health?.failed(hop, reply: reply)
                    logger.info("hop failed", metadata: ["mx": "\(hop)", "reply": "\(reply)"])
                    last = (reply, AttemptContext(mxHost: hop.host, mxAddress: hop.address.description))
                }
            }
            let (reply, ctx) = last ?? (SMTPReply(451, .unableToRoute, "no route to \(domain)"), AttemptContext())
            return .failed(reply, ctx)
        }
    }
}
