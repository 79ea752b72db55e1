// The SMTP client's I/O on SwiftNIO: connects to one hop and carries out
// what the pure ClientSession (TernProtocol) decides — writes its commands
// and message content, gathers one reply per expected step on the event
// loop with RFC 5321 §4.5.3.2's timeout for that step, puts TLS on when
// asked, and feeds the replies back to the session one by one.

import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NIOSSL
import TernMessage
import TernProtocol
import TernRouting

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
    case failure(ClientOpenFailure)
    /// The source address cannot be bound here (gone from the host).
    case cannotBind(String)
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
    private var session: ClientSession
    private(set) var context: AttemptContext
    private var aborted = false
    let logger: Logger?

    var startedMessageID: Int64? { session.startedMessageID }
    var capabilities: ServerCapabilities { session.capabilities }
    var isReusable: Bool { !aborted && !session.broken && channel.isActive }

    private init(channel: Channel, handler: NIOLoopBound<SMTPReplyHandler>, config: ClientConfig, session: ClientSession.Config,
                 hop: Hop, source: OutboundSource?, logger: Logger?) {
        self.logger = logger
        self.channel = channel
        self.handler = handler
        self.config = config
        self.session = ClientSession(session)
        self.context = AttemptContext(mxHost: hop.host, mxAddress: hop.address.description,
                                      sourceAddress: channel.localAddress?.ipAddress, source: source?.name)
    }

    /// Connects, reads the greeting, introduces itself and puts TLS on as
    /// the policy says. On failure, the reply to record (4xx: try the next hop).
    static func open(_ hop: Hop, config: ClientConfig, tls: TLSContexts?, group: EventLoopGroup, source: OutboundSource? = nil,
                     logger: Logger? = nil) async -> OpenResult {
        let channel: Channel
        let handler: NIOLoopBound<SMTPReplyHandler>
        do {
            let address = try SocketAddress(ipAddress: hop.address.description, port: hop.port)
            // Keep the handler itself: a server that greets 421 and hangs up may
            // have emptied the pipeline before we could look it up there.
            let slot = NIOLockedValueBox<NIOLoopBound<SMTPReplyHandler>?>(nil)
            // On the loop the worker runs on, when it runs on one: its
            // exchanges then stay on that thread.
            var bootstrap = ClientBootstrap(group: MultiThreadedEventLoopGroup.currentEventLoop ?? group)
            if let source {
                let local: SocketAddress
                do { local = try SocketAddress(ipAddress: source.address.description, port: 0) } catch {
                    return .cannotBind("\(source.address) is not an address: \(error)")
                }
                bootstrap = bootstrap.bind(to: local)
            }
            channel = try await bootstrap
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
            if let source, let io = error as? IOError, io.errnoCode == EADDRNOTAVAIL || io.errnoCode == EINVAL {
                return .cannotBind("cannot bind \(source.address): \(io)")
            }
            return .failure(.failure(SMTPReply(451, .noAnswerFromHost, "connect to \(hop) failed: \(error)")))
        }
        let sessionConfig = ClientSession.Config(heloName: config.heloName, tlsPolicy: config.tlsPolicy, tlsAvailable: tls != nil,
                                                 maxHops: config.maxHops, host: hop.host, peer: "\(hop)")
        let c = SMTPClientConnection(channel: channel, handler: handler, config: config, session: sessionConfig, hop: hop, source: source,
                                     logger: logger)
        var action = c.session.start()
        while true {
            switch action {
            case .exchange(let lines, let steps):
                action = await c.exchange(lines, steps)
            case .startTLS:
                action = await c.startTLS(hop, tls)
            case .ready:
                if c.session.tlsActive { await c.recordTLSVersion() }
                c.context.remoteDSN = c.session.capabilities.dsn
                return .success(c)
            case .failed(let failure, let quit):
                if quit { await c.close() } else { await c.abort() }
                return .failure(failure)
            case .content, .endData, .done, .quit, .drop:
                await c.abort()
                return .failure(.failure(SMTPReply(451, .connectionDropped, "\(hop) failed before mail: \(action)")))
            }
        }
    }

    /// Puts TLS on the connection; the session then asks EHLO again.
    private func startTLS(_ hop: Hop, _ tls: TLSContexts?) async -> ClientAction {
        guard let tls else { return session.fail(.protocolError("no TLS context")) }
        let sslContext = config.tlsPolicy == .verify ? (tls.verifying ?? tls.opportunistic) : tls.opportunistic
        // SNI and the name check use the MX host name; an address literal has none.
        let name = IPAddress(hop.host) == nil && !hop.host.hasPrefix("[") ? hop.host : nil
        let h = handler
        let channel = self.channel
        do {
            try await channel.eventLoop.submit {
                // Bytes that came in the clear must not be taken as replies (RFC 3207 §4.2).
                h.value.discardBuffered()
                let ssl = try NIOSSLClientHandler(context: sslContext, serverHostname: name)
                try channel.pipeline.syncOperations.addHandler(ssl, position: .first)
            }.get()
        } catch {
            return session.fail(.protocolError("\(error)"))
        }
        return session.tlsStarted()
    }

    private func recordTLSVersion() async {
        switch try? await channel.nioSSL_tlsVersion().get() {
        case .tlsv13?: context.tls = "TLSv1.3"
        case .tlsv12?: context.tls = "TLSv1.2"
        case let v?: context.tls = "\(v)"
        case nil: context.tls = "TLS"
        }
    }

    /// The reply timeout of a step (RFC 5321 §4.5.3.2).
    private func timeout(_ step: ClientStep) -> Int64 {
        switch step {
        case .greeting: return config.greetingTimeout
        case .ehlo, .helo, .startTLS: return config.ehloTimeout
        case .mail, .rset: return config.mailTimeout
        case .rcpt: return config.rcptTimeout
        case .data: return config.dataInitTimeout
        case .endOfData: return config.dataEndTimeout
        case .quit: return config.quitTimeout
        }
    }

    /// Writes the lines in one go, gathers a reply per step and gives them
    /// to the session.
    private func exchange(_ lines: [String], _ steps: [ClientStep]) async -> ClientAction {
        var bytes = channel.allocator.buffer(capacity: lines.reduce(0) { $0 + $1.utf8.count + 2 })
        SMTPClientConnection.append(lines, to: &bytes)
        return await perform(bytes, steps)
    }

    private static func append(_ lines: [String], to buffer: inout ByteBuffer) {
        for l in lines { buffer.writeString(l); buffer.writeStaticString("\r\n") }
    }

    /// Writes `payload`, gathers the replies and feeds them to the session
    /// in order; a fault (or a reply out of step) ends the exchange.
    private func perform(_ payload: ByteBuffer, _ steps: [ClientStep], checked: Bool = true) async -> ClientAction {
        let (replies, fault) = await sendAndGather(payload, steps: steps, checked: checked)
        for reply in replies {
            if let action = session.receive(reply) { return action }
        }
        if case .outOfStep(let step, let reply)? = fault {
            logger?.warning("replies out of step; connection closed", metadata: ["mx": "\(context.mxHost ?? "?")", "step": "\(step)",
                                                                               "reply": "\(reply.keepingText(200))"])
            if let action = session.receive(reply) { return action }
        }
        return session.fail(fault ?? .closed)
    }

    /// Writes `payload` and reads one reply per step, in order.
    ///
    /// One hop to the loop and one resume back per exchange: the waits are
    /// registered, the bytes written and the replies gathered all on the
    /// loop. (Awaiting each reply's future from the task instead cost a hop
    /// to the loop per future, even a completed one, to attach the callback,
    /// and a resume of the task for each.) Each reply is checked against its
    /// step as it comes (`checked`); the first that does not fit ends the
    /// exchange (`outOfStep`) and the connection. The replies that came
    /// before a failure are kept: the first reply of a group may settle a
    /// message even when a later one never comes.
    private func sendAndGather(_ payload: ByteBuffer, steps: [ClientStep], checked: Bool) async -> ([SMTPReply], ClientFault?) {
        let h = handler
        let loop = channel.eventLoop
        let channel = self.channel
        let timeouts = steps.map(timeout)
        let (replies, fault): ([SMTPReply], ClientFault?) = await withCheckedContinuation { cont in
            let start: @Sendable () -> Void = {
                let gathered = Gathered(expected: timeouts.count)
                // Register the waits before writing, so no reply can come first.
                for t in timeouts {
                    h.value.expect(timeout: .seconds(t), loop: loop) { result in
                        guard !gathered.finished else { return }
                        switch result {
                        case .success(let reply):
                            let step = steps[gathered.replies.count]
                            if checked, !step.accepts(reply) {
                                // The session is out of step: no later reply can be trusted.
                                gathered.finished = true
                                cont.resume(returning: (gathered.replies, .outOfStep(step, reply)))
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
                if payload.readableBytes > 0 { channel.writeAndFlush(payload, promise: nil) }
            }
            // A worker runs on its connection's loop (EventLoopExecutor): it
            // starts the exchange in place instead of queueing a task for it.
            if loop.inEventLoop { start() } else { loop.execute(start) }
        }
        if case .outOfStep? = fault { aborted = true; channel.close(promise: nil) }
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

    func send(_ message: OutboundMessage, next: OutboundMessage?) async -> [Int64: RecipientOutcome] {
        let hops = message.body.withUnsafeBytes { HeaderBlock.count("Received", in: $0) }
        var action = session.send(ClientMessage(id: message.messageID, envelope: message.envelope, hops: hops),
                                  next: next.map { ClientMessage(id: $0.messageID, envelope: $0.envelope) })
        while true {
            switch action {
            case .exchange(let lines, let steps):
                action = await exchange(lines, steps)
            case .content(let then, let steps):
                // The content, and the next message's group after its final dot.
                // Dot-stuffed straight into the outgoing buffer, a piece of
                // at most about 1 MiB at a time, each written before the
                // next is made: a large message is in memory once (its
                // body), not twice, however many connections send one.
                // A piece that was written out leaves its buffer to the
                // next: written again from its start, not a new block whose
                // pages fault in afresh (a 1 MiB piece is 256 page faults;
                // if the channel still holds it, ByteBuffer copies on write).
                var offset = 0
                var failed = false
                var spare: ByteBuffer? = nil
                let group = then.reduce(0) { $0 + $1.utf8.count + 2 }
                while !failed {
                    let (piece, end) = message.body.withUnsafeBytes { raw -> (ByteBuffer, Int) in
                        let end = ClientProtocol.piece(of: raw, from: offset, size: SMTPClientConnection.pieceSize)
                        let part = UnsafeRawBufferPointer(rebasing: raw[offset..<end])
                        // The last piece carries the next message's commands too.
                        let capacity = part.count + part.count / 64 + 8 + (end == raw.count ? group : 0)
                        var out: ByteBuffer
                        if var reused = spare {
                            spare = nil
                            reused.clear(minimumCapacity: capacity)
                            out = reused
                        } else {
                            out = channel.allocator.buffer(capacity: capacity)
                        }
                        ClientProtocol.dataText(part, into: &out, final: end == raw.count)
                        return (out, end)
                    }
                    offset = end
                    if offset == message.body.count {
                        var last = piece
                        SMTPClientConnection.append(then, to: &last)
                        action = await perform(last, steps)
                        break
                    }
                    failed = !(await write(piece))
                    spare = piece
                }
                if failed { action = session.fail(.closed) }
            case .endData:
                action = await perform(ByteBuffer(string: ".\r\n"), [.endOfData], checked: false)
            case .done(let outcomes):
                return outcomes
            case .startTLS, .ready, .failed, .quit, .drop:
                await abort()
                let reply = SMTPReply(451, .connectionDropped, "lost connection with \(context.mxHost ?? "server"): \(action)")
                return Dictionary(message.envelope.recipients.map { ($0.id, RecipientOutcome.deferred(reply)) }, uniquingKeysWith: { a, _ in a })
            }
        }
    }

    /// Content pieces: a line feed ends each, near this size.
    static let pieceSize = 1 << 20

    /// Writes a piece of content and waits until the kernel took it (the
    /// server reads no faster); false when the connection failed, or took
    /// nothing for the data timeout (RFC 5321 §4.5.3.2.6), which closes it.
    private func write(_ piece: ByteBuffer) async -> Bool {
        let channel = self.channel
        let limit = TimeAmount.seconds(timeout(.endOfData))
        let stall = channel.eventLoop.scheduleTask(in: limit) { channel.close(promise: nil) }
        defer { stall.cancel() }
        do {
            try await channel.writeAndFlush(piece)
            return true
        } catch {
            return false
        }
    }

    func close() async {
        if channel.isActive, !aborted, session.close() == .quit {
            _ = await sendAndGather(ByteBuffer(string: "QUIT\r\n"), steps: [.quit], checked: false)
        }
        await abort()
    }

    private func abort() async {
        aborted = true
        try? await channel.close()
    }
}
