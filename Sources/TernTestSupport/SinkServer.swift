// A scripted SMTP sink for tests, on an ephemeral loopback port. Replies
// depend on the recipient's local part:
//   temp…     RCPT 451 4.2.1        perm… / unknown…  RCPT 550 5.1.1
//   tempdata… 451 4.3.0 after DATA  rejectdata…       554 5.6.0 after DATA
//   dropdata… closes after the final dot without a reply
//   slowdata… never answers the final dot
//   delaydata… answers the final dot with 250 after half a second
//   a sender dropmail… closes the connection at its MAIL, without a reply
//   tss04… / tss09…   RCPT with Yahoo's 421 4.7.0 [TSS04] / 553 5.7.2 [TSS09]
// anything else is accepted. The greeting and the EHLO extensions are set
// per server. Every accepted message is recorded.

import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NIOSSL

public struct SinkMessage: Sendable, Equatable {
    public var mailCommand: String
    public var rcptCommands: [String]
    public var data: String
    /// Received over TLS (after STARTTLS).
    public var tls: Bool
    /// The client's address (its source address) and the name it gave in EHLO/HELO.
    public var peer: String = ""
    public var helo: String = ""
}

public final class SinkServer: Sendable {
    public struct Config: Sendable {
        public var greeting = "220 sink.test ESMTP sink"
        public var acceptEHLO = true
        public var extensions = ["PIPELINING", "8BITMIME", "DSN", "SIZE 10000000", "SMTPUTF8", "ENHANCEDSTATUSCODES"]
        /// Keep each message (tests) or only count them (benchmarks).
        public var record = true
        /// Offer STARTTLS with this server context.
        public var tls: NIOSSLContext? = nil
        /// Answer STARTTLS with 220 and then hang up (a failed handshake).
        public var breakTLS = false
        /// Behave like a mailbox provider that paces its senders.
        public var provider: ProviderBehaviour? = nil
        /// A slow or tarpitting remote (issue 21's `internet` benchmark):
        /// the greeting waits this long after the connection opens, and the
        /// reply to the final dot this long after the dot. Commands that
        /// arrive meanwhile wait their turn, so replies keep the order of
        /// the commands (RFC 2920), unlike smtp-sink's `-W .:N`.
        public var greetingDelayMillis: Int64 = 0
        public var dotDelayMillis: Int64 = 0
        public init() {}
    }

    /// A provider's pacing (issue 18's end-to-end test): a connection over
    /// `maxConcurrent` is greeted with 421 and closed; after
    /// `acceptBeforeThrottle` messages every MAIL is answered with
    /// `throttleReply` and the connection closed, for `blockMillis`; then
    /// it accepts again.
    public struct ProviderBehaviour: Sendable {
        public var maxConcurrent: Int
        public var acceptBeforeThrottle: Int
        public var blockMillis: Int64
        public var throttleReply = "421-4.7.28 [192.0.2.1] Our system has detected an unusual rate of unsolicited mail\r\n"
            + "421-4.7.28 originating from your IP address. To protect our users from spam, mail\r\n"
            + "421 4.7.28 sent from your IP address has been temporarily rate limited. - gsmtp"

        public init(maxConcurrent: Int, acceptBeforeThrottle: Int, blockMillis: Int64) {
            self.maxConcurrent = maxConcurrent
            self.acceptBeforeThrottle = acceptBeforeThrottle
            self.blockMillis = blockMillis
        }
    }

    /// What the provider behaviour saw.
    public struct ProviderStats: Sendable {
        public var open = 0
        public var peakOpen = 0
        public var refusedConnections = 0
        public var throttled = 0
        public var acceptedSinceRecovery = 0
        public var blockedUntil: Int64 = 0
        /// When each block began and ended (wall-clock milliseconds).
        public var blocks: [(from: Int64, to: Int64)] = []
        /// Every connection (provider behaviour or not), by the client's
        /// address: open now, the most at once, and in all.
        public var openByPeer: [String: Int] = [:]
        public var peakByPeer: [String: Int] = [:]
        public var connectionsByPeer: [String: Int] = [:]
    }

    public var providerStats: ProviderStats { provider.withLockedValue { $0 } }
    let provider: NIOLockedValueBox<ProviderStats>

    public let port: Int
    let channel: Channel
    let state: NIOLockedValueBox<(messages: [SinkMessage], commands: [String], connections: Int)>
    let counter: NIOLockedValueBox<Int>

    /// Messages accepted so far (also when not recording).
    public var count: Int { counter.withLockedValue { $0 } }
    /// Final dots after which more input had already arrived: a client that
    /// started the next message in the same write (RFC 2920 §3.1).
    public var inputAfterDot: Int { afterDot.withLockedValue { $0 } }
    let afterDot: NIOLockedValueBox<Int>

    public var messages: [SinkMessage] { state.withLockedValue { $0.messages } }
    public var commands: [String] { state.withLockedValue { $0.commands } }
    public var connections: Int { state.withLockedValue { $0.connections } }

    private init(port: Int, channel: Channel, state: NIOLockedValueBox<(messages: [SinkMessage], commands: [String], connections: Int)>,
                 counter: NIOLockedValueBox<Int>, afterDot: NIOLockedValueBox<Int>, provider: NIOLockedValueBox<ProviderStats>) {
        self.provider = provider
        self.port = port
        self.channel = channel
        self.state = state
        self.counter = counter
        self.afterDot = afterDot
    }

    public static func start(_ config: Config = Config(), group: EventLoopGroup, host: String = "127.0.0.1",
                             port: Int = 0) async throws -> SinkServer {
        let state = NIOLockedValueBox<(messages: [SinkMessage], commands: [String], connections: Int)>(([], [], 0))
        let counter = NIOLockedValueBox(0)
        let afterDot = NIOLockedValueBox(0)
        let provider = NIOLockedValueBox(ProviderStats())
        let channel = try await ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { ch in
                ch.eventLoop.makeCompletedFuture {
                    try ch.pipeline.syncOperations.addHandler(SinkHandler(config: config, state: state, counter: counter, afterDot: afterDot,
                                                                          provider: provider))
                }
            }
            .bind(host: host, port: port).get()
        return SinkServer(port: channel.localAddress!.port!, channel: channel, state: state, counter: counter, afterDot: afterDot,
                          provider: provider)
    }

    public func stop() async {
        try? await channel.close()
    }
}

final class SinkHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    let config: SinkServer.Config
    let state: NIOLockedValueBox<(messages: [SinkMessage], commands: [String], connections: Int)>
    let counter: NIOLockedValueBox<Int>
    let afterDot: NIOLockedValueBox<Int>
    var buffer = ByteBuffer()
    var inData = false
    var mail: String? = nil
    var rcpts: [String] = []
    var data: [String] = []
    var dead = false
    var holding = false
    var tlsActive = false
    var helo = ""
    var peer = ""
    let provider: NIOLockedValueBox<SinkServer.ProviderStats>
    /// Counted in the provider's open connections.
    var counted = false

    init(config: SinkServer.Config, state: NIOLockedValueBox<(messages: [SinkMessage], commands: [String], connections: Int)>,
         counter: NIOLockedValueBox<Int>, afterDot: NIOLockedValueBox<Int>, provider: NIOLockedValueBox<SinkServer.ProviderStats>) {
        self.provider = provider
        self.config = config
        self.state = state
        self.counter = counter
        self.afterDot = afterDot
    }

    func channelActive(context: ChannelHandlerContext) {
        state.withLockedValue { $0.connections += 1 }
        peer = context.remoteAddress?.ipAddress ?? ""
        provider.withLockedValue { s in
            s.openByPeer[peer, default: 0] += 1
            s.peakByPeer[peer] = max(s.peakByPeer[peer] ?? 0, s.openByPeer[peer]!)
            s.connectionsByPeer[peer, default: 0] += 1
        }
        if let p = config.provider {
            let refused = provider.withLockedValue { s -> Bool in
                if s.open >= p.maxConcurrent { s.refusedConnections += 1; return true }
                s.open += 1
                s.peakOpen = max(s.peakOpen, s.open)
                return false
            }
            if refused {
                reply("421 4.7.0 Too many concurrent SMTP connections from this IP address; please try again later.", context)
                context.close(promise: nil)
                dead = true
                return
            }
            counted = true
        }
        if config.greetingDelayMillis > 0 {
            holding = true
            later(config.greetingDelayMillis, context) { handler, ctx in handler.greet(ctx) }
            return
        }
        greet(context)
    }

    func greet(_ context: ChannelHandlerContext) {
        reply(config.greeting, context)
        if !config.greeting.hasPrefix("220") { context.close(promise: nil); dead = true }
    }

    /// Runs `then` after `millis`, holding the input back until then (the
    /// replies to commands that arrive meanwhile follow this one).
    func later(_ millis: Int64, _ context: ChannelHandlerContext, _ then: @escaping (SinkHandler, ChannelHandlerContext) -> Void) {
        let bound = NIOLoopBound((self, context, then), eventLoop: context.eventLoop)
        holding = true
        context.eventLoop.scheduleTask(in: .milliseconds(millis)) {
            let (handler, ctx, then) = bound.value
            guard !handler.dead else { return }
            then(handler, ctx)
            handler.holding = false
            handler.drain(ctx)
        }
    }

    func reply(_ text: String, _ context: ChannelHandlerContext) {
        context.writeAndFlush(NIOAny(ByteBuffer(string: text + "\r\n")), promise: nil)
    }

    func local(_ rcpt: String) -> String {
        guard let open = rcpt.firstIndex(of: "<") else { return "" }
        return String(rcpt[rcpt.index(after: open)...].prefix { $0 != "@" && $0 != ">" }).lowercased()
    }

    func channelRead(context: ChannelHandlerContext, data incoming: NIOAny) {
        var bytes = unwrapInboundIn(incoming)
        buffer.writeBuffer(&bytes)
        drain(context)
    }

    /// Handles the complete lines received, unless a reply is being held
    /// back (replies go out in the order of the commands, RFC 2920).
    func drain(_ context: ChannelHandlerContext) {
        while !dead, !holding, let lf = buffer.readableBytesView.firstIndex(of: 10) {
            var line = buffer.readString(length: lf - buffer.readerIndex) ?? ""
            buffer.moveReaderIndex(forwardBy: 1)
            if line.hasSuffix("\r") { line.removeLast() }
            if inData { dataLine(line, context) } else { command(line, context) }
        }
    }

    func command(_ line: String, _ context: ChannelHandlerContext) {
        if config.record { state.withLockedValue { $0.commands.append(line) } }
        let verb = line.prefix(4).uppercased()
        switch verb {
        case "EHLO":
            helo = String(line.dropFirst(5))
            if config.acceptEHLO {
                let lines = ["sink.test"] + config.extensions + (config.tls != nil && !tlsActive ? ["STARTTLS"] : [])
                reply(lines.enumerated().map { i, l in "250\(i == lines.count - 1 ? " " : "-")\(l)" }.joined(separator: "\r\n"), context)
            } else {
                reply("502 5.5.1 EHLO not supported", context)
            }
        case "HELO":
            helo = String(line.dropFirst(5))
            reply("250 sink.test", context)
        case "MAIL":
            if local(line).hasPrefix("dropmail") { context.close(promise: nil); dead = true; return }
            if let p = config.provider {
                let now = Int64(NIODeadline.now().uptimeNanoseconds / 1_000_000)
                let throttle = provider.withLockedValue { s -> Bool in
                    if now < s.blockedUntil { s.throttled += 1; return true }
                    guard s.acceptedSinceRecovery >= p.acceptBeforeThrottle else { return false }
                    s.acceptedSinceRecovery = 0
                    s.blockedUntil = now + p.blockMillis
                    s.blocks.append((now, now + p.blockMillis))
                    s.throttled += 1
                    return true
                }
                if throttle { reply(p.throttleReply, context); context.close(promise: nil); dead = true; return }
            }
            mail = line; rcpts = []; reply("250 2.1.0 Ok", context)
        case "RCPT":
            let l = local(line)
            if l.hasPrefix("temp") && !l.hasPrefix("tempdata") { reply("451 4.2.1 Mailbox busy, try later", context) }
            else if l.hasPrefix("perm") || l.hasPrefix("unknown") { reply("550 5.1.1 No such user here", context) }
            // Yahoo's texts (postmaster.yahooinc.com/error-codes): a volume deferral and a reputation block.
            else if l.hasPrefix("tss04") {
                reply("421 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected volume or user complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes", context)
            } else if l.hasPrefix("tss09") {
                reply("553 5.7.2 [TSS09] All messages from 192.0.2.1 will be permanently deferred; Retrying will NOT succeed. See https://postmaster.yahooinc.com/error-codes", context)
            }
            else { rcpts.append(line); reply("250 2.1.5 Ok", context) }
        case "DATA":
            if mail == nil || rcpts.isEmpty { reply("503 5.5.1 No valid recipients", context) }
            else { inData = true; data = []; reply("354 End data with <CR><LF>.<CR><LF>", context) }
        case "STAR" where line.uppercased() == "STARTTLS" && config.tls != nil && !tlsActive:
            reply("220 2.0.0 Ready to start TLS", context)
            if config.breakTLS { context.close(promise: nil); dead = true; return }
            buffer.clear() // RFC 3207 §4.2: nothing sent in the clear carries over
            tlsActive = true
            mail = nil
            rcpts = []
            try? context.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: config.tls!), position: .first)
        case "RSET": mail = nil; rcpts = []; reply("250 2.0.0 Ok", context)
        case "NOOP": reply("250 2.0.0 Ok", context)
        case "QUIT": reply("221 2.0.0 Bye", context); context.close(promise: nil); dead = true
        default: reply("500 5.5.1 Unknown command", context)
        }
    }

    func dataLine(_ line: String, _ context: ChannelHandlerContext) {
        guard line == "." else {
            if config.record { data.append(line.hasPrefix(".") ? String(line.dropFirst()) : line) }
            return
        }
        inData = false
        if buffer.readableBytes > 0 { afterDot.withLockedValue { $0 += 1 } }
        let locals = rcpts.map(local)
        defer { mail = nil; rcpts = [] }
        if locals.contains(where: { $0.hasPrefix("dropdata") }) { context.close(promise: nil); dead = true; return }
        if locals.contains(where: { $0.hasPrefix("slowdata") }) { return }
        if locals.contains(where: { $0.hasPrefix("delaydata") }) {
            later(500, context) { handler, ctx in
                handler.counter.withLockedValue { $0 += 1 }
                handler.reply("250 2.0.0 Ok: late", ctx)
            }
            return
        }
        if locals.contains(where: { $0.hasPrefix("tempdata") }) { reply("451 4.3.0 Try again later", context); return }
        if locals.contains(where: { $0.hasPrefix("rejectdata") }) { reply("554 5.6.0 Content rejected", context); return }
        let message = config.record
            ? SinkMessage(mailCommand: mail ?? "", rcptCommands: rcpts, data: data.joined(separator: "\r\n") + "\r\n", tls: tlsActive,
                          peer: peer, helo: helo)
            : nil
        if config.dotDelayMillis > 0 {
            later(config.dotDelayMillis, context) { handler, ctx in handler.accept(message, ctx) }
        } else {
            accept(message, context)
        }
    }

    /// Counts (and records) a message and answers its final dot.
    func accept(_ message: SinkMessage?, _ context: ChannelHandlerContext) {
        let n = counter.withLockedValue { c -> Int in c += 1; return c }
        if config.provider != nil { provider.withLockedValue { $0.acceptedSinceRecovery += 1 } }
        if let message { state.withLockedValue { $0.messages.append(message) } }
        reply("250 2.0.0 Ok: queued as SINK\(n)", context)
    }

    func channelInactive(context: ChannelHandlerContext) {
        provider.withLockedValue { $0.openByPeer[peer, default: 1] -= 1 }
        dead = true
        if counted { provider.withLockedValue { $0.open -= 1 } }
        counted = false
        context.fireChannelInactive()
    }
}
